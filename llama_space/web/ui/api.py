"""Named Gradio endpoints for scripts (`gradio_client`) and MCP clients: /chat and /generate, as in the API
contract. Their docstrings' Args sections are what MCP clients read as the tools' parameter descriptions."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import gradio as gr

from llama_space.inference.generation_params import GenerationParams
from llama_space.inference.prompting import normalize_messages
from llama_space.web.error_boundary import user_facing
from llama_space.web.ui.chat_tab import coalesce

if TYPE_CHECKING:
    from llama_space.inference.backend import ChatBackend

DEFAULTS = GenerationParams()


def _params(max_new_tokens, temperature, top_p, top_k, repetition_penalty) -> GenerationParams:
    # GenerationParams checks and converts what JSON clients send (40.0 for a top_k, 1 for a temperature).
    return GenerationParams(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
                            repetition_penalty=repetition_penalty)


def register_chat_api(backend: ChatBackend) -> None:
    """Expose /chat (streaming) and /generate inside the current Blocks context."""

    def chat(message: str, history: list[dict] = [], system_prompt: str = "", adapter: str = "",  # noqa: B006
             max_new_tokens: int = DEFAULTS.max_new_tokens, temperature: float = DEFAULTS.temperature,
             top_p: float = DEFAULTS.top_p, top_k: int = DEFAULTS.top_k,
             repetition_penalty: float = DEFAULTS.repetition_penalty) -> Iterator[str]:
        """Stream the model's reply to `message` after an earlier conversation; each update is the whole reply
        so far.

        Args:
            message: the user's new message
            history: the conversation before it, a list of {"role": "user" or "assistant", "content": text}
            system_prompt: instructions for the model (empty for none)
            adapter: a trained adapter's name (see list_adapters); empty or "base" for the base model
            max_new_tokens: the longest reply, in tokens
            temperature: 0 for greedy (deterministic) decoding; higher is more random (up to 5)
            top_p: nucleus sampling: sample from the most likely tokens holding this much probability (0-1]
            top_k: sample from the k most likely tokens only (0 = no limit)
            repetition_penalty: above 1 discourages repeating tokens (0.5-2)
        """
        # Gradio can cancel a generator only after its first update: without this one, a request cancelled
        # while it waits for the model would later generate for nobody.
        yield ""
        messages = normalize_messages(history, message, system_prompt)
        params = _params(max_new_tokens, temperature, top_p, top_k, repetition_penalty)
        stream = backend.stream(messages, params, adapter)
        try:
            yield from coalesce(stream)
        finally:
            stream.close()

    def generate(prompt: str, system_prompt: str = "", adapter: str = "",
                 max_new_tokens: int = DEFAULTS.max_new_tokens, temperature: float = DEFAULTS.temperature,
                 top_p: float = DEFAULTS.top_p, top_k: int = DEFAULTS.top_k,
                 repetition_penalty: float = DEFAULTS.repetition_penalty) -> str:
        """The model's complete reply to a single prompt.

        Args:
            prompt: the user's message
            system_prompt: instructions for the model (empty for none)
            adapter: a trained adapter's name (see list_adapters); empty or "base" for the base model
            max_new_tokens: the longest reply, in tokens
            temperature: 0 for greedy (deterministic) decoding; higher is more random (up to 5)
            top_p: nucleus sampling: sample from the most likely tokens holding this much probability (0-1]
            top_k: sample from the k most likely tokens only (0 = no limit)
            repetition_penalty: above 1 discourages repeating tokens (0.5-2)
        """
        messages = normalize_messages([], prompt, system_prompt)
        params = _params(max_new_tokens, temperature, top_p, top_k, repetition_penalty)
        return backend.generate(messages, params, adapter)

    gr.api(user_facing(chat, "streaming a chat reply"), api_name="chat")
    gr.api(user_facing(generate, "generating a reply"), api_name="generate")
