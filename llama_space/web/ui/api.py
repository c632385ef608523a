"""Named Gradio endpoints for scripts (`gradio_client`): /chat and /generate, as in the API contract."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import gradio as gr

from llama_space.inference.params import GenerationParams
from llama_space.inference.prompting import normalize_messages
from llama_space.web.errors import user_facing
from llama_space.web.ui.chat_tab import coalesce

if TYPE_CHECKING:
    from llama_space.inference.backend import ChatBackend


def register_chat_api(backend: ChatBackend) -> None:
    """Expose /chat (streaming) and /generate inside the current Blocks context."""

    def chat(message: str, history: list[dict], system_prompt: str = "", adapter: str = "",
             max_new_tokens: int = 512, temperature: float = 0.7, top_p: float = 0.9) -> Iterator[str]:
        """Stream a reply to `message` after `history` ([{role, content}]); each update is the whole reply so far."""
        # Gradio can cancel a generator only after its first update: without this one, a request cancelled
        # while it waits for the model would later generate for nobody.
        yield ""
        messages = normalize_messages(history, message, system_prompt)
        stream = backend.stream(messages, GenerationParams(max_new_tokens, temperature, top_p), adapter)
        try:
            yield from coalesce(stream)
        finally:
            stream.close()

    def generate(prompt: str, system_prompt: str = "", adapter: str = "", max_new_tokens: int = 512,
                 temperature: float = 0.7, top_p: float = 0.9) -> str:
        """The complete reply to a single `prompt`."""
        messages = normalize_messages([], prompt, system_prompt)
        return backend.generate(messages, GenerationParams(max_new_tokens, temperature, top_p), adapter)

    gr.api(user_facing(chat, "streaming a chat reply"), api_name="chat")
    gr.api(user_facing(generate, "generating a reply"), api_name="generate")
