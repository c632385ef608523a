"""The validation report of a preference file: the same keys as an instruction file's, with a preview that shows
the masked prompt once and both replies (trained) with their token counts."""

from __future__ import annotations

import html
from pathlib import Path
from typing import TYPE_CHECKING

from llama_space.data.formats import DEFAULT_MAX_BYTES, RowError, dataset_fingerprint
from llama_space.data.limits import VALIDATION_BUDGET, TokenBudget
from llama_space.data.preference import scan_preferences, tokenize_pair
from llama_space.data.preview import MASKED, TRAINED
from llama_space.data.validate import MAX_LISTED, _token_stats

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


def preference_preview(tokenizer: PreTrainedTokenizerBase, example: dict) -> str:
    """HTML of one tokenized pair: the prompt (masked, no loss), then each reply as the trainer sees it."""
    decode = lambda ids: html.escape(tokenizer.decode(ids))
    parts = [f"<div><b>prompt</b> ({len(example['prompt_ids'])} tokens, masked)</div>",
             MASKED.format(decode(example["prompt_ids"]))]
    for side in ("chosen", "rejected"):
        ids = example[f"{side}_ids"]
        parts += [f"<div><b>{side}</b> ({len(ids)} tokens, trained)</div>", TRAINED.format(decode(ids))]
    return '<pre class="llama-space-preview" style="white-space:pre-wrap">' + "".join(parts) + "</pre>"


def validate_preferences(path: str | Path, tokenizer: PreTrainedTokenizerBase, max_length: int,
                         max_bytes: int = DEFAULT_MAX_BYTES, preview_rows: int = 3,
                         budget: TokenBudget = VALIDATION_BUDGET, system_prompt: str = "") -> dict:
    """The report of a preference file, keyed as data.validate_file's (format is pairs, messages or transcripts;
    kind is "preference"); token counts cover the first `budget.rows` usable pairs."""
    scan = scan_preferences(path, max_bytes)
    lengths, kept, trained, tokens, too_long, tokenized = [], [], 0, 0, 0, 0
    for number, pair in scan.pairs:
        if tokenized >= budget.rows:
            trained += 1
            continue
        tokenized += 1
        try:
            full = tokenize_pair(tokenizer, pair, 10**9, system_prompt)
            example = tokenize_pair(tokenizer, pair, max_length, system_prompt)
        except RowError as exc:
            scan.errors.append({"row": number, "message": str(exc)})
            continue
        longest = len(full["prompt_ids"]) + max(len(full["chosen_ids"]), len(full["rejected_ids"]))
        lengths.append(longest)
        too_long += longest > max_length
        trained += 1
        tokens += len(example["chosen_ids"]) + len(example["rejected_ids"])
        if len(kept) < preview_rows:
            kept.append(example)
    scan.errors.sort(key=lambda error: error["row"])
    skipped = scan.total - trained
    summary = (f"{trained} of {scan.total} preference pairs ({scan.data_format} format) will be trained"
               if trained else f"Nothing to train: none of the {scan.total} preference rows is usable")
    if skipped:
        summary += f"; skipped: {len(scan.errors)} with errors, {scan.duplicates} exact duplicates"
    if too_long:
        summary += f"; {too_long} longer than {max_length} tokens have their replies cut"
    return {"ok": bool(trained), "kind": "preference", "summary": summary + ".", "format": scan.data_format,
            "fingerprint": dataset_fingerprint(path), "rows": scan.total, "valid_rows": trained,
            "skipped_rows": skipped, "errors": scan.errors[:MAX_LISTED], "error_count": len(scan.errors),
            "warnings": scan.warnings[:MAX_LISTED], "warning_count": len(scan.warnings),
            "duplicates": scan.duplicates, "tokenized_rows": tokenized, "too_long": too_long, "no_trainable": 0,
            "max_length": max_length, "trainable_tokens": tokens, "token_stats": _token_stats(lengths),
            "preview": [preference_preview(tokenizer, example) for example in kept]}


def is_preference_file(path: str | Path, max_bytes: int = DEFAULT_MAX_BYTES) -> bool:
    """Whether the file holds preference data (chosen and rejected columns) rather than instruction data."""
    from llama_space.data.formats import open_records
    from llama_space.data.preference import is_preference

    return is_preference(open_records(path, max_bytes).columns)


def validate_any(path: str | Path, tokenizer: PreTrainedTokenizerBase, max_length: int,
                 max_bytes: int = DEFAULT_MAX_BYTES, system_prompt: str = "") -> dict:
    """The report of an instruction file (data.validate_file, kind "instruction") or a preference file."""
    from llama_space.data.validate import validate_file

    if is_preference_file(path, max_bytes):
        return validate_preferences(path, tokenizer, max_length, max_bytes, system_prompt=system_prompt)
    return {**validate_file(path, tokenizer, max_length, max_bytes, system_prompt=system_prompt),
            "kind": "instruction"}
