"""Preference data: a prompt with a chosen and a rejected reply, in three shapes recognised from the columns.

- **pairs**: `prompt`, `chosen`, `rejected` as text (optional `system`); `prompt` may also be a message list.
- **messages**: `chosen` and `rejected` as message lists sharing every turn but the last assistant reply, as in
  UltraFeedback-binarized (a `prompt` column beside them is ignored).
- **transcripts**: `chosen` and `rejected` as whole "Human: ... Assistant: ..." transcripts that share everything
  up to the last assistant turn, as in Anthropic HH.

Every row becomes a `Pair` (prompt messages, chosen text, rejected text); a row with an empty side, identical sides,
prompts that differ between its sides, or a prompt over max_length tokens is reported and skipped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from llama_space.data.formats import CHAT_ROLES, DEFAULT_MAX_BYTES, RowError, open_records, with_system_prompt
from llama_space.errors import UserError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

PREFERENCE_EXPECTED = {
    "pairs": "prompt, chosen, rejected as text (optional: system)",
    "messages": "chosen, rejected = message lists ending in the assistant reply (UltraFeedback-binarized)",
    "transcripts": "chosen, rejected = whole 'Human: ... Assistant: ...' transcripts (Anthropic HH)",
}
_HH_TURN = re.compile(r"\n\n(Human|Assistant): ")


@dataclass
class Pair:
    """One preference row: the conversation so far, and the reply preferred over the other."""

    prompt: list[dict]  # {role, content} messages ending with a user turn
    chosen: str
    rejected: str


def is_preference(columns: list[str]) -> bool:
    """Whether a file's columns are preference data (a chosen and a rejected column)."""
    return {"chosen", "rejected"} <= set(columns)


def detect_preference_format(columns: list[str], first: dict) -> str:
    """pairs, messages or transcripts, from the columns and the first row's types."""
    if isinstance(first.get("chosen"), list):
        return "messages"
    return "pairs" if "prompt" in columns else "transcripts"


def _side(value: object, name: str) -> str:
    if not isinstance(value, str):
        raise RowError(f"'{name}' must be text, got {type(value).__name__}")
    if not value.strip():
        raise RowError(f"'{name}' is empty")
    return value


def _messages(value: object, name: str) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise RowError(f"'{name}' must be a non-empty list of {{role, content}} messages")
    out = []
    for n, turn in enumerate(value, 1):
        if not isinstance(turn, dict) or turn.get("role") not in CHAT_ROLES or not isinstance(turn.get("content"), str):
            raise RowError(f"turn {n} of '{name}' must be {{role: system/user/assistant, content: text}}")
        out.append({"role": CHAT_ROLES[turn["role"]], "content": turn["content"]})
    return out


def _split_last(messages: list[dict], name: str) -> tuple[list[dict], str]:
    if messages[-1]["role"] != "assistant":
        raise RowError(f"'{name}' must end with the assistant reply")
    return messages[:-1], _side(messages[-1]["content"], name)


def _hh_turns(text: str, name: str) -> list[dict]:
    pieces = _HH_TURN.split(text if text.startswith("\n\n") else "\n\n" + text.lstrip())
    if len(pieces) < 3 or pieces[0].strip():
        raise RowError(f"'{name}' must be a transcript of '\\n\\nHuman: ...' and '\\n\\nAssistant: ...' turns")
    roles = {"Human": "user", "Assistant": "assistant"}
    return [{"role": roles[who], "content": said.strip()} for who, said in zip(pieces[1::2], pieces[2::2])]


def to_pair(data_format: str, record: dict) -> Pair:
    """One row as a Pair; RowError when a field is missing, mistyped or empty, or the sides disagree on the prompt."""
    if data_format == "pairs":
        prompt = record.get("prompt")
        messages = (_messages(prompt, "prompt") if isinstance(prompt, list)
                    else [{"role": "user", "content": _side(prompt, "prompt")}])
        system = record.get("system")
        if isinstance(system, str) and system.strip() and messages[0]["role"] != "system":
            messages.insert(0, {"role": "system", "content": system})
        pair = Pair(messages, _side(record.get("chosen"), "chosen"), _side(record.get("rejected"), "rejected"))
    else:
        read = _messages if data_format == "messages" else _hh_turns
        if data_format == "transcripts":
            chosen = read(_side(record.get("chosen"), "chosen"), "chosen")
            rejected = read(_side(record.get("rejected"), "rejected"), "rejected")
        else:
            chosen, rejected = read(record.get("chosen"), "chosen"), read(record.get("rejected"), "rejected")
        prompt, chosen_text = _split_last(chosen, "chosen")
        other, rejected_text = _split_last(rejected, "rejected")
        if prompt != other:
            raise RowError("'chosen' and 'rejected' differ before their last reply: they must share the prompt")
        pair = Pair(prompt, chosen_text, rejected_text)
    if pair.chosen.strip() == pair.rejected.strip():
        raise RowError("'chosen' and 'rejected' are identical: there is nothing to prefer")
    roles = [m["role"] for m in pair.prompt]
    if not roles or roles[-1] != "user" or roles[roles[0] == "system":][:1] != ["user"]:
        raise RowError("the prompt must start with a user turn (after an optional system message) and end with one")
    return pair


@dataclass
class PreferenceScan:
    """A preference file's rows sorted into usable pairs (with their row numbers) and reported problems."""

    data_format: str
    total: int
    pairs: list[tuple[int, Pair]]
    errors: list[dict]
    warnings: list[dict]
    duplicates: int = 0


def scan_preferences(path: str | Path, max_bytes: int = DEFAULT_MAX_BYTES) -> PreferenceScan:
    """Read a preference file row by row: usable pairs, row errors and duplicates."""
    records = open_records(path, max_bytes)
    if not is_preference(records.columns):
        raise UserError(f"Preference data needs 'chosen' and 'rejected' columns; found [{', '.join(records.columns)}]. "
                        "Expected one of: " + "; ".join(f"{k}: {v}" for k, v in PREFERENCE_EXPECTED.items()) + ".")
    rows = iter(records.rows)
    first = next(rows)
    scan = PreferenceScan(detect_preference_format(records.columns, first), 0, [], [], [])
    seen: dict[str, int] = {}
    for number, record in enumerate([first, *rows], 1):
        scan.total = number
        try:
            pair = to_pair(scan.data_format, record)
        except RowError as exc:
            scan.errors.append({"row": number, "message": str(exc)})
            continue
        key = repr((pair.prompt, pair.chosen, pair.rejected))
        if key in seen:
            scan.duplicates += 1
            scan.warnings.append({"row": number, "message": f"exact duplicate of row {seen[key]}; skipped"})
            continue
        seen[key] = number
        scan.pairs.append((number, pair))
    return scan


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def tokenize_pair(tokenizer: PreTrainedTokenizerBase, pair: Pair, max_length: int, system_prompt: str = "") -> dict:
    """{"prompt_ids", "chosen_ids", "rejected_ids"} rendered with the model's chat template: each side is its reply
    and end-of-turn, cut so that prompt + side fits max_length; RowError when the prompt alone does not fit."""
    from llama_space.data.tokenize import check_tokenizer

    check_tokenizer(tokenizer)
    prompt = with_system_prompt(pair.prompt, system_prompt)

    def ids(messages: list[dict], generation_prompt: bool = False) -> list[int]:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    try:
        prompt_ids = ids(prompt, generation_prompt=True)
        chosen = ids([*prompt, {"role": "assistant", "content": pair.chosen}])
        rejected = ids([*prompt, {"role": "assistant", "content": pair.rejected}])
    except Exception as exc:  # jinja templates raise their own errors
        raise RowError(f"the model's chat template rejects this conversation: {exc}") from exc
    # The replies start where prompt and prompt + reply part (a template may render the prompt alone differently).
    start = min(_common_prefix(prompt_ids, chosen), _common_prefix(prompt_ids, rejected))
    if start >= max_length:
        raise RowError(f"the prompt is {start} tokens, over max_length={max_length}: nothing of the replies fits")
    room = max_length - start
    return {"prompt_ids": prompt_ids[:start], "chosen_ids": chosen[start:][:room],
            "rejected_ids": rejected[start:][:room]}


def build_preference_examples(path: str | Path, tokenizer: PreTrainedTokenizerBase, max_length: int,
                              max_bytes: int = DEFAULT_MAX_BYTES, system_prompt: str = "") -> list[dict]:
    """Tokenized pairs of every usable row; UserError naming the first problems when none is usable."""
    scan = scan_preferences(path, max_bytes)
    examples = []
    for number, pair in scan.pairs:
        try:
            examples.append(tokenize_pair(tokenizer, pair, max_length, system_prompt))
        except RowError as exc:
            scan.errors.append({"row": number, "message": str(exc)})
    if not examples:
        first = "; ".join(f"row {e['row']}: {e['message']}" for e in sorted(scan.errors, key=lambda e: e["row"])[:3])
        raise UserError(f"None of the {scan.total} preference rows is usable: {first or 'no rows'}.")
    return examples
