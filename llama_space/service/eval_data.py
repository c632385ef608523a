"""The rows compare and evaluate work on: a job's held-out split, a training file, or a file of prompts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from llama_space.data.formats import (
    RowError,
    dataset_fingerprint,
    detect_format,
    open_records,
    to_messages,
)
from llama_space.data.preference_report import is_preference_file
from llama_space.data.tokenize import IGNORE_INDEX
from llama_space.data.validate import LONE_SURROGATE, Analysis, analyse, check_conversation, has_lone_surrogate
from llama_space.errors import UserError
from llama_space.model.source import same_base
from llama_space.training.collate import split_examples

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from llama_space.training.runner import JobRunner

PROMPT_COLUMN = "prompt"
SYSTEM_COLUMN = "system"
REFERENCE_COLUMNS = ("reference", "answer", "output", "response")  # the first one present is the reference
PROMPTS_SHAPE = ("a 'prompt' column (optional: 'system' and a reference answer in one of "
                 f"{', '.join(REFERENCE_COLUMNS)}), or training data (Alpaca, chat messages or ShareGPT), "
                 "whose last assistant reply is the reference")


@dataclass
class EvalRow:
    """One prompt to answer, with what training would learn from it."""

    prompt: list[dict]  # {role, content} messages ending with the user turn to answer
    reference: str | None = None  # the expected answer, when the data has one
    example: dict | None = None  # {"input_ids", "labels"} as training builds it, when the row is trainable
    pair: dict | None = None  # {"prompt_ids", "chosen_ids", "rejected_ids"} of a preference row


@dataclass
class EvalSet:
    """Rows from one source, and what identifies that source."""

    rows: list[EvalRow]
    fingerprint: str  # dataset_fingerprint of the file the rows come from
    source: str  # for people: "held-out split of job X" or the file's name
    skipped: int = 0  # rows of the file that could not be used


def split_reply(messages: list[dict]) -> tuple[list[dict], str | None]:
    """(the messages before the last assistant reply, that reply); no reference when they do not end on a user."""
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
    if last is None:
        return messages, None
    prompt = messages[:last]
    if not prompt or prompt[-1]["role"] != "user":
        return messages[: last + 1], None
    return prompt, messages[last]["content"]


def _kept_conversations(analysis: Analysis) -> list[list[dict]]:
    """The messages of each row `analysis` kept for training, in its order."""
    rejected = {error["row"] for error in analysis.scan.errors} | set(analysis.no_trainable)
    kept = [messages for number, messages in analysis.scan.rows if number not in rejected]
    if len(kept) != len(analysis.kept):  # the two lists must line up, or figures would mix rows up
        raise RuntimeError("kept rows and their conversations differ in number")
    return kept


def _trainable_rows(analysis: Analysis, max_length: int) -> list[EvalRow]:
    rows = []
    for messages, encoded in zip(_kept_conversations(analysis), analysis.kept):
        prompt, reference = split_reply(messages)
        # Truncated exactly as build_examples truncates a training row.
        example = {"input_ids": encoded.input_ids[:max_length], "labels": encoded.labels[:max_length]}
        rows.append(EvalRow(prompt, reference, example))
    return rows


def preference_rows(path: str | Path, tokenizer: PreTrainedTokenizerBase, max_length: int, max_bytes: int,
                    system_prompt: str = "") -> tuple[list[EvalRow], int]:
    """(a row per usable pair of a preference file, tokenized as training tokenizes it, rows skipped): its loss is
    the chosen reply's, its reference the chosen reply."""
    from llama_space.data.preference import scan_preferences, tokenize_pair

    scan, rows = scan_preferences(path, max_bytes), []
    for _number, pair in scan.pairs:
        try:
            ids = tokenize_pair(tokenizer, pair, max_length, system_prompt)
        except RowError:
            continue
        example = {"input_ids": ids["prompt_ids"] + ids["chosen_ids"],
                   "labels": [IGNORE_INDEX] * len(ids["prompt_ids"]) + ids["chosen_ids"]}
        rows.append(EvalRow(pair.prompt, pair.chosen, example, ids))
    if not rows:
        raise UserError(f"None of the {scan.total} preference rows of {Path(path).name} is usable.")
    return rows, scan.total - len(rows)


def from_training_file(path: str | Path, tokenizer: PreTrainedTokenizerBase, max_length: int,
                       max_bytes: int) -> EvalSet:
    """Every trainable row of a training-format file, masked as training masks it (a preference file: its pairs)."""
    if is_preference_file(path, max_bytes):
        rows, skipped = preference_rows(path, tokenizer, max_length, max_bytes)
        return EvalSet(rows, dataset_fingerprint(path), Path(path).name, skipped)
    analysis = analyse(path, tokenizer, max_length, max_bytes)
    if not analysis.kept:
        raise UserError(f"None of the {analysis.scan.total} rows of {Path(path).name} has an assistant reply to "
                        "evaluate on. Upload training data (Alpaca, chat messages or ShareGPT).")
    rows = _trainable_rows(analysis, max_length)
    return EvalSet(rows, dataset_fingerprint(path), Path(path).name, analysis.scan.total - len(rows))


def from_job(runner: JobRunner, job_id: str, tokenizer: PreTrainedTokenizerBase, base_name: str) -> EvalSet:
    """The rows job `job_id` held out from training (its eval split), rebuilt from the job folder's data copy."""
    registry = runner.registry
    config = registry.read_config(job_id)
    trained_on = config.base_model
    if trained_on and not same_base(trained_on, base_name):
        raise UserError(f"Job {job_id} trained on {trained_on}, but the loaded base model is {base_name}; "
                        f"start the app with --model {trained_on} to use its held-out split.")
    params = config.params
    if params.eval_fraction <= 0:
        raise UserError(f"Job {job_id} held out no rows (eval_fraction 0); upload a file to use instead.")
    dataset = config.dataset_path(registry.job_dir(job_id))
    if not dataset.is_file():
        raise UserError(f"Job {job_id}'s copy of its data is gone (cleaned up); upload the file instead.")
    if is_preference_file(dataset, config.max_bytes):
        rows, _ = preference_rows(dataset, tokenizer, params.max_length, config.max_bytes, params.system_prompt)
    else:
        analysis = analyse(dataset, tokenizer, params.max_length, config.max_bytes, system_prompt=params.system_prompt)
        rows = _trainable_rows(analysis, params.max_length)
    # The same shuffle as training's split: row indices in place of the rows give the indices it held out.
    _, held_out = split_examples([{"input_ids": [i], "labels": [i]} for i in range(len(rows))],
                                 params.eval_fraction, params.seed)
    picked = [rows[example["input_ids"][0]] for example in held_out]
    return EvalSet(picked, dataset_fingerprint(dataset), f"held-out split of job {job_id}")


def _prompt_row(record: dict, reference_column: str | None) -> EvalRow:
    prompt, system = record.get(PROMPT_COLUMN), record.get(SYSTEM_COLUMN)
    if not isinstance(prompt, str) or not prompt.strip():
        raise RowError("'prompt' is empty or not text")
    messages = [{"role": "system", "content": system}] if isinstance(system, str) and system.strip() else []
    reference = record.get(reference_column) if reference_column else None
    reference = reference if isinstance(reference, str) and reference.strip() else None
    if any(has_lone_surrogate(text) for text in (prompt, system, reference) if isinstance(text, str)):
        raise RowError(LONE_SURROGATE)
    return EvalRow([*messages, {"role": "user", "content": prompt}], reference)


def from_prompts_file(path: str | Path, max_bytes: int) -> EvalSet:
    """Prompts (with references where given) from an uploaded JSONL/CSV/JSON/Parquet file; see PROMPTS_SHAPE.

    The file is read a row at a time: only each row's prompt (with its system message and reference) is kept.
    """
    records = open_records(path, max_bytes)
    columns = records.columns
    if PROMPT_COLUMN in columns:
        reference_column = next((c for c in REFERENCE_COLUMNS if c in columns), None)
        make = lambda record: _prompt_row(record, reference_column)
    else:
        try:
            data_format = detect_format(columns)
        except UserError:
            raise UserError(f"{Path(path).name} has columns [{', '.join(map(str, columns))}]; a prompts file "
                            f"needs {PROMPTS_SHAPE}.") from None
        make = lambda record: _conversation_row(data_format, record)
    rows, total = [], 0
    for total, record in enumerate(records.rows, 1):
        try:
            rows.append(make(record))
        except RowError:
            pass
    if not rows:
        raise UserError(f"None of the {total} rows of {Path(path).name} holds a usable prompt; it needs "
                        f"{PROMPTS_SHAPE}.")
    return EvalSet(rows, dataset_fingerprint(path), Path(path).name, total - len(rows))


def _conversation_row(data_format: str, record: dict) -> EvalRow:
    messages = to_messages(data_format, record)
    check_conversation(messages)
    prompt, reference = split_reply(messages)
    if prompt[-1]["role"] != "user":
        raise RowError("no user turn before the last reply")
    return EvalRow(prompt, reference)
