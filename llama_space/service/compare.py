"""Compare: one prompt, or a file of prompts, answered by the base model and up to four adapters at once.

All the replies stream together: each is one request to the chat backend, started at the same moment, so the
local model's batch engine decodes them in one mixed-adapter batch (one row per adapter) and a remote server
gets them concurrently. Greedy decoding by default, so the differences are the adapters' own.
"""

from __future__ import annotations

import collections
import csv
import json
import queue
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Self

from llama_space import adapters
from llama_space.data.spreadsheet import runs_as_formula
from llama_space.errors import UserError
from llama_space.inference.generation_params import GenerationParams
from llama_space.inference.prompting import normalize_messages
from llama_space.service import eval_data

if TYPE_CHECKING:
    from llama_space.inference.backend import ChatBackend, ReplyStream
    from llama_space.service.eval_data import EvalRow, EvalSet
    from llama_space.service.permissions import Permissions
    from llama_space.training.runner import JobRunner

BASE = "base"
MAX_ADAPTERS = 4
MAX_PROMPTS = 1000  # rows one file comparison answers at most
UPDATE_SECONDS = 0.05  # longest a snapshot of the replies waits for more text
FIXED_COLUMNS = ("prompt", "system", "reference")


def greedy(max_new_tokens: int = 256, temperature: float = 0.0, top_p: float = 1.0) -> GenerationParams:
    """Comparison sampling: greedy unless a temperature is given."""
    return GenerationParams(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p)


def normalized(text: str) -> str:
    """Whitespace runs made one space, ends stripped: how answers and references are compared."""
    return " ".join(text.split())


def matches(answer: str, reference: str) -> tuple[bool, bool]:
    """(the answer equals the reference, the answer contains it); whitespace-normalized, `contains` ignores case."""
    answer, reference = normalized(answer), normalized(reference)
    return answer == reference, bool(reference) and reference.casefold() in answer.casefold()


def column(model: str) -> str:
    """The table/CSV column of a model's answers (an adapter named like a fixed column gets a suffix)."""
    return f"{model} (adapter)" if model in FIXED_COLUMNS else model


class StreamSet:
    """Several reply streams read at once: a thread per stream feeds one queue, so updates interleave as they come.

    Leaving the `with` block stops every stream still running (within one decode step).
    """

    def __init__(self) -> None:
        self._events: queue.Queue = queue.Queue()
        self._streams: dict[object, ReplyStream] = {}

    @property
    def active(self) -> int:
        """Streams not yet finished."""
        return len(self._streams)

    def start(self, key: object, stream: ReplyStream) -> None:
        """Read `stream` from now on; its events carry `key`."""
        self._streams[key] = stream
        threading.Thread(target=self._pump, args=(key, stream), daemon=True, name="compare-stream").start()

    def _pump(self, key: object, stream: ReplyStream) -> None:
        try:
            for delta in stream:
                if delta:
                    self._events.put((key, delta, False, None))
            self._events.put((key, "", True, None))
        except BaseException as exc:  # noqa: BLE001 - handed to the reading thread, which raises it
            self._events.put((key, "", True, exc))

    def next(self, timeout: float) -> tuple[object, str, bool] | None:
        """(key, text delta, whether that stream ended) or None after `timeout` s; a stream's failure is raised."""
        try:
            key, delta, ended, error = self._events.get(timeout=timeout)
        except queue.Empty:
            return None
        if ended:
            self._streams.pop(key, None)
        if error is not None:
            raise error
        return key, delta, ended

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info) -> None:
        for stream in list(self._streams.values()):
            stream.close()
        self._streams.clear()


@dataclass
class FileRun:
    """Progress and results of answering a file of prompts."""

    models: list[str]
    rows: list[EvalRow]
    source: str
    answers: list[dict[str, str]] = field(default_factory=list)  # per row: model -> answer
    done: int = 0  # rows every model has answered
    paths: tuple[str, str] | None = None  # (CSV, JSONL) once finished

    @property
    def total(self) -> int:
        return len(self.rows)

    def records(self) -> list[dict]:
        """One dict per answered row: prompt, system, reference and each model's answer."""
        out = []
        for row, answers in zip(self.rows, self.answers):
            system = next((m["content"] for m in row.prompt if m["role"] == "system"), "")
            out.append({"prompt": row.prompt[-1]["content"], "system": system, "reference": row.reference or "",
                        "answers": dict(answers)})
        return out[: self.done] if self.done < self.total else out

    def table(self) -> tuple[list[str], list[list[str]]]:
        """(headers, rows) for a results table: prompt, reference, then one column per model."""
        headers = ["prompt", "reference", *map(column, self.models)]
        return headers, [[r["prompt"], r["reference"], *(r["answers"][m] for m in self.models)]
                         for r in self.records()]

    def scores(self) -> dict[str, dict]:
        """Per model, over the rows with a reference: {"references", "exact_match", "contains"} (shares)."""
        scored = [r for r in self.records() if r["reference"]]
        out = {}
        for model in self.models:
            hits = [matches(r["answers"][model], r["reference"]) for r in scored]
            out[model] = {"references": len(hits),
                          "exact_match": sum(e for e, _ in hits) / len(hits) if hits else None,
                          "contains": sum(c for _, c in hits) / len(hits) if hits else None}
        return out


class Comparer:
    """Side-by-side answers from the base model and adapters, through the chat backend."""

    def __init__(self, backend: ChatBackend, runner: JobRunner | None = None,
                 permissions: Permissions | None = None) -> None:
        self.backend = backend
        self.runner = runner
        self.permissions = permissions  # who may read a job's held-out rows; None: everyone (tests, scripts)

    def models(self, adapter_names: list[str] | None, include_base: bool = True) -> list[str]:
        """The models to compare, in order: "base" (if included), then each named adapter once."""
        if isinstance(adapter_names, str):
            adapter_names = [adapter_names] if adapter_names else []
        names: list[str] = []
        for name in adapter_names or []:
            if not isinstance(name, str):
                raise UserError("adapters must be a list of adapter names")
            if name in adapters.BASE_NAMES:
                include_base = True
            elif name not in names:
                names.append(name)
        if len(names) > MAX_ADAPTERS:
            raise UserError(f"Compare at most {MAX_ADAPTERS} adapters at once (got {len(names)}).")
        for name in names:
            self.backend.check_adapter(name)
        models = [BASE] * include_base + names
        if not models:
            raise UserError("Choose the base model or at least one adapter to compare.")
        return models

    def stream(self, prompt: str, models: list[str], system_prompt: str = "",
               params: GenerationParams | None = None) -> Iterator[dict[str, str]]:
        """Every model's reply to `prompt` so far (model -> text), updated as they stream; the last is complete."""
        messages = normalize_messages([], prompt, system_prompt)
        params = params or greedy()
        replies = dict.fromkeys(models, "")
        yield dict(replies)
        with StreamSet() as streams:
            for model in models:  # all started before any is read: they join the engine's batch together
                streams.start(model, self.backend.stream(messages, params, _adapter(model)))
            last = time.monotonic()
            while streams.active:
                event = streams.next(UPDATE_SECONDS)
                if event is not None:
                    replies[event[0]] += event[1]
                if time.monotonic() - last >= UPDATE_SECONDS or not streams.active:
                    last = time.monotonic()
                    yield dict(replies)

    def compare(self, prompt: str, models: list[str], system_prompt: str = "",
                params: GenerationParams | None = None) -> dict[str, str]:
        """Every model's complete reply to `prompt`."""
        replies = {}
        for replies in self.stream(prompt, models, system_prompt, params):
            pass
        return replies

    def prompts(self, file: str | None = None, job_id: str = "", max_prompts: int = 100) -> EvalSet:
        """The prompts of an uploaded file, else of job `job_id`'s held-out split (up to `max_prompts`)."""
        if not isinstance(max_prompts, int) or not 1 <= max_prompts <= MAX_PROMPTS:
            raise UserError(f"max_prompts must be a whole number between 1 and {MAX_PROMPTS}")
        if file:
            found = eval_data.from_prompts_file(file, self.backend.settings.max_upload_mb * 2**20)
        elif job_id:
            found = self.held_out(job_id)
        else:
            raise UserError("Upload a prompts file (JSONL or CSV) or choose a training job's held-out split.")
        found.rows = found.rows[:max_prompts]
        return found

    def held_out(self, job_id: str) -> EvalSet:
        """The rows job `job_id` held out from training, with their reference answers: private training data,
        read only by those who may see jobs."""
        if self.runner is None:
            raise UserError("Jobs are not available here; upload a file instead.")
        if self.permissions is not None:
            self.permissions.require_job_access()
        return eval_data.from_job(self.runner, job_id, self.backend.tokenizer, self.backend.base_name)

    def run_rows(self, run: FileRun, params: GenerationParams, system_prompt: str = "",
                 cancel: threading.Event | None = None) -> Iterator[FileRun]:
        """Answer every row of `run` with every model, up to the backend's concurrency at once; yields `run` as
        rows complete (and every second meanwhile). A set `cancel` stops it (the rows so far are kept)."""
        run.answers = [dict.fromkeys(run.models, "") for _ in run.rows]
        waiting = collections.deque((i, m) for i in range(run.total) for m in run.models)
        remaining = [len(run.models)] * run.total
        window = max(1, int(self.backend.settings.concurrency))
        last = time.monotonic()
        with StreamSet() as streams:
            while (waiting or streams.active) and not (cancel is not None and cancel.is_set()):
                while waiting and streams.active < window:
                    i, model = waiting.popleft()
                    messages = _with_system(run.rows[i].prompt, system_prompt)
                    streams.start((i, model), self.backend.stream(messages, params, _adapter(model)))
                event = streams.next(UPDATE_SECONDS)
                if event is not None:
                    (i, model), delta, ended = event
                    run.answers[i][model] += delta
                    remaining[i] -= ended
                    while run.done < run.total and remaining[run.done] == 0:
                        run.done += 1
                if (event is not None and event[2]) or time.monotonic() - last >= 1.0:
                    last = time.monotonic()
                    yield run

    def run_file(self, models: list[str], file: str | None = None, job_id: str = "", system_prompt: str = "",
                 params: GenerationParams | None = None, max_prompts: int = 100,
                 out_dir: Path | None = None) -> Iterator[FileRun]:
        """Answer a file (or a job's held-out split) of prompts; the last yield has `paths` (CSV, JSONL), written
        into `out_dir` (default: a new temporary folder)."""
        found = self.prompts(file, job_id, max_prompts)
        run = FileRun(models, found.rows, found.source)
        yield run
        yield from self.run_rows(run, params or greedy(), system_prompt)
        run.paths = write_results(run, out_dir or Path(tempfile.mkdtemp(prefix="llama-space-zip-compare-")))
        yield run


def _adapter(model: str) -> str:
    return "" if model == BASE else model


def _with_system(prompt: list[dict], system_prompt: str) -> list[dict]:
    """The row's messages, with `system_prompt` first when the row brings no system message of its own."""
    if system_prompt.strip() and prompt[0]["role"] != "system":
        return [{"role": "system", "content": system_prompt}, *prompt]
    return prompt


def inert(text: str | None) -> str:
    """`text` as a spreadsheet shows it, never runs it: a cell starting like a formula gets a leading quote
    (the JSONL file keeps every answer exactly)."""
    text = text or ""
    return "'" + text if runs_as_formula(text) else text


def write_results(run: FileRun, out_dir: Path) -> tuple[str, str]:
    """Write compare.csv (prompt, system, reference, one column per model) and compare.jsonl into `out_dir`
    (a default temporary folder is named like the adapter zips', so the janitor sweeps it the same way)."""
    records = run.records()
    csv_path, jsonl_path = out_dir / "compare.csv", out_dir / "compare.jsonl"
    with open(csv_path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow([*FIXED_COLUMNS, *map(column, run.models)])
        for r in records:
            writer.writerow([inert(r["prompt"]), inert(r["system"]), inert(r["reference"]),
                             *(inert(r["answers"][m]) for m in run.models)])
    with open(jsonl_path, "w", encoding="utf-8") as handle:
        for r in records:
            handle.write(json.dumps(r, ensure_ascii=False) + "\n")
    return str(csv_path), str(jsonl_path)
