"""Evaluate: loss and perplexity on the trained tokens, and answer matching, for the base and chosen adapters.

The loss is the mean cross-entropy over exactly the tokens training learns (assistant replies and their
end-of-turn, as data.tokenize masks them; every other label is IGNORE_INDEX), summed over all rows and
divided by their number, so it does not depend on how rows are batched. The model is borrowed one small
batch at a time (a backend.HoldsModel's holding_model takes the generation lock per forward pass), so chat goes on
between batches. Where rows carry a reference (their last assistant reply), each model's greedy answer is
checked for an exact match and for containing the reference (compare.matches). Figures are saved into each
adapter's metadata under "evaluation", next to the base model's.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from llama_space import adapters
from llama_space.data.tokenize import IGNORE_INDEX
from llama_space.errors import UserError
from llama_space.inference import prefill
from llama_space.inference.backend import HoldsModel
from llama_space.inference.batching import PEFT_BASE
from llama_space.jobs.files import write_json_atomic
from llama_space.service import eval_data
from llama_space.service.compare import BASE, Comparer, FileRun, greedy
from llama_space.training.params import TrainingParams

if TYPE_CHECKING:
    from llama_space.service.eval_data import EvalSet

MAX_EXAMPLES = 5000
# Padded tokens per forward pass, which is how long one pass keeps chat waiting: no more than one prefill chunk
# of a joining chat request does (measured: about 0.5 s a pass for the embedded model on 2 CPU cores).
BATCH_TOKENS = prefill.PREFILL_CHUNK
BATCH_ROWS = 8
METADATA_KEY = "evaluation"
FIGURES = ("loss", "perplexity", "exact_match", "contains")
CLOSE_SECONDS = 10  # how long the app's end waits for a running evaluation to stop (a batch takes about 0.5 s)


@dataclass
class EvalOptions:
    """How much to evaluate and how."""

    max_examples: int = 200  # rows evaluated at most (the first ones of the file or split)
    generate_answers: bool = True  # also answer each prompt greedily and match the references
    max_new_tokens: int = 128  # longest generated answer, in tokens
    max_length: int = TrainingParams.max_length  # rows of a file are truncated as training with this would

    def __post_init__(self) -> None:
        for name, low, high in (("max_examples", 1, MAX_EXAMPLES), ("max_new_tokens", 1, 4096),
                                ("max_length", 16, 131_072)):
            value = getattr(self, name)
            if isinstance(value, float) and value.is_integer():
                value = int(value)
                setattr(self, name, value)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise UserError(f"{name} must be a whole number between {low} and {high}, got {value!r}")


def batches(examples: list[dict], max_tokens: int = BATCH_TOKENS, max_rows: int = BATCH_ROWS) -> Iterator[list[dict]]:
    """Consecutive groups of examples whose padded size stays within `max_tokens` (one row may exceed it alone)."""
    group: list[dict] = []
    for example in examples:
        longest = max([len(e["input_ids"]) for e in group] + [len(example["input_ids"])])
        if group and (len(group) == max_rows or longest * (len(group) + 1) > max_tokens):
            yield group
            group = []
        group.append(example)
    if group:
        yield group


def masked_nll(model, group: list[dict], pad_id: int, adapter_names: list[str] | None = None) -> tuple[float, int]:
    """(summed cross-entropy, tokens counted) over the non-IGNORE_INDEX labels of `group`, right-padded."""
    import torch

    width = max(len(e["input_ids"]) for e in group)
    ids = torch.full((len(group), width), pad_id, dtype=torch.long)
    labels = torch.full((len(group), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(group), width), dtype=torch.long)
    for row, example in enumerate(group):
        n = len(example["input_ids"])
        ids[row, :n], labels[row, :n], mask[row, :n] = (torch.tensor(example["input_ids"]),
                                                        torch.tensor(example["labels"]), 1)
    kwargs = {"adapter_names": adapter_names} if adapter_names else {}
    with torch.inference_mode():
        logits = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device), **kwargs).logits
        # Token t predicts token t + 1, as in the Trainer's causal-LM loss.
        shifted = labels[:, 1:].to(logits.device)
        nll = torch.nn.functional.cross_entropy(logits[:, :-1].float().flatten(0, 1), shifted.flatten(),
                                                ignore_index=IGNORE_INDEX, reduction="sum")
    return float(nll), int((shifted != IGNORE_INDEX).sum())


def perplexity(loss: float | None) -> float | None:
    """exp(loss), None where it does not exist or overflows."""
    if loss is None or not math.isfinite(loss):
        return None
    try:
        return math.exp(loss)
    except OverflowError:
        return None


def _finite(value):
    return value if not isinstance(value, float) or math.isfinite(value) else None


class Evaluator:
    """Runs one evaluation at a time (cancellable) against the in-process model."""

    def __init__(self, comparer: Comparer) -> None:
        self.comparer = comparer  # checks adapter names, reads held-out splits and answers the prompts
        self.backend = comparer.backend
        self.permissions = comparer.permissions  # who may evaluate; None: everyone (tests, scripts)
        self._busy = threading.Lock()
        self._cancel = threading.Event()

    def _check_allowed(self) -> None:
        if self.permissions is not None:  # it writes into the adapters' metadata
            self.permissions.require_change()

    def cancel(self) -> dict:
        """Ask the running evaluation to stop after its current batch; {"cancelling": whether one runs}."""
        self._check_allowed()
        running = self._busy.locked()
        if running:
            self._cancel.set()
        return {"cancelling": running}

    def close(self, timeout: float = CLOSE_SECONDS) -> None:
        """Stop a running evaluation after its current batch and wait for it (at most `timeout` s), so that the
        app's end does not close the model under it; the app itself stops it, so no permission is asked."""
        self._cancel.set()
        if self._busy.acquire(timeout=timeout):
            self._busy.release()

    def data(self, file: str | None, job_id: str, options: EvalOptions) -> EvalSet:
        """The rows to evaluate on: an uploaded training-format file, else a job's held-out split."""
        tokenizer = self.backend.tokenizer
        if file:
            found = eval_data.from_training_file(file, tokenizer, options.max_length,
                                                 self.backend.settings.max_upload_mb * 2**20)
        elif job_id:
            found = self.comparer.held_out(job_id)
        else:
            raise UserError("Upload a dataset file or choose a training job whose held-out split to evaluate on.")
        found.rows = found.rows[: options.max_examples]
        return found

    def run(self, adapter_names: list[str] | None, file: str | None = None, job_id: str = "",
            options: EvalOptions | None = None) -> Iterator[dict]:
        """Progress updates {"state": "running", "stage", "done", "total", "message"}; the last one is the result
        (state "completed", or "cancelled" with nothing saved)."""
        self._check_allowed()
        if not isinstance(self.backend, HoldsModel):
            raise UserError("Evaluation needs the model in this process; it is not available with a remote "
                            "chat backend (--backend-url) or on ZeroGPU (where the model runs only inside "
                            "GPU calls).")
        options = options or EvalOptions()
        models = self.comparer.models(adapter_names)
        if models == [BASE]:
            raise UserError("Choose at least one adapter to evaluate against the base model.")
        if not self._busy.acquire(blocking=False):
            raise UserError("An evaluation is already running; wait for it to finish or cancel it.")
        self._cancel.clear()
        try:
            yield {"state": "running", "stage": "data", "done": 0, "total": 0, "message": "Reading the data..."}
            found = self.data(file, job_id, options)
            yield from self._evaluate(models, found, options)
        finally:
            self._busy.release()

    def _evaluate(self, models: list[str], found: EvalSet, options: EvalOptions) -> Iterator[dict]:
        figures = {model: {} for model in models}
        for model in models:
            for update in self._loss(model, found):
                if isinstance(update, dict):
                    figures[model].update(update)
                else:
                    yield _progress("loss", *update, f"Loss of {model}: {update[0]}/{update[1]} rows")
            if self._cancel.is_set():
                yield self._result("cancelled", models, found, figures)
                return
        with_reference = [row for row in found.rows if row.reference]
        if options.generate_answers and with_reference:
            run = FileRun(models, with_reference, found.source)
            for _ in self.comparer.run_rows(run, greedy(options.max_new_tokens), cancel=self._cancel):
                yield _progress("answers", run.done, run.total, f"Answers: {run.done}/{run.total} prompts")
            if self._cancel.is_set():
                yield self._result("cancelled", models, found, figures)
                return
            for model, score in run.scores().items():
                figures[model].update(exact_match=score["exact_match"], contains=score["contains"],
                                      references=score["references"])
        result = self._result("completed", models, found, figures)
        result["saved"], result["not_saved"] = self._save(models, result)
        yield result

    def _loss(self, model: str, found: EvalSet) -> Iterator[tuple[int, int] | dict]:
        """(rows done, rows) after each batch, then {"loss", "perplexity", "tokens"} unless cancelled."""
        examples = [row.example for row in found.rows if row.example is not None]
        total_nll, total_tokens, done = 0.0, 0, 0
        pad_id = self.backend.tokenizer.pad_token_id
        pad_id = pad_id if pad_id is not None else 0  # padded positions are masked: any id will do
        adapter = "" if model == BASE else model
        for group in batches(examples):
            if self._cancel.is_set():
                return
            with self.backend.holding_model(adapter) as (served, is_peft):
                names = [PEFT_BASE if model == BASE else model] * len(group) if is_peft else None
                nll, tokens = masked_nll(served, group, pad_id, names)
            total_nll, total_tokens, done = total_nll + nll, total_tokens + tokens, done + len(group)
            yield done, len(examples)
        loss = total_nll / total_tokens if total_tokens else None
        yield {"loss": loss, "perplexity": perplexity(loss), "tokens": total_tokens}

    def _result(self, state: str, models: list[str], found: EvalSet, figures: dict) -> dict:
        return {"state": state, "stage": state, "source": found.source, "dataset_fingerprint": found.fingerprint,
                "examples": len(found.rows), "skipped_rows": found.skipped,
                "references": sum(bool(row.reference) for row in found.rows),
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "models": {model: {key: _finite(value) for key, value in figures[model].items()}
                           for model in models}}

    def _save(self, models: list[str], result: dict) -> tuple[list[str], dict[str, str]]:
        """Write each adapter's figures, with the base's beside them, into its metadata; (saved, why not)."""
        base = {key: result["models"][BASE].get(key) for key in FIGURES}
        saved, not_saved = [], {}
        for model in models[1:]:
            evaluation = {**{key: result[key] for key in ("dataset_fingerprint", "source", "examples",
                                                          "references", "created")},
                          **{key: result["models"][model].get(key) for key in (*FIGURES, "tokens")}, "base": base}
            try:
                save_evaluation(self.backend.settings.adapters_dir, model, evaluation)
                saved.append(model)
            except UserError as exc:
                not_saved[model] = str(exc)
        return saved, not_saved

    def evaluate(self, adapter_names: list[str] | None, file: str | None = None, job_id: str = "",
                 options: EvalOptions | None = None) -> dict:
        """The whole evaluation at once: its result."""
        result: dict = {}
        for result in self.run(adapter_names, file, job_id, options):
            pass
        return result


def _progress(stage: str, done: int, total: int, message: str) -> dict:
    return {"state": "running", "stage": stage, "done": done, "total": total, "message": message}


def save_evaluation(adapters_dir: Path, name: str, evaluation: dict) -> None:
    """Set `evaluation` under "evaluation" in adapter `name`'s metadata file, written whole or not at all.

    The file is read raw (not adapters.read_metadata, which adds PEFT config fields), so only our key changes;
    a file that is not a JSON object is left alone rather than replaced.
    """
    path = adapters.adapter_path(adapters_dir, name) / adapters.METADATA_FILE
    try:
        current = json.loads(path.read_text()) if path.exists() else {}
    except (OSError, ValueError):
        current = None
    if not isinstance(current, dict):
        raise UserError(f"Adapter {name!r}'s metadata file cannot be read, so its evaluation was not saved "
                        "(the file was left as it is).")
    try:
        write_json_atomic(path, {**current, METADATA_KEY: evaluation})
    except OSError as exc:  # deleted meanwhile, disk full: nothing half-written is left
        raise UserError(f"Adapter {name!r}'s evaluation was not saved ({exc.strerror or 'input/output error'}); "
                        "was it deleted meanwhile?") from exc
