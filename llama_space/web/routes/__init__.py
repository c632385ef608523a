"""HTTP routes that share the Gradio port: the tutorial's POST / and the OpenAI-compatible /v1 (chat and legacy
completions)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from llama_space.web.routes.common import GenerationRunner
from llama_space.web.routes.completions import completions_router
from llama_space.web.routes.openai_api import openai_router
from llama_space.web.routes.rest import rest_router

if TYPE_CHECKING:
    from starlette.routing import BaseRoute

    from llama_space.inference.backend import ChatBackend
    from llama_space.settings import Settings


def api_routes(backend: ChatBackend, settings: Settings) -> list[BaseRoute]:
    """Every non-Gradio route, for the app's constructor (so they answer from the first request on).

    All of them generate through `backend.stream`, so they share its queue with the Gradio UI and API.
    """
    runner = GenerationRunner(backend)
    return [*rest_router(backend, runner).routes, *openai_router(backend, runner, settings.api_key).routes,
            *completions_router(backend, runner, settings.api_key).routes]
