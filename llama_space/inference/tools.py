"""Tool calling in the model's own format: OpenAI tool definitions and tool-call history rendered through the
chat template's `tools=` support, and Llama 3.1's JSON tool calls parsed back out of a reply.

Llama 3.1 calls a function by answering `{"name": ..., "parameters": {...}}`, possibly after <|python_tag|>;
several calls may follow each other (separated by ";" or whitespace) or come as one JSON list. Hermes-style
`<tool_call>...</tool_call>` wrappers and an "arguments" key are read the same way.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from llama_space.errors import UserError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

PYTHON_TAG = "<|python_tag|>"
OPENERS = (PYTHON_TAG, "<tool_call>")  # text a tool call may start with before its JSON
PROBE = "llama_space_tool_probe"  # a function name no template writes unless it renders the tools it is given
NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")  # OpenAI's rule for function names


@dataclass
class ToolCall:
    """One call the model made: an id for the tool message that answers it, the function and its JSON arguments."""

    name: str
    arguments: str  # a JSON object, as OpenAI sends it
    id: str = field(default_factory=lambda: "call_" + secrets.token_hex(12))

    def openai(self) -> dict:
        """The call as an entry of an assistant message's `tool_calls`."""
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


@dataclass
class ToolUse:
    """The tools a request offers and how the reply must use them (tool_choice)."""

    tools: list[dict]  # OpenAI function tools: {"type": "function", "function": {name, description, parameters}}
    choice: str = "auto"  # "auto", "required" or the name of the one function to call

    def __post_init__(self) -> None:
        if self.choice not in ("auto", "required") and self.choice not in self.names:
            raise UserError(f"tool_choice names function {self.choice!r}, which is not among the tools "
                            f"({', '.join(self.names)})")

    @property
    def names(self) -> list[str]:
        return [tool["function"]["name"] for tool in self.tools]

    def rendered_tools(self) -> list[dict]:
        """The tools the prompt shows: only the named one when tool_choice names a function."""
        if self.choice in ("auto", "required"):
            return self.tools
        return [tool for tool in self.tools if tool["function"]["name"] == self.choice]

    def prefill(self) -> str:
        """The start of the reply written for the model when it must call a tool: it goes on from there.

        Steering rather than constraining: the reply is still checked (`calls`) once it is complete. It ends
        where a BPE token boundary is likely (a space belongs to the token after it).
        """
        if self.choice == "auto":
            return ""
        if self.choice == "required":
            return '{"name": "'
        return '{"name": ' + json.dumps(self.choice) + ', "parameters":'

    def calls(self, text: str) -> list[ToolCall] | None:
        """The calls in a complete reply `text` (prefill included), None when it is not tool calls; a reply
        that must call a tool and does not raises ToolCallFailed."""
        calls = parse_tool_calls(text, [tool["function"]["name"] for tool in self.rendered_tools()])
        if calls is None and self.choice != "auto":
            wanted = "a tool" if self.choice == "required" else f"function {self.choice!r}"
            raise ToolCallFailed(f"The model's reply was not a valid call to {wanted} (tool_choice="
                                 f"{self.choice!r}); retry, or use tool_choice \"auto\".")
        return calls


class ToolCallFailed(Exception):
    """The model did not make the call tool_choice required (not the user's fault: the server's 500)."""


def validate_tools(raw: object) -> list[dict]:
    """OpenAI's `tools` list checked: function tools with a valid, unique name and object parameters."""
    if not isinstance(raw, list) or not raw:
        raise UserError("tools must be a non-empty list of {\"type\": \"function\", \"function\": {...}} objects")
    tools, seen = [], set()
    for i, tool in enumerate(raw):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(function, dict):
            raise UserError(f"tools[{i}] must be {{\"type\": \"function\", \"function\": {{...}}}} "
                            "(only function tools are supported)")
        name = function.get("name")
        if not isinstance(name, str) or not NAME.match(name) or name in seen:
            raise UserError(f"tools[{i}].function.name must be a unique name of up to 64 letters, digits, "
                            "_, . or -")
        parameters = function.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(parameters, dict):
            raise UserError(f"tools[{i}].function.parameters must be a JSON Schema object")
        description = function.get("description", "")
        if not isinstance(description, str):
            raise UserError(f"tools[{i}].function.description must be a string")
        seen.add(name)
        tools.append({"type": "function", "function": {"name": name, "description": description,
                                                       "parameters": parameters}})
    return tools


def tool_choice(raw: object, tools: list[dict] | None) -> str | None:
    """"auto", "required" or a function name from OpenAI's tool_choice; None for "none" (or no tools)."""
    if raw is None:
        return "auto" if tools else None
    if raw in ("none", "auto", "required"):
        if raw != "none" and not tools:
            raise UserError(f"tool_choice {raw!r} needs tools")
        return None if raw == "none" else raw
    function = raw.get("function") if isinstance(raw, dict) else None
    if not isinstance(raw, dict) or raw.get("type") != "function" or not isinstance(function, dict) \
            or not isinstance(function.get("name"), str):
        raise UserError('tool_choice must be "none", "auto", "required" or '
                        '{"type": "function", "function": {"name": ...}}')
    if not tools:
        raise UserError("tool_choice names a function but the request has no tools")
    return function["name"]


def assistant_tool_calls(raw: object, i: int) -> list[dict]:
    """An OpenAI assistant message's `tool_calls` in the form chat templates read (arguments as an object)."""
    if not isinstance(raw, list) or not raw:
        raise UserError(f"messages[{i}].tool_calls must be a non-empty list")
    calls = []
    for j, call in enumerate(raw):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise UserError(f"messages[{i}].tool_calls[{j}] must have a function with a name")
        try:
            arguments = json.loads(function.get("arguments") or "{}")
        except (TypeError, ValueError):
            arguments = None
        if not isinstance(arguments, dict):
            raise UserError(f"messages[{i}].tool_calls[{j}].function.arguments must be a JSON object string")
        calls.append({"id": str(call.get("id") or ""), "type": "function",
                      "function": {"name": function["name"], "arguments": arguments}})
    return calls


def uses_tools(messages: list[dict]) -> bool:
    """Whether a conversation holds tool calls or tool results (they need a template with tool support)."""
    return any(m["role"] == "tool" or m.get("tool_calls") for m in messages)


def require_tool_support(tokenizer: PreTrainedTokenizerBase) -> None:
    """UserError unless the chat template writes the tools it is given into the prompt."""
    if not supports_tools(tokenizer):
        raise UserError("This model's chat template has no tool support (it ignores tools=), so it cannot be "
                        "given tools, tool calls or tool results; use a model whose template supports tools, "
                        "such as Llama 3.1 Instruct.")


def supports_tools(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether the chat template renders tools: a probe function's name must appear in the prompt."""
    probe = [{"type": "function", "function": {"name": PROBE, "description": "probe",
                                               "parameters": {"type": "object", "properties": {}}}}]
    try:
        text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tools=probe, tokenize=False,
                                             add_generation_prompt=True)
    except Exception:  # noqa: BLE001 - a template that fails on tools has no usable tool support
        return False
    return PROBE in text


def parse_tool_calls(text: str, names: list[str]) -> list[ToolCall] | None:
    """The calls in `text` when the whole reply is tool calls to functions in `names`, else None."""
    body = text.strip()
    for opener in OPENERS:
        body = body.removeprefix(opener).strip()
    body = body.replace("</tool_call>", " ").replace("<tool_call>", " ")
    objects = _json_values(body)
    if len(objects) == 1 and isinstance(objects[0], list):
        objects = objects[0]
    calls = []
    for value in objects or [None]:
        call = _call(value, names)
        if call is None:
            return None
        calls.append(call)
    return calls


def _json_values(body: str) -> list:
    """The JSON values `body` consists of (separated by whitespace or ";"); [] when it holds anything else."""
    decoder, values, at = json.JSONDecoder(), [], 0
    while at < len(body):
        try:
            value, at = decoder.raw_decode(body, at)
        except ValueError:
            return []
        values.append(value)
        while at < len(body) and (body[at].isspace() or body[at] == ";"):
            at += 1
    return values


def _call(value: object, names: list[str]) -> ToolCall | None:
    if not isinstance(value, dict) or value.get("name") not in names:
        return None
    arguments = value.get("parameters", value.get("arguments", {}))
    if isinstance(arguments, str):  # some models write the arguments as a JSON string
        try:
            arguments = json.loads(arguments)
        except ValueError:
            return None
    if not isinstance(arguments, dict) or set(value) - {"name", "parameters", "arguments", "type"}:
        return None
    return ToolCall(name=value["name"], arguments=json.dumps(arguments, ensure_ascii=False))


class ToolReplyFilter:
    """Splits a streamed reply into content to pass on at once and a tool call held back until the end.

    A reply whose first non-blank text opens JSON (or <|python_tag|>) is held whole and parsed when it
    ends; any other reply streams as content. The prefill counts as the reply's start.
    """

    def __init__(self, use: ToolUse) -> None:
        self.use = use
        self.held = use.prefill()
        self.holding = bool(self.held)  # a reply that must call a tool is held from the start
        self.decided = self.holding

    def feed(self, delta: str) -> str:
        """The content of `delta` to send now ("" while it may be a tool call)."""
        if self.decided:
            if self.holding:
                self.held += delta
                return ""
            return delta
        self.held += delta
        start = self.held.lstrip()
        if not start or any(o.startswith(start) for o in OPENERS):
            return ""  # too early to tell
        self.decided = True
        self.holding = start[0] in "{[" or start.startswith(OPENERS)
        if self.holding:
            return ""
        text, self.held = self.held, ""
        return text

    def finish(self) -> tuple[str, list[ToolCall]]:
        """(content still to send, the calls) once the reply is over; ToolCallFailed as ToolUse.calls says."""
        text, self.held = self.held, ""
        calls = self.use.calls(text) if self.holding or text.strip() else None
        return ("", calls) if calls else (text, [])
