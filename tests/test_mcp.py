"""Gradio's MCP server through the official `mcp` client over streamable HTTP: the chosen tools with their
docstrings, a generate call, and the same login in front of it as in front of every other route."""

from __future__ import annotations

import ast
import asyncio
import base64
import shutil

import httpx
import pytest
from gradio_client import Client
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from llama_space.settings import Settings
from llama_space.web.server import MCP_TOOLS

from apputil import launched_app
from conftest import REPO

USER, PASSWORD = "alice", "mcp-s3cret"
BASIC = {"Authorization": "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()}
GREEDY = {"prompt": "Hello", "max_new_tokens": 6, "temperature": 0}


@pytest.fixture(scope="module")
def app(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("mcp")
    folder = root / "data" / "datasets" / "owner" / "persona"  # stands in for that Hub dataset
    folder.mkdir(parents=True)
    shutil.copy(REPO / "examples" / "persona.jsonl", folder / "train.jsonl")
    settings = Settings(model=str(tiny_model_dir), adapters_dir=root / "adapters", data_dir=root / "data",
                        auth=f"{USER}:{PASSWORD}")
    with launched_app(settings) as launched:
        yield launched


async def mcp_session(url: str, headers: dict, work):
    """Run `work(session)` in an initialized MCP session over streamable HTTP with `headers` on every request."""
    async with (httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(120, read=300)) as http,
                streamable_http_client(f"{url}/gradio_api/mcp/", http_client=http) as (read, write, _),
                ClientSession(read, write) as session):
        await session.initialize()
        return await work(session)


def test_tools_are_the_chosen_endpoints_with_their_docstrings(app):
    async def work(session):
        return (await session.list_tools()).tools

    tools = {tool.name: tool for tool in asyncio.run(mcp_session(app.url, BASIC, work))}
    assert set(tools) == set(MCP_TOOLS)
    generate = tools["generate"]
    assert generate.description.startswith("The model's complete reply to a single prompt")
    assert generate.inputSchema["required"] == ["prompt"]
    assert "greedy" in generate.inputSchema["properties"]["temperature"]["description"]
    start = tools["start_training"].inputSchema
    assert start["required"] == ["file", "adapter_name"]
    assert "LoRA rank" in start["properties"]["lora_r"]["description"]
    assert "Hub dataset" in start["properties"]["dataset_id"]["description"]


def test_generate_through_mcp_equals_the_gradio_endpoint(app):
    async def work(session):
        reply = await session.call_tool("generate", GREEDY)
        chat = await session.call_tool("chat", {"message": GREEDY["prompt"], "max_new_tokens": 6, "temperature": 0})
        report = await session.call_tool("validate_dataset", {"file": None, "dataset_id": "owner/persona"})
        hidden = await session.call_tool("delete_adapter", {"name": "x"})
        bad = await session.call_tool("generate", {**GREEDY, "temperature": 9})
        return reply, chat, report, hidden, bad

    reply, chat, report, hidden, bad = asyncio.run(mcp_session(app.url, BASIC, work))
    expected = Client(app.url, auth=(USER, PASSWORD), verbose=False).predict(**GREEDY, api_name="/generate")
    assert not reply.isError and [part.text for part in reply.content] == [expected]
    assert not chat.isError and chat.content[-1].text == expected
    # Gradio's MCP server sends a dict result as its Python text.
    assert not report.isError and ast.literal_eval(report.content[0].text)["valid_rows"] == 96
    assert hidden.isError and "Unknown tool" in hidden.content[0].text
    assert bad.isError and "temperature must be between" in bad.content[0].text


def test_the_mcp_routes_sit_behind_the_login(app):
    with httpx.Client(base_url=app.url, timeout=60) as http:
        for method, path in [("POST", "/gradio_api/mcp/"), ("POST", "/gradio_api/mcp"), ("GET", "/gradio_api/mcp/"),
                             ("GET", "/gradio_api/mcp/sse"), ("GET", "/gradio_api/mcp/schema"),
                             ("POST", "/gradio_api/mcp/messages/?session_id=x"), ("POST", "/gradio_api/mcp/http/")]:
            for headers in ({}, {"Authorization": "Basic " + base64.b64encode(b"alice:wrong").decode()}):
                app.app.state.login_failures.forget()  # 14 wrong tries here: refused, not yet slowed down
                response = http.request(method, path, headers=headers,
                                        json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
                assert response.status_code == 401, (method, path, headers, response.status_code)
        assert http.get("/gradio_api/mcp/schema", headers=BASIC).status_code == 200
