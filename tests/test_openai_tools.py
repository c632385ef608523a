"""Tool calling on /v1/chat/completions: Llama 3.1's tool-call strings parsed, tools and tool history rendered
through the chat template, and a served model whose greedy reply is a tool call, through the openai SDK and
LangChain's bind_tools (streamed and not, per adapter)."""

from __future__ import annotations

import json
from pathlib import Path

import openai
import pytest

from adapterutil import random_adapter
from apputil import running_app
from llama31 import BOS, EOT, header
from llama_space.errors import UserError
from llama_space.inference.prompting import build_prompt
from llama_space.inference.tools import (ToolReplyFilter, ToolUse, parse_tool_calls, supports_tools,
                                         validate_tools)
from llama_space.settings import Settings

PYTHON_TAG = "<|python_tag|>"
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city now.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
TIME = {"type": "function", "function": {"name": "get_time", "description": "The time in a city.",
                                         "parameters": {"type": "object", "properties": {}}}}
# What the scripted model answers: spaced only where a tool_choice prefill ends (see scripted_chain).
CALL = '{"name": "get_weather","parameters": {"city":"Paris"}}'
TEMPLATE_CALL = '{"name": "get_weather", "parameters": {"city": "Paris"}}'  # as the template writes it back
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]

# Llama 3.1's tool use, written from the format's description: "Environment: ipython" in the system turn,
# the tools as JSON in the first user turn with the instruction to answer {"name", "parameters"}, an
# assistant tool call written back in that form, and tool results in an ipython turn.
TOOL_TEMPLATE = (
    "{{- bos_token }}"
    "{%- if messages and messages[0].role == 'system' %}"
    "{%- set system_message = messages[0].content | trim %}{%- set turns = messages[1:] %}"
    "{%- else %}{%- set system_message = '' %}{%- set turns = messages %}{%- endif %}"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' }}"
    "{%- if tools is not none %}{{- 'Environment: ipython\\n' }}{%- endif %}"
    "{{- 'Cutting Knowledge Date: December 2023\\nToday Date: 26 Jul 2024\\n\\n' + system_message + '<|eot_id|>' }}"
    "{%- if tools is not none %}"
    "{%- if not turns %}{{- raise_exception('Tools need a first user message') }}{%- endif %}"
    "{{- '<|start_header_id|>user<|end_header_id|>\\n\\n' }}"
    "{{- 'Given the following functions, please respond with a JSON for a function call with its proper '"
    " + 'arguments that best answers the given prompt.\\n\\n' }}"
    "{{- 'Respond in the format {\"name\": function name, \"parameters\": dictionary of argument name and its '"
    " + 'value}. Do not use variables.\\n\\n' }}"
    "{%- for t in tools %}{{- t | tojson(indent=4) + '\\n\\n' }}{%- endfor %}"
    "{{- turns[0].content | trim + '<|eot_id|>' }}{%- set turns = turns[1:] %}"
    "{%- endif %}"
    "{%- for message in turns %}"
    "{%- if message.tool_calls %}"
    "{%- if message.tool_calls | length != 1 %}{{- raise_exception('One tool call at a time') }}{%- endif %}"
    "{%- set call = message.tool_calls[0].function %}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n{\"name\": \"' + call.name + '\", \"parameters\": '"
    " + call.arguments | tojson + '}<|eot_id|>' }}"
    "{%- elif message.role == 'tool' %}"
    "{{- '<|start_header_id|>ipython<|end_header_id|>\\n\\n' + message.content + '<|eot_id|>' }}"
    "{%- else %}"
    "{{- '<|start_header_id|>' + message.role + '<|end_header_id|>\\n\\n' + message.content | trim + '<|eot_id|>' }}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}")


def _pieces(tokenizer) -> dict[str, list[int]]:
    pieces: dict[str, list[int]] = {}
    for token in range(len(tokenizer)):
        pieces.setdefault(tokenizer.decode([token]), []).append(token)
    return pieces


def _spell(segments: list[tuple[str, int | None]], pieces: dict[str, list[int]], used: set[int]) -> list[int] | None:
    """Single tokens, none twice and none in `used` but the given ones, that decode to the segments' texts in
    turn, each segment ending on its given token (None: any); depth first, longest pieces first."""
    if not segments:
        return []
    (text, last), later = segments[0], segments[1:]
    if not text:
        return _spell(later, pieces, used)
    for length in range(len(text), 0, -1):
        final = length == len(text)
        for token in pieces.get(text[:length], []):
            if last is not None and (token == last) != final:
                continue  # the segment's given token, there and only there
            if token in used and token != last:
                continue
            used.add(token)
            rest = _spell([(text[length:], last), *later], pieces, used)
            if rest is not None:
                return [token, *rest]
            if token != last:
                used.discard(token)
    return None


def scripted_chain(tokenizer) -> tuple[list[int], list[int]]:
    """(the tool call chain: <|python_tag|> then CALL in tokens that each occur once, the "Hello world" reply).

    A bigram table cannot say a token twice, so CALL is spelled with rare tokens and spaced sparingly; where a
    tool_choice prefill ends (required: after `{"name": "`, a named function: after `"parameters":`)
    there the chain passes through the very token the prefill's encoding ends with, so the model goes on
    from a prefill as it would have without one.
    """
    required = ToolUse([WEATHER], "required").prefill()
    named = ToolUse([WEATHER], "get_weather").prefill()
    after_parameters = CALL.index('"parameters":') + len('"parameters":')
    assert CALL.startswith(required) and named.endswith(CALL[after_parameters - 2:after_parameters])
    reply = tokenizer("Hello world", add_special_tokens=False)["input_ids"]
    used = {*reply, tokenizer.convert_tokens_to_ids(EOT)}
    pieces, chain = _pieces(tokenizer), [tokenizer.convert_tokens_to_ids(PYTHON_TAG)]
    ends = [tokenizer(prefill, add_special_tokens=False)["input_ids"][-1] for prefill in (required, named)]
    segments = [(CALL[:len(required)], ends[0]), (CALL[len(required):after_parameters], ends[1]),
                (CALL[after_parameters:], None)]
    spelled = _spell(segments, pieces, used | set(ends))
    assert spelled is not None, f"no tokens spell {CALL!r} with each token once"
    chain += spelled
    assert tokenizer.decode(chain, skip_special_tokens=True) == CALL
    return chain, reply


def save_tool_model(tokenizer_dir: Path, out: Path) -> Path:
    """A 2-layer Llama (attention and MLP outputs zeroed: a bigram table) whose greedy reply to any chat is
    <|python_tag|>CALL<|eot_id|>; with <|python_tag|> biased away it says "Hello world" instead."""
    import torch
    from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    tokenizer.add_special_tokens({"extra_special_tokens": [PYTHON_TAG]})
    tokenizer.chat_template = TOOL_TEMPLATE
    prompt_end = tokenizer.apply_chat_template(ASK, add_generation_prompt=True, tokenize=True,
                                               return_dict=True)["input_ids"][-1]
    chain, reply = scripted_chain(tokenizer)
    eot = tokenizer.convert_tokens_to_ids(EOT)
    links = list(zip([prompt_end, *chain], [*chain, eot])) + list(zip(reply, [*reply[1:], eot]))
    sources = list(dict.fromkeys(source for source, _ in links))
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=-(-len(sources) // 16) * 16, intermediate_size=16,
        num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        embed, head = model.model.embed_tokens.weight, model.lm_head.weight
        head.zero_()
        for slot, token in enumerate(sources):
            embed[token] = torch.nn.functional.one_hot(torch.tensor(slot), config.hidden_size).float()
        for source, target in links:
            head[target, sources.index(source)] = 10.0
        head[reply[0], sources.index(prompt_end)] = 5.0  # the runner-up after the prompt
    model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id,
                                               eos_token_id=[tokenizer.eos_token_id, eot])
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


# ---- parsing and rendering, no model -------------------------------------------------------------------
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
