"""HTTP routes that share the Gradio port: the tutorial's POST / and the OpenAI-compatible /v1."""

from __future__ import annotations

from typing import TYPE_CHECKING

from llama_space.routes.common import GenerationRunner
from llama_space.routes.openai_api import openai_router
from llama_space.routes.rest import rest_router

if TYPE_CHECKING:
    from fastapi import FastAPI

    from llama_space.model_manager import ModelManager
    from llama_space.settings import Settings


def register_routes(app: FastAPI, manager: ModelManager, settings: Settings) -> None:
    """Add every non-Gradio route to `app` (the one place to guard them all, e.g. with a middleware).

    All of them generate through `manager.stream`, so they share its queue with the Gradio UI and API.
    """
    runner = GenerationRunner(manager)
    app.include_router(rest_router(manager, runner))
    app.include_router(openai_router(manager, runner, settings.api_key))
