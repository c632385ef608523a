"""Named Gradio endpoints for scripts (`gradio_client`): /chat and /generate, as in the API contract."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import gradio as gr

from llama_space.errors import UserError
from llama_space.params import GenerationParams
from llama_space.prompting import normalize_messages
from llama_space.ui.chat_tab import coalesce

if TYPE_CHECKING:
    from llama_space.model_manager import ModelManager


def register_chat_api(manager: ModelManager) -> None:
    """Expose /chat (streaming) and /generate inside the current Blocks context."""

    def chat(message: str, history: list[dict], system_prompt: str = "", adapter: str = "",
             max_new_tokens: int = 512, temperature: float = 0.7, top_p: float = 0.9) -> Iterator[str]:
        """Stream a reply to `message` after `history` ([{role, content}]); each update is the whole reply so far."""
        # Gradio can cancel a generator only after its first update: without this one, a request cancelled
        # while it waits for the model would later generate for nobody.
        yield ""
        try:
            messages = normalize_messages(history, message, system_prompt)
            stream = manager.stream(messages, GenerationParams(max_new_tokens, temperature, top_p), adapter)
        except UserError as exc:
            raise gr.Error(str(exc)) from exc
        try:
            yield from coalesce(stream)
        finally:
            stream.close()

    def generate(prompt: str, system_prompt: str = "", adapter: str = "", max_new_tokens: int = 512,
                 temperature: float = 0.7, top_p: float = 0.9) -> str:
        """The complete reply to a single `prompt`."""
        try:
            messages = normalize_messages([], prompt, system_prompt)
            return manager.generate(messages, GenerationParams(max_new_tokens, temperature, top_p), adapter)
        except UserError as exc:
            raise gr.Error(str(exc)) from exc

    gr.api(chat, api_name="chat")
    gr.api(generate, api_name="generate")
