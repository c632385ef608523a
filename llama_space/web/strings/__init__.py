"""The UI's text: one table per tab, each key with its English and its Simplified Chinese."""

from __future__ import annotations

from llama_space.web.strings import adapters, chat, common, compare, export, feedback, finetune, jobs


def _merged() -> dict[str, tuple[str, str]]:
    merged: dict[str, tuple[str, str]] = {}
    for module in (common, chat, finetune, jobs, adapters, compare, export, feedback):
        overlap = merged.keys() & module.STRINGS.keys()
        if overlap:
            raise ValueError(f"UI string keys defined twice: {sorted(overlap)}")
        merged |= module.STRINGS
    return merged


STRINGS: dict[str, tuple[str, str]] = _merged()
