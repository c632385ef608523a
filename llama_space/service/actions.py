"""Fine-tuning and adapter operations, the same for the UI tabs, the named Gradio endpoints and REST.

Every failure is a UserError (or a subclass) that says what to fix; web/error_boundary.py shows it on each surface.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from llama_space import adapters
from llama_space.data import HubDataset, load_split, validate_any
from llama_space.errors import UserError
from llama_space.export import publish
from llama_space.inference import zerogpu
from llama_space.training.params import PRESETS, TrainingParams
from llama_space.training.registry import JOB_ID_IN_TEXT

if TYPE_CHECKING:
    from llama_space.inference.backend import ChatBackend
    from llama_space.service.permissions import Permissions
    from llama_space.training.runner import JobRunner

STATUS_KEYS = ["job_id", "state", "step", "total_steps", "loss", "eval_loss", "eta_seconds", "adapter", "error",
               "resumable", "checkpoint_step", "elapsed_seconds", "placement", "plan"]
NO_FILE = "Upload a dataset file first (JSON, JSONL, CSV or Parquet), or name a Hub dataset."
BOTH_SOURCES = "Give either a dataset file or a Hub dataset id, not both."


class Actions:
    """What a user can do besides chatting; changes (and handing out weights) pass `permissions` first."""

    def __init__(self, backend: ChatBackend, runner: JobRunner, permissions: Permissions) -> None:
        self.backend = backend
        self.runner = runner
        self.permissions = permissions
        self.settings = backend.settings

    @property
    def max_bytes(self) -> int:
        return self.settings.max_upload_mb * 2**20

    @contextmanager
    def dataset_file(self, file: str | None, hub: HubDataset | None = None) -> Iterator[str]:
        """The path of the training data: the uploaded file, or the Hub or ModelScope split written to a temporary
        JSONL file (a folder under data_dir/datasets/<owner>/<name> stands in for that Hub dataset; ModelScope
        datasets are downloaded into the app's cache)."""
        if file and hub:
            raise UserError(BOTH_SOURCES)
        if not hub:
            if not file:
                raise UserError(NO_FILE)
            yield file
            return
        scratch = Path(tempfile.mkdtemp(prefix="llama-space-hub-"))
        try:
            yield str(load_split(hub, scratch, self.max_bytes, Path(self.settings.data_dir) / "datasets",
                                 self.settings.cache_dir))
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def validate(self, file: str | None, max_length: int = TrainingParams.max_length,
                 hub: HubDataset | None = None) -> dict:
        """The validation report of an uploaded file or a Hub dataset: instruction or preference data (see
        llama_space.data.validate_any)."""
        with self.dataset_file(file, hub) as path:
            return validate_any(path, self.backend.tokenizer, int(max_length), max_bytes=self.max_bytes)

    @staticmethod
    def params(preset: str, values: dict) -> TrainingParams:
        """Preset values overridden by the given (non-empty) fields."""
        if preset not in PRESETS:
            raise UserError(f"Unknown preset {preset!r}; choose one of {', '.join(PRESETS)}.")
        given = {key: value for key, value in values.items() if value is not None and value != ""}
        return TrainingParams.preset(preset, **given)

    def start(self, file: str | None, adapter_name: str, params: TrainingParams,
              hub: HubDataset | None = None) -> str:
        """Launch a training job on an uploaded file or a Hub dataset (copied into the job); returns its id."""
        self.permissions.require_change()
        zerogpu.refuse_training(self.settings)
        adapters.validate_name(adapter_name)
        with self.dataset_file(file, hub) as path:
            return self.runner.start(path, adapter_name, params)

    def _shown(self, status: dict, keys: list[str] | None = None) -> dict:
        """A job status as users see it: the contract's `keys` (all by default), each text (error, log tail)
        without the server's paths."""
        hide = self.runner.registry.hide_paths
        picked = status if keys is None else {key: status.get(key) for key in keys}
        return {key: hide(value) if isinstance(value, str) else value for key, value in picked.items()}

    def status(self, job_id: str) -> dict:
        """The contract's job status fields for `job_id`."""
        self.permissions.require_job_access()
        return self._shown(self.runner.status(job_id), STATUS_KEYS)

    def jobs(self) -> list[dict]:
        """Every job's status, newest first."""
        self.permissions.require_job_access()
        return [self._shown(status) for status in self.runner.jobs()]

    def current(self, job_id: str = "") -> dict | None:
        """Full status (with metrics and log tail) of `job_id`, else of the running or newest job."""
        self.permissions.require_job_access()
        if not job_id:
            found = self.runner.active() or next(iter(self.runner.jobs()), None)
            if found is None:
                return None
            job_id = found["job_id"]
        return {**self._shown(self.runner.status(job_id)), "metrics": self.runner.metrics(job_id)}

    def cancel(self, job_id: str) -> dict:
        """Ask the job to stop within one optimizer step."""
        self.permissions.require_change()
        return self._shown(self.runner.cancel(job_id), STATUS_KEYS)

    def resume(self, job_id: str) -> dict:
        """Continue an interrupted job from its last complete checkpoint."""
        self.permissions.require_change()
        return self._shown(self.runner.resume(job_id), STATUS_KEYS)

    def adapter_names(self) -> list[str]:
        """Names of the adapters a chat may choose."""
        return self.backend.list_adapters()

    def list_adapters(self) -> list[dict]:
        """Every adapter on disk with its metadata; without the ids of the jobs that trained and evaluated it
        for those who may not see jobs."""
        found = adapters.describe(self.settings.adapters_dir)
        try:
            self.permissions.require_job_access()
        except UserError:
            return [_without_job_ids(item) for item in found]
        return found

    def delete_adapter(self, name: str) -> dict:
        """Unload and delete an adapter."""
        self.permissions.require_change()
        if name in adapters.BASE_NAMES:
            raise UserError("Choose an adapter to delete (the base model cannot be deleted).")
        adapters.own_folder(self.settings.adapters_dir, name)  # before unloading: a refusal changes nothing
        self.backend.unload_adapter(name)
        adapters.delete(self.settings.adapters_dir, name)
        return {"deleted": name}

    def zip(self, name: str) -> Path:
        """A zip of the adapter's files in a fresh temporary directory, for download (the same rule as delete:
        on an app anyone can reach, trained weights are not handed out to anyone)."""
        self.permissions.require_change()
        if not name:
            raise UserError("Choose an adapter to download.")
        return adapters.zip_adapter(self.settings.adapters_dir, name,
                                    Path(tempfile.mkdtemp(prefix="llama-space-zip-")))

    def push(self, name: str, repo_id: str, private: bool = True) -> str:
        """Upload an adapter to the Hugging Face Hub; returns its URL."""
        self.permissions.require_change()
        return publish.push_adapter(self.settings.adapters_dir, name, repo_id, private=private)


def _without_job_ids(metadata: dict) -> dict:
    """Adapter metadata without its training job's id, and its evaluation's source without a job id."""
    shown = {key: value for key, value in metadata.items() if key != "job_id"}
    evaluation = shown.get("evaluation")
    if isinstance(evaluation, dict) and isinstance(evaluation.get("source"), str):
        shown["evaluation"] = {**evaluation, "source": JOB_ID_IN_TEXT.sub("(private)", evaluation["source"])}
    return shown
