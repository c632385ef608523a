"""Evaluations as jobs: data_dir/evaluations/<evaluation_id>/ holds each run's options, data copy and status.

An evaluation runs in a thread of the app (it borrows the served model one batch at a time) and reports through
its status file, so a page reload finds it again, Cancel stops it after the batch under way, and an app restart
leaves it marked interrupted instead of lost. Its result (figures per model, what was saved) is kept in the
status once it ends.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from llama_space.errors import UserError
from llama_space.jobs import files as jobfiles
from llama_space.jobs.store import JobKind, JobStore
from llama_space.training.params import TrainingParams

MAX_EXAMPLES = 5000
EVALUATION = JobKind(noun="evaluation", folder="evaluations", log_file="evaluation.log", id_key="evaluation_id")
KEEP_SECONDS = 7 * 24 * 3600  # a finished evaluation's folder is swept this long after it ended
INTERRUPTED = "The evaluation stopped before it finished (the app that ran it ended); start it again."


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
        if not isinstance(self.generate_answers, bool):
            raise UserError(f"generate_answers must be true or false, got {self.generate_answers!r}")


@dataclass(frozen=True)
class EvaluationConfig:
    """What one evaluation evaluates, on what data (job.json of its folder)."""

    models: list[str]  # the base (first) and the adapters, as Comparer.models names them
    options: EvalOptions
    data_file: str = ""  # the copy of an uploaded file, in the evaluation's folder
    file_name: str = ""  # that file's name as uploaded
    job_id: str = ""  # else: the training job whose held-out split it evaluates on

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "options": dataclasses.asdict(self.options)}

    @classmethod
    def read(cls, job_dir: Path) -> EvaluationConfig:
        """The checked configuration in `job_dir` (UserError saying what is wrong with a damaged one)."""
        data = jobfiles.read_json(Path(job_dir) / jobfiles.JOB_FILE)
        models, options = data.get("models"), data.get("options")
        if not (isinstance(models, list) and models and all(isinstance(m, str) for m in models)):
            raise jobfiles.DamagedJobFile(Path(job_dir) / jobfiles.JOB_FILE, "no list of models")
        if not isinstance(options, dict):
            raise jobfiles.DamagedJobFile(Path(job_dir) / jobfiles.JOB_FILE, "no options")
        known = {f.name for f in dataclasses.fields(EvalOptions)}
        texts = {key: data.get(key, "") for key in ("data_file", "file_name", "job_id")}
        if not all(isinstance(value, str) for value in texts.values()):
            raise jobfiles.DamagedJobFile(Path(job_dir) / jobfiles.JOB_FILE, "a file name or job id is not text")
        return cls(models, EvalOptions(**{k: v for k, v in options.items() if k in known}), **texts)


class EvaluationStore(JobStore):
    """Evaluation folders; an interrupted evaluation is started again, not resumed."""

    def __init__(self, data_dir: str | Path) -> None:
        super().__init__(data_dir, EVALUATION)

    def interrupted_message(self) -> str:
        return INTERRUPTED

    def damaged_keys(self) -> tuple[str, ...]:
        return ("models",)

    def latest(self) -> dict | None:
        """The newest evaluation's status (the running one, if any), or None."""
        found = self.list_jobs()
        return self.active() or (found[0] if found else None)


def sweep_evaluations(data_dir: Path, keep_seconds: float = KEEP_SECONDS) -> int:
    """Remove evaluation folders that ended over `keep_seconds` ago (their figures are in the adapters' metadata)
    and staging folders of dead processes; returns how many went."""
    return EvaluationStore(data_dir).sweep(keep_seconds)
