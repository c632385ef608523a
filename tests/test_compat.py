"""Each private internal of a pinned library that llama_space/compat.py uses is still there, in the shape used.

An upgrade of gradio or transformers that renames or reshapes one fails here, by name, before it fails somewhere
far away (a 1,100-wake-ups-a-second idle loop, MCP tools behind --auth, a CORS hole, leaked paths)."""

from __future__ import annotations

import inspect
import time
from types import SimpleNamespace

import pytest

from llama_space import compat


def test_queue_polling_intervals_are_the_queues_own_attributes():
    import gradio as gr
    from gradio.queueing import Queue

    with gr.Blocks() as demo:
        gr.Textbox()
    demo.queue()
    assert isinstance(demo._queue, Queue)
    assert isinstance(demo._queue.sleep_when_free, float)
    assert isinstance(demo._queue.progress_update_sleep_when_free, float)
    source = inspect.getsource(Queue)
    assert "asyncio.sleep(self.sleep_when_free)" in source
    assert "self.progress_update_sleep_when_free" in source
    compat.set_queue_polling(demo, 0.02, 0.3)
    assert (demo._queue.sleep_when_free, demo._queue.progress_update_sleep_when_free) == (0.02, 0.3)


def test_mcp_server_keeps_its_tool_table_and_client_factory():
    from gradio.mcp import GradioMCPServer

    assert callable(GradioMCPServer._get_or_create_client)
    source = inspect.getsource(GradioMCPServer)
    assert "self.tool_to_endpoint = self.get_tool_to_endpoint()" in source
    assert "run_sync(self._get_or_create_client)" in source
    server = SimpleNamespace(tool_to_endpoint={"generate": "/generate", "delete_adapter": "/delete_adapter"})
    compat.offer_mcp_tools(server, ["generate"])
    assert server.tool_to_endpoint == {"generate": "/generate"}
    factory = object
    compat.replace_mcp_client(server, factory)
    assert server._get_or_create_client is factory


def test_oauth_info_is_read_from_the_session():
    request = SimpleNamespace(session={"oauth_info": {"userinfo": {"preferred_username": "owner"},
                                                      "expires_at": time.time() + 60}})
    assert compat.oauth_userinfo(request) == {"preferred_username": "owner"}
    request.session["oauth_info"]["expires_at"] = time.time() - 1
    assert compat.oauth_userinfo(request) is None
    assert compat.oauth_userinfo(SimpleNamespace(session={})) is None


def test_gradios_cors_layer_steps_aside_when_told_the_app_configures_cors():
    from gradio.route_utils import CustomCORSMiddleware

    layer = CustomCORSMiddleware(app=None)
    assert layer.parent_configures_cors() is False
    stack = SimpleNamespace(app=SimpleNamespace(app=layer))  # as Starlette nests its middleware
    assert compat.defer_cors(SimpleNamespace(middleware_stack=stack)) is True
    assert layer.parent_configures_cors() is True
    assert compat.defer_cors(SimpleNamespace(middleware_stack=SimpleNamespace(app=None))) is False


def test_gradios_own_refusals_are_explained_without_internals():
    import gradio.blocks
    import gradio.processing_utils
    import gradio.queueing
    import gradio.utils

    # The texts explain() recognises are still what Gradio writes.
    assert "(needed: {len(dep_inputs)}, got: {len(inputs)})" in inspect.getsource(gradio.blocks)
    assert "it was not uploaded by a user." in inspect.getsource(gradio.processing_utils)
    # Gradio's queue holds error_payload under its own name: both places must be replaced.
    assert "error_payload(" in inspect.getsource(gradio.queueing)
    compat.install_gradio_fixes()
    assert gradio.queueing.error_payload is gradio.utils.error_payload
    leaky = ValueError("didn't receive enough input values (needed: 8, got: 1).\nWanted inputs:\n"
                       "    [<gradio.components.api_component.Api object at 0x7f00>]")
    payload = gradio.utils.error_payload(leaky, True)
    assert payload["error"].startswith("This endpoint takes 8 values but the request sent 1")
    assert "0x7f00" not in payload["error"]
    path = gradio.utils.error_payload(ValueError("Cannot move /srv/secret/x to the gradio cache dir because it "
                                                 "was not uploaded by a user."), True)
    assert "/srv" not in path["error"] and "not uploaded by a user" in path["error"]
    assert gradio.utils.error_payload(ValueError("anything else at /srv/x"), True)["error"] == compat.REQUEST_UNFIT


def test_an_unknown_function_index_is_a_400():
    from fastapi import HTTPException
    from gradio import route_utils

    assert list(inspect.signature(route_utils.get_fn).parameters) == ["blocks", "api_name", "body"]
    compat.install_gradio_fixes()
    with pytest.raises(HTTPException) as refused:
        route_utils.get_fn(SimpleNamespace(fns={}), None, SimpleNamespace(session_hash=None, fn_index=7))
    assert refused.value.status_code == 400 and "no function 7" in refused.value.detail


def test_generate_reads_compile_all_devices():
    import transformers.generation.utils
    from transformers import CompileConfig

    assert "compile_config._compile_all_devices" in inspect.getsource(transformers.generation.utils)
    config = CompileConfig()
    compat.compile_on_every_device(config, True)
    assert config._compile_all_devices is True


def test_the_current_request_and_the_frontends_locale_store_are_where_the_language_code_looks():
    from contextvars import ContextVar
    from pathlib import Path

    import gradio
    from gradio.context import LocalContext

    from llama_space.compat import LOCALE_STORE_JS, current_request

    assert isinstance(LocalContext.request, ContextVar) and current_request() is None
    token = LocalContext.request.set("a request")
    try:
        assert current_request() == "a request"
    finally:
        LocalContext.request.reset(token)
    # The language switch imports the chunk that holds svelte-i18n (runtime-*.js) and sets its locale store.
    assets = Path(gradio.__file__).parent / "templates" / "frontend" / "assets"
    chunks = [p for p in assets.glob("runtime-*.js") if "getLocaleFromNavigator" in p.read_text()
              or "navigator.language" in p.read_text()]
    assert chunks and "runtime-" in LOCALE_STORE_JS
