"""Evaluate: loss and perplexity on the trained tokens, and answer matching, for the base and chosen adapters.

Each evaluation is a job (service.evaluation_jobs): started, it runs in a thread of the app and reports through
its folder, so a page reload follows it again and Cancel stops it after the batch under way.

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
import logging
import math
import os
import shutil
import threading
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from llama_space import adapters
from llama_space.errors import UserError
from llama_space.inference.backend import HoldsModel
from llama_space.inference.batching import PEFT_BASE
from llama_space.jobs import files as jobfiles
from llama_space.jobs.launcher import Launcher
from llama_space.service import eval_data
from llama_space.service.compare import BASE, Comparer, FileRun, greedy
from llama_space.service.eval_scoring import BATCH_ROWS, batches, masked_nll, pair_examples, perplexity, sequence_logps
from llama_space.service.evaluation_jobs import EvalOptions, EvaluationConfig, EvaluationStore

if TYPE_CHECKING:
    from llama_space.service.eval_data import EvalSet

log = logging.getLogger(__name__)
METADATA_KEY = "evaluation"
FIGURES = ("loss", "perplexity", "exact_match", "contains")
PREFERENCE_FIGURES = ("reward_accuracy", "reward_margin")  # saved only for preference data
CLOSE_SECONDS = 10  # how long the app's end waits for a running evaluation to stop (a batch takes about 0.5 s)


def _finite(value):
    return value if not isinstance(value, float) or math.isfinite(value) else None


class Evaluator:
    """Starts evaluations (one at a time, each a job) against the in-process model, follows and cancels them."""

    def __init__(self, comparer: Comparer) -> None:
        self.comparer = comparer  # checks adapter names, reads held-out splits and answers the prompts
        self.backend = comparer.backend
        self.permissions = comparer.permissions  # who may evaluate; None: everyone (tests, scripts)
        self.store = EvaluationStore(self.backend.settings.data_dir)
        self.launcher = Launcher(self.store)
        self._start_lock = threading.Lock()
        self._cancel = threading.Event()  # asks the running evaluation to stop after its current batch
        self._thread: threading.Thread | None = None

    def _check_allowed(self) -> None:
        if self.permissions is not None:  # it writes into the adapters' metadata
            self.permissions.require_change()

    def start(self, adapter_names: list[str] | None, file: str | None = None, job_id: str = "",
              options: EvalOptions | None = None) -> dict:
        """Check the request, write the evaluation's folder (with a copy of `file`) and start it in a thread;
        return its first status. UserError while another evaluation runs."""
        self._check_allowed()
        if not isinstance(self.backend, HoldsModel):
            raise UserError("Evaluation needs the model in this process; it is not available with a remote "
                            "chat backend (--backend-url) or on ZeroGPU (where the model runs only inside "
                            "GPU calls).")
        options = options or EvalOptions()
        models = self.comparer.models(adapter_names)
        if models == [BASE]:
            raise UserError("Choose at least one adapter to evaluate against the base model.")
        if not file and not job_id:
            raise UserError("Upload a dataset file or choose a training job whose held-out split to evaluate on.")
        with self._start_lock:
            running = self.store.active()
            if running:
                raise UserError(f"An evaluation is already running ({running['evaluation_id']}); wait for it to "
                                "finish or cancel it.")
            evaluation_id = self.store.new_id()
            config = EvaluationConfig(models, options, job_id="" if file else job_id)
            if file:
                config = EvaluationConfig(models, options, data_file=self._copy(evaluation_id, Path(file)),
                                          file_name=Path(file).name)
            self.store.write_job(evaluation_id, config.to_dict(), {
                "models": models, "stage": "data", "done": 0, "total": 0, "message": "Reading the data...",
                "result": None})
            self._cancel.clear()
            self._thread = self.launcher.start_thread(evaluation_id, partial(self._run_job, evaluation_id, config))
        return self.status(evaluation_id)

    def _copy(self, evaluation_id: str, file: Path) -> str:
        """Copy the uploaded `file` into the evaluation's staging folder; the copy's name."""
        if not file.is_file():
            raise UserError(f"Dataset file {file.name!r} not found; upload it again.")
        staging, name = self.store.staging(evaluation_id), "data" + file.suffix.lower()[:9]
        try:
            staging.mkdir(parents=True)
            shutil.copyfile(file, staging / name)
        except OSError as exc:
            self.store.discard(evaluation_id)
            raise UserError(f"Could not copy the data for the evaluation ({exc.strerror or 'input/output error'})"
                            "; nothing was started.") from exc
        return name

    def status(self, evaluation_id: str) -> dict:
        """The evaluation's status: state, stage, done, total, message; once it ended, its result."""
        self._check_allowed()
        return self.store.status(evaluation_id)

    def latest(self) -> dict | None:
        """The running evaluation's status, else the newest one's; None when there has been none."""
        self._check_allowed()
        return self.store.latest()

    def follow(self, evaluation_id: str, poll: float = 0.1) -> Iterator[dict]:
        """Progress updates {"state": "running", "stage", "done", "total", "message", "evaluation_id"} as the
        evaluation writes them; the last one is its result (state "completed", or "cancelled" with nothing saved).
        UserError when it failed or was interrupted. Closing this iterator leaves the evaluation running."""
        last = None
        while True:
            status = self.status(evaluation_id)
            if status["state"] in jobfiles.ACTIVE_STATES:
                if status.get("updated") != last:
                    last = status.get("updated")
                    yield _progress(status)
                time.sleep(poll)
                continue
            if status["state"] in ("completed", "cancelled") and status.get("result"):
                yield {**status["result"], "evaluation_id": evaluation_id}
                return
            raise UserError(status.get("error") or f"The evaluation {status['state']}.")

    def run(self, adapter_names: list[str] | None, file: str | None = None, job_id: str = "",
            options: EvalOptions | None = None) -> Iterator[dict]:
        """Start an evaluation and follow it (see `follow`)."""
        status = self.start(adapter_names, file, job_id, options)
        yield from self.follow(status["evaluation_id"])

    def evaluate(self, adapter_names: list[str] | None, file: str | None = None, job_id: str = "",
                 options: EvalOptions | None = None) -> dict:
        """The whole evaluation at once: its result."""
        result: dict = {}
        for result in self.run(adapter_names, file, job_id, options):
            pass
        return result

    def cancel(self, evaluation_id: str = "") -> dict:
        """Ask the running evaluation (or `evaluation_id`) to stop after its current batch;
        {"cancelling": whether one runs, "evaluation_id"}."""
        self._check_allowed()
        status = self.store.status(evaluation_id) if evaluation_id else self.store.active()
        if status is None or status["state"] not in jobfiles.ACTIVE_STATES:
            return {"cancelling": False, "evaluation_id": (status or {}).get("evaluation_id", "")}
        self.store.request_cancel(status["evaluation_id"])
        self._cancel.set()
        return {"cancelling": True, "evaluation_id": status["evaluation_id"]}

    def close(self, timeout: float = CLOSE_SECONDS) -> None:
        """Stop a running evaluation after its current batch and wait for it (at most `timeout` s), so that the
        app's end does not close the model under it; the app itself stops it, so no permission is asked."""
        self._cancel.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run_job(self, evaluation_id: str, config: EvaluationConfig) -> None:
        """The evaluation's thread: reads the data, evaluates, records every stage and how it ended; never raises."""
        job_dir = self.store.job_dir(evaluation_id)
        jobfiles.update_status(job_dir, state="running", pid=os.getpid(), started=time.time())
        try:
            found = self._data(job_dir, config)
            result = None
            for update in self._evaluate(config.models, found, config.options):
                if update["state"] == "running":
                    jobfiles.update_status(job_dir, **{key: update[key] for key in ("stage", "done", "total",
                                                                                     "message")})
                else:
                    result = update
            jobfiles.update_status(job_dir, state=result["state"], stage=result["state"], result=result,
                                   message=_summary(result), finished=time.time())
        except BaseException as exc:  # the app must outlive any failure of an evaluation
            if isinstance(exc, UserError):
                message = str(exc)
            else:
                log.exception("evaluation %s failed", evaluation_id)
                message = f"The evaluation failed ({type(exc).__name__}); the server log has the details."
            jobfiles.update_status(job_dir, state="failed", error=message, finished=time.time())
        finally:
            if config.data_file:
                (job_dir / config.data_file).unlink(missing_ok=True)

    def _data(self, job_dir: Path, config: EvaluationConfig) -> EvalSet:
        """The rows to evaluate on: the uploaded training-format file, else a job's held-out split."""
        options = config.options
        if config.data_file:
            found = eval_data.from_training_file(str(job_dir / config.data_file), self.backend.tokenizer,
                                                 options.max_length, self.backend.settings.max_upload_mb * 2**20)
            found.source = config.file_name or found.source
        else:
            found = self.comparer.held_out(config.job_id)
        found.rows = found.rows[: options.max_examples]
        return found

    def _evaluate(self, models: list[str], found: EvalSet, options: EvalOptions) -> Iterator[dict]:
        figures = {model: {} for model in models}
        for model in models:
            for update in self._loss(model, found):
                if isinstance(update, dict):
                    figures[model].update(update)
                else:
                    yield _update("loss", *update, f"Loss of {model}: {update[0]}/{update[1]} rows")
            for update in self._preference(model, found):
                if isinstance(update, dict):
                    figures[model].update(update)
                else:
                    yield _update("preference", *update, f"Preference of {model}: {update[0]}/{update[1]} pairs")
            if self._cancel.is_set():
                yield self._result("cancelled", models, found, figures)
                return
        with_reference = [row for row in found.rows if row.reference]
        if options.generate_answers and with_reference:
            run = FileRun(models, with_reference, found.source)
            for _ in self.comparer.run_rows(run, greedy(options.max_new_tokens), cancel=self._cancel):
                yield _update("answers", run.done, run.total, f"Answers: {run.done}/{run.total} prompts")
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

    def _preference(self, model: str, found: EvalSet) -> Iterator[tuple[int, int] | dict]:
        """On preference rows: (pairs done, pairs) per batch, then {"reward_accuracy", "reward_margin", "pairs"}:
        the share of pairs whose chosen reply the model gives a higher log-probability than the rejected one, and
        the mean of that difference in nats (the implicit reward DPO raises)."""
        pairs = [row.pair for row in found.rows if row.pair is not None]
        if not pairs:
            return
        pad_id = self.backend.tokenizer.pad_token_id or 0
        adapter, margins = ("" if model == BASE else model), []
        for start in range(0, len(pairs), BATCH_ROWS // 2):
            if self._cancel.is_set():
                return
            group = [example for pair in pairs[start:start + BATCH_ROWS // 2] for example in pair_examples(pair)]
            with self.backend.holding_model(adapter) as (served, is_peft):
                names = [PEFT_BASE if model == BASE else model] * len(group) if is_peft else None
                logps = sequence_logps(served, group, pad_id, names)
            margins += [chosen - rejected for chosen, rejected in zip(logps[0::2], logps[1::2])]
            yield len(margins), len(pairs)
        yield {"reward_accuracy": sum(m > 0 for m in margins) / len(margins),
               "reward_margin": sum(margins) / len(margins), "pairs": len(margins)}

    def _result(self, state: str, models: list[str], found: EvalSet, figures: dict) -> dict:
        return {"state": state, "stage": state, "source": found.source, "dataset_fingerprint": found.fingerprint,
                "examples": len(found.rows), "skipped_rows": found.skipped,
                "references": sum(bool(row.reference) for row in found.rows),
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "models": {model: {key: _finite(value) for key, value in figures[model].items()}
                           for model in models}}

    def _save(self, models: list[str], result: dict) -> tuple[list[str], dict[str, str]]:
        """Write each adapter's figures, with the base's beside them, into its metadata; (saved, why not)."""
        figures = (*FIGURES, *(key for key in PREFERENCE_FIGURES if result["models"][BASE].get(key) is not None))
        base = {key: result["models"][BASE].get(key) for key in figures}
        saved, not_saved = [], {}
        for model in models[1:]:
            evaluation = {**{key: result[key] for key in ("dataset_fingerprint", "source", "examples",
                                                          "references", "created")},
                          **{key: result["models"][model].get(key) for key in (*figures, "tokens")}, "base": base}
            try:
                save_evaluation(self.backend.settings.adapters_dir, model, evaluation)
                saved.append(model)
            except UserError as exc:
                not_saved[model] = str(exc)
        return saved, not_saved


def _update(stage: str, done: int, total: int, message: str) -> dict:
    return {"state": "running", "stage": stage, "done": done, "total": total, "message": message}


def _progress(status: dict) -> dict:
    """A running evaluation's status as a progress update."""
    return {"state": "running", "evaluation_id": status["evaluation_id"],
            **{key: status.get(key) for key in ("stage", "done", "total", "message")}}


def _summary(result: dict) -> str:
    if result["state"] == "cancelled":
        return "Cancelled; nothing was saved."
    return f"Evaluated {result['examples']} rows of {result['source']}."


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
        jobfiles.write_json_atomic(path, {**current, METADATA_KEY: evaluation})
    except OSError as exc:  # deleted meanwhile, disk full: nothing half-written is left
        raise UserError(f"Adapter {name!r}'s evaluation was not saved ({exc.strerror or 'input/output error'}); "
                        "was it deleted meanwhile?") from exc
