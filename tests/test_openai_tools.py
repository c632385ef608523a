"""Tool calling on /v1/chat/completions: Llama 3.1's tool-call strings parsed, tools and tool history rendered
through the chat template, and a served model whose greedy reply is a tool call, through the openai SDK and
LangChain's bind_tools (streamed and not, per adapter)."""

from __future__ import annotations

import json
from pathlib import Path

import openai
import pytest

from llama_space.errors import UserError
from llama_space.inference.prompting import build_prompt
from llama_space.inference.tools import ToolReplyFilter, ToolUse, parse_tool_calls, supports_tools, validate_tools
from llama_space.settings import Settings

from adapterutil import random_adapter
from apputil import running_app
from llama31 import BOS, EOT, header
from toolmodel import ASK, CALL, PYTHON_TAG, WEATHER, save_tool_model, scripted_chain

TIME = {"type": "function", "function": {"name": "get_time", "description": "The time in a city.",
                                         "parameters": {"type": "object", "properties": {}}}}
TEMPLATE_CALL = '{"name": "get_weather", "parameters": {"city": "Paris"}}'  # as the template writes it back


@pytest.mark.parametrize("text, expected", [
    ('<|python_tag|>{"name": "get_weather", "parameters": {"city": "San Francisco, CA", "unit": "celsius"}}',
     [("get_weather", {"city": "San Francisco, CA", "unit": "celsius"})]),
    ('{"name": "get_weather", "parameters": {"city": "Paris"}}', [("get_weather", {"city": "Paris"})]),
    ('\n{"name": "get_time", "parameters": {}}; {"name": "get_weather", "parameters": {"city": "Rome"}}',
     [("get_time", {}), ("get_weather", {"city": "Rome"})]),
    ('[{"name": "get_time", "arguments": {}}]', [("get_time", {})]),
    ('<tool_call>\n{"name": "get_time", "arguments": "{}"}\n</tool_call>', [("get_time", {})]),
    ('The weather is {"name": "get_time"}', None),  # text around JSON: an answer, not a call
    ('{"name": "unknown_tool", "parameters": {}}', None),
    ('{"name": "get_weather", "parameters": {"city": "Par', None),  # cut off by max_tokens
    ('{"city": "Paris"}', None),
    ('', None),
])
def test_llama31_tool_call_strings_parse(text, expected):
    calls = parse_tool_calls(text, ["get_weather", "get_time"])
    got = None if calls is None else [(c.name, json.loads(c.arguments)) for c in calls]
    assert got == expected
    if calls:
        assert len({c.id for c in calls}) == len(calls) and all(c.id.startswith("call_") for c in calls)


def test_reply_filter_streams_text_and_holds_calls():
    use = ToolUse(validate_tools([WEATHER, TIME]))
    text = ToolReplyFilter(use)
    assert [text.feed(d) for d in ["", " ", "The", " sky"]] == ["", "", " The", " sky"]
    assert text.finish() == ("", [])
    call = ToolReplyFilter(use)
    assert [call.feed(d) for d in ["<|py", "thon_tag|>", '{"name": "get_time",', ' "parameters": {}}']] == [""] * 4
    rest, calls = call.finish()
    assert rest == "" and [(c.name, c.arguments) for c in calls] == [("get_time", "{}")]
    not_call = ToolReplyFilter(use)
    assert not_call.feed('{"answer": 42}') == ""
    assert not_call.finish() == ('{"answer": 42}', [])  # JSON that calls nothing is the reply's content


def test_tool_choice_prefills_and_checks_the_call():
    tools = validate_tools([WEATHER, TIME])
    named = ToolUse(tools, "get_time")
    assert named.rendered_tools() == [tools[1]] and named.prefill() == '{"name": "get_time", "parameters":'
    assert named.calls(named.prefill() + "{}}")[0].name == "get_time"
    with pytest.raises(Exception, match="not a valid call to function 'get_time'"):
        named.calls(named.prefill() + "sunny")
    with pytest.raises(UserError, match="not among the tools"):
        ToolUse(tools, "get_stock")
    with pytest.raises(UserError, match=r"tools\[0\]\.function\.name"):
        validate_tools([{"type": "function", "function": {"name": "no spaces allowed"}}])


@pytest.fixture(scope="module")
def tool_model_dir(llama31_tokenizer_dir, tmp_path_factory) -> Path:
    return save_tool_model(llama31_tokenizer_dir, tmp_path_factory.mktemp("tool-model"))


def test_tools_and_tool_history_render_through_the_template(tool_model_dir, embedded_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tool_model_dir)
    assert supports_tools(tokenizer)
    history = [*ASK, {"role": "assistant", "content": "", "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "content": "18 C and sunny", "tool_call_id": "call_1"}]
    use = ToolUse(validate_tools([WEATHER]))
    text = tokenizer.decode(build_prompt(tokenizer, history, 2048, 16, use).input_ids)
    assert text.startswith(BOS + header("system") + "Environment: ipython\n")
    assert '"name": "get_weather"' in text and "The weather in a city now." in text  # the tool's JSON
    assert (header("assistant") + TEMPLATE_CALL + EOT + header("ipython") + "18 C and sunny" + EOT
            + header("assistant")) in text
    named = tokenizer.decode(build_prompt(tokenizer, ASK, 2048, 16, ToolUse([WEATHER], "get_weather")).input_ids)
    assert named.endswith(header("assistant") + '{"name": "get_weather", "parameters":')
    plain = AutoTokenizer.from_pretrained(embedded_dir)  # SmolLM2's ChatML template ignores tools
    assert not supports_tools(plain)
    with pytest.raises(UserError, match="chat template has no tool support"):
        build_prompt(plain, ASK, 2048, 16, use)


# ---- served: the openai SDK and LangChain ------------------------------------------------------------------
@pytest.fixture(scope="module")
def url(tool_model_dir, tmp_path_factory):
    adapters_dir = tmp_path_factory.mktemp("adapters")
    # On q/v only: the scripted model's attention output is zeroed, so the adapter loads and serves the same call.
    random_adapter(tool_model_dir, adapters_dir / "tooly", seed=2)
    settings = Settings(model=str(tool_model_dir), adapters_dir=adapters_dir, dtype="float32")
    with running_app(settings) as base_url:
        yield base_url


@pytest.fixture(scope="module")
def client(url):
    return openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=60)


def _arguments(call) -> dict:
    return json.loads(call.function.arguments)


@pytest.mark.parametrize("model", ["base", "tooly"])
def test_a_tool_call_reply_is_parsed(client, model):
    reply = client.chat.completions.create(model=model, messages=ASK, tools=[WEATHER, TIME], temperature=0,
                                           max_tokens=40)
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather" and _arguments(call) == {"city": "Paris"}
    assert call.id.startswith("call_")


def test_streamed_tool_call_deltas_are_openai_shaped(client):
    chunks = list(client.chat.completions.create(model="base", messages=ASK, tools=[WEATHER], temperature=0,
                                                 max_tokens=40, stream=True))
    deltas = [c.choices[0].delta for c in chunks if c.choices and c.choices[0].delta.tool_calls]
    first, second = [d.tool_calls[0] for d in deltas]
    assert first.index == 0 and first.id.startswith("call_") and first.function.name == "get_weather"
    assert first.function.arguments == "" and second.id is None and json.loads(second.function.arguments) == {
        "city": "Paris"}
    assert not any(c.choices[0].delta.content for c in chunks if c.choices)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"


def test_tool_results_in_the_conversation_are_rendered(client, tool_model_dir):
    from transformers import AutoTokenizer

    calls = [{"id": "call_7", "type": "function",
              "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]
    history = [*ASK, {"role": "assistant", "content": None, "tool_calls": calls},
               {"role": "tool", "tool_call_id": "call_7", "content": "18 C"}]
    reply = client.chat.completions.create(model="base", messages=history, tools=[WEATHER], temperature=0,
                                           max_tokens=40)
    tokenizer = AutoTokenizer.from_pretrained(tool_model_dir)
    rendered = [*history[:1], {**history[1], "content": "", "tool_calls": [
        {**calls[0], "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]}, history[2]]
    expected = tokenizer.apply_chat_template(rendered, tools=[WEATHER], add_generation_prompt=True, tokenize=True,
                                             return_dict=True)["input_ids"]
    assert reply.usage.prompt_tokens == len(expected)


def test_tool_choice_none_required_and_named(client):
    none = client.chat.completions.create(model="base", messages=ASK, tools=[WEATHER], tool_choice="none",
                                          temperature=0, max_tokens=40)
    # Not parsed: the scripted text comes back as content (<|python_tag|> is a special token, not text).
    assert none.choices[0].message.content == CALL and none.choices[0].finish_reason == "stop"
    required = client.chat.completions.create(model="base", messages=ASK, tools=[WEATHER, TIME],
                                              tool_choice="required", temperature=0, max_tokens=40)
    assert required.choices[0].message.tool_calls[0].function.name == "get_weather"
    named = client.chat.completions.create(
        model="base", messages=ASK, tools=[WEATHER, TIME], temperature=0, max_tokens=40,
        tool_choice={"type": "function", "function": {"name": "get_time"}})
    (call,) = named.choices[0].message.tool_calls  # the prefill named get_time; the model wrote the arguments
    assert call.function.name == "get_time" and _arguments(call) == {"city": "Paris"}


def test_a_text_reply_with_tools_streams_as_content(client, tool_model_dir):
    from transformers import AutoTokenizer

    tag = AutoTokenizer.from_pretrained(tool_model_dir).convert_tokens_to_ids(PYTHON_TAG)
    kwargs = {"model": "base", "messages": ASK, "tools": [WEATHER], "temperature": 0, "max_tokens": 40,
              "logit_bias": {str(tag): -100}}
    reply = client.chat.completions.create(**kwargs)
    assert reply.choices[0].message.content == "Hello world" and reply.choices[0].message.tool_calls is None
    chunks = list(client.chat.completions.create(stream=True, **kwargs))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello world"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"


def test_a_required_call_the_model_does_not_make_is_a_clear_error(client, tool_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tool_model_dir)
    chain = scripted_chain(tokenizer)[0]
    prefill_end = tokenizer(ToolUse([WEATHER], "required").prefill(), add_special_tokens=False)["input_ids"][-1]
    after_prefill = chain[chain.index(prefill_end) + 1]  # what the model writes right after '{"name": "'
    with pytest.raises(openai.InternalServerError, match="not a valid call to a tool") as caught:
        client.chat.completions.create(model="base", messages=ASK, tools=[WEATHER], tool_choice="required",
                                       temperature=0, max_tokens=8, logit_bias={str(after_prefill): -100})
    assert caught.value.body["code"] == "tool_call_failed"


def test_bad_tool_requests_are_400s(client):
    cases = [({"tools": [{"type": "retrieval"}]}, "tools"),
             ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
             ({"tool_choice": "required"}, "tool_choice"),
             ({"functions": [WEATHER["function"]]}, "functions")]
    for extra, param in cases:
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(model="base", messages=ASK, max_tokens=4, **extra)
        assert caught.value.body["param"] == param, extra


def test_langchain_bind_tools_invoke_stream_and_answer(url):
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    @tool
    def get_weather(city: str) -> str:
        """The weather in a city now."""
        return "18 C"

    llm = ChatOpenAI(base_url=url + "/v1", api_key="none", model="tooly", temperature=0, max_tokens=40,
                     max_retries=0).bind_tools([get_weather])
    message = llm.invoke([HumanMessage("What is the weather in Paris?")])
    (call,) = message.tool_calls
    assert call["name"] == "get_weather" and call["args"] == {"city": "Paris"}
    streamed = None
    for chunk in llm.stream("What is the weather in Paris?"):
        streamed = chunk if streamed is None else streamed + chunk
    assert [(c["name"], c["args"]) for c in streamed.tool_calls] == [("get_weather", {"city": "Paris"})]
    answer = llm.invoke([HumanMessage("What is the weather in Paris?"), message,
                         ToolMessage(get_weather.invoke(call["args"]), tool_call_id=call["id"])])
    assert answer.tool_calls[0]["name"] == "get_weather"  # the scripted model calls again; the history was accepted
