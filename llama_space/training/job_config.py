"""A training job's configuration (job.json): typed, and checked when read back.

The runner writes it once when the job is created; the training process, the held-out evaluation split and a
resumed job read it back. A hand-written job.json (see training.train) may leave out what has a default.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from llama_space import adapters
from llama_space.errors import UserError
from llama_space.jobs import files as jobfiles
from llama_space.training.params import TrainingParams

_REQUIRED = ("adapter", "dataset", "adapters_dir", "cache_dir")


@dataclass(frozen=True)
class TrainingJobConfig:
    """What one training job trains, on what, and where it publishes the adapter."""

    adapter: str  # the adapter's name in adapters_dir
    dataset: str  # the data file: relative to the job folder (the runner's copy) or absolute
    adapters_dir: str
    cache_dir: str  # where the base model is (or is downloaded to)
    model: str = ""  # the base model id or folder ("" = the embedded model)
    base_model: str = ""  # its name as adapters record it (derived from model when left out)
    job_id: str = ""  # the job folder's name when left out
    dataset_name: str = ""  # the file's name as uploaded
    dataset_fingerprint: str = ""  # hash of the data (computed when left out)
    examples: int | None = None  # trainable rows found when the job was created
    max_bytes: int = 0  # the largest data file the job may read (the data package's default when 0)
    params: TrainingParams = dataclasses.field(default_factory=TrainingParams)
    plan: dict | None = None  # the memory planner's choice (placement, quantization, figures, reason)

    def to_dict(self) -> dict:
        """The JSON form written to job.json."""
        return {**{f.name: getattr(self, f.name) for f in dataclasses.fields(self)}, "params": self.params.to_dict()}

    @classmethod
    def from_dict(cls, data: dict, job_dir: Path) -> TrainingJobConfig:
        """Check `data` (job.json's object) and fill in what a hand-written one may leave out; UserError naming
        the fields that are missing or of the wrong type."""
        from llama_space.data import DEFAULT_MAX_BYTES, dataset_fingerprint
        from llama_space.model.source import base_model_name

        missing = [key for key in _REQUIRED if key not in data]
        if missing:
            raise UserError(f"{Path(job_dir) / jobfiles.JOB_FILE} lacks {', '.join(missing)}")
        known = {f.name: f for f in dataclasses.fields(cls)}
        values = {key: value for key, value in data.items() if key in known}
        for key in (*_REQUIRED, "model", "base_model", "job_id", "dataset_name", "dataset_fingerprint"):
            if key in values and not isinstance(values[key], str):
                raise UserError(f"{jobfiles.JOB_FILE}: {key} must be text, got {values[key]!r}")
        for key in ("examples", "max_bytes"):
            value = values.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise UserError(f"{jobfiles.JOB_FILE}: {key} must be a whole number, got {value!r}")
        if not isinstance(values.get("plan") or {}, dict):
            raise UserError(f"{jobfiles.JOB_FILE}: plan must be an object, got {values['plan']!r}")
        params = values.get("params") or {}
        if not isinstance(params, dict):
            raise UserError(f"{jobfiles.JOB_FILE}: params must be an object, got {params!r}")
        adapters.validate_name(values["adapter"])
        config = cls(**{**values, "params": TrainingParams.from_dict(params)})
        dataset = config.dataset_path(job_dir)
        return dataclasses.replace(
            config, base_model=config.base_model or base_model_name(config.model),
            job_id=config.job_id or Path(job_dir).name, max_bytes=config.max_bytes or DEFAULT_MAX_BYTES,
            dataset_name=config.dataset_name or dataset.name,
            dataset_fingerprint=config.dataset_fingerprint or dataset_fingerprint(dataset))

    @classmethod
    def read(cls, job_dir: Path) -> TrainingJobConfig:
        """The checked configuration of the job in `job_dir` (DamagedJobFile when it is not JSON)."""
        return cls.from_dict(jobfiles.read_json(Path(job_dir) / jobfiles.JOB_FILE), job_dir)

    def dataset_path(self, job_dir: Path) -> Path:
        """The data file (an absolute `dataset` stays as it is)."""
        return Path(job_dir) / self.dataset

    @property
    def placement(self) -> str:
        """Where the job runs: shared, or process (also for jobs written before placements existed)."""
        return (self.plan or {}).get("placement") or "process"
