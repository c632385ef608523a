"""The core's messages in the UI's language.

The core (everything outside web/) builds its messages in English: UserError texts, the data report's summary and
row problems, an export's needs and stages, where a training job runs and why, how a job ended. REST, /v1 and MCP
clients read them so. The UI shows them in the visitor's language: each message is matched against a catalogue
(llama_space/web/strings/messages_*.py) of its English wording, with its Chinese beside it.

A catalogue entry is a pair of templates. In the English one, `{name}` matches any text and `{name:REGEX}` text
matching REGEX; `[[...]]` is a part the message may leave out. The Chinese one says the same with the same
fields, and a `[[...]]` part of it is left out when a field in it did not match. A field keeps its value (numbers,
names, paths), except that a field named in TRANSLATED whose value is itself a message of the catalogue (or a list
of such, joined by "; " or ", ") is translated too, and a field named `_x` is English only: the Chinese may leave
it out, or name it in a `[[...]]` part only to say whether the English had it (it shows as nothing).
A message no entry matches is shown as it is, in English.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from functools import cache

OPTIONAL = re.compile(r"\[\[(.*?)\]\]", re.DOTALL)
LIST_SEPARATORS = (("; ", "；"), (", ", "，"))
# Fields that hold a piece of prose the core built (a reason, a list of problems, a state), not a name or a number.
TRANSLATED = frozenset({"message", "reasons", "problems", "skipped", "shape", "advice", "where", "detail", "state",
                        "others", "way", "why", "kind", "reason", "what", "stage", "needs", "note", "cells",
                        "rows"})


@dataclass(frozen=True)
class Entry:
    """One catalogue entry: its English templates' regex and its Chinese template."""

    english: str
    chinese: str
    pattern: re.Pattern

    def render(self, match: re.Match, lang: str) -> str:
        values = {name: None if value is None else "" if name.startswith("_") else
                  localize(value, lang) if name in TRANSLATED else value for name, value in match.groupdict().items()}

        def optional(part: re.Match) -> str:
            fields = template_fields(part.group(1))
            return "" if any(values.get(name) is None for name in fields) else part.group(1)

        return OPTIONAL.sub(optional, self.chinese).format(**{k: v or "" for k, v in values.items()})


def template_fields(template: str) -> list[str]:
    """The names of a template's fields, in order."""
    return [name for _, name, _, _ in string.Formatter().parse(template.replace("[[", "").replace("]]", ""))
            if name]


def english_pattern(template: str) -> re.Pattern:
    """The regex an English template matches a whole message with."""
    parts = []
    for piece in re.split(r"(\[\[|\]\])", template):
        if piece == "[[":
            parts.append("(?:")
        elif piece == "]]":
            parts.append(")?")
        else:
            for literal, name, spec, _ in string.Formatter().parse(piece):
                parts.append(re.escape(literal))
                if name is not None:
                    parts.append(f"(?P<{name}>{spec or '.+?'})")
    return re.compile("".join(parts), re.DOTALL)


def entry(english: str, chinese: str) -> Entry:
    return Entry(english, chinese, english_pattern(english))


@cache
def catalogue() -> tuple[Entry, ...]:
    """Every entry, in the order they are tried (the first that matches wins)."""
    from llama_space.web.strings import (
        messages_data,
        messages_export,
        messages_inference,
        messages_service,
        messages_training,
    )

    return tuple(entry(english, chinese) for module in (messages_data, messages_inference, messages_training,
                                                         messages_export, messages_service)
                 for english, chinese in module.MESSAGES)


def match(message: str) -> tuple[Entry, re.Match] | None:
    """The first entry that matches the whole of `message`, with its match."""
    for candidate in catalogue():
        found = candidate.pattern.fullmatch(message)
        if found:
            return candidate, found
    return None


def localize(message: str, lang: str) -> str:
    """`message` in `lang` ("en" or "zh"): the catalogue's Chinese where an entry matches it, else as it is."""
    if lang == "en" or not message:
        return message
    found = match(message)
    if found:
        return found[0].render(found[1], lang)
    for english, chinese in LIST_SEPARATORS:
        items = message.split(english)
        if len(items) > 1 and all(match(item) for item in items):
            return chinese.join(localize(item, lang) for item in items)
    return message
