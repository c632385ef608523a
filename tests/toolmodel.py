"""A served model for tool-calling tests: Llama 3.1's tool-use template and a bigram Llama whose greedy reply to
any chat is a tool call (<|python_tag|> then CALL), or "Hello world" with <|python_tag|> biased away."""

from __future__ import annotations

from pathlib import Path

from llama_space.inference.tools import ToolUse

from llama31 import EOT, save_bigram_model

PYTHON_TAG = "<|python_tag|>"
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city now.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
# What the scripted model answers: spaced only where a tool_choice prefill ends (see scripted_chain).
CALL = '{"name": "get_weather","parameters": {"city":"Paris"}}'
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
    """The Llama 3.1 tokenizer in `tokenizer_dir` with <|python_tag|> and TOOL_TEMPLATE, and a bigram model
    (llama31.save_bigram_model) whose greedy reply to ASK is <|python_tag|>CALL<|eot_id|>, with "Hello world"
    the runner-up after the prompt; saved together to `out`."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    tokenizer.add_special_tokens({"extra_special_tokens": [PYTHON_TAG]})
    tokenizer.chat_template = TOOL_TEMPLATE
    prompt_end = tokenizer.apply_chat_template(ASK, add_generation_prompt=True, tokenize=True,
                                               return_dict=True)["input_ids"][-1]
    chain, reply = scripted_chain(tokenizer)
    eot = tokenizer.convert_tokens_to_ids(EOT)
    links = list(zip([prompt_end, *chain], [*chain, eot])) + list(zip(reply, [*reply[1:], eot]))
    return save_bigram_model(tokenizer, out, links, eot, runner_up=(prompt_end, reply[0]))
