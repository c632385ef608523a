"""Fine-tuning and adapter operations shared by the UI tabs and the named API endpoints.

Endpoints (parameter names are part of the API contract): /validate_dataset(file),
/start_training(file, adapter_name, preset, ...training params...), /job_status(job_id),
/cancel_training(job_id), /resume_training(job_id), /list_adapters(), /delete_adapter(name).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import gradio as gr

from llama_space import adapters, oauth
from llama_space.data import validate_file
from llama_space.errors import UserError
from llama_space.training.params import PRESETS, TrainingParams

if TYPE_CHECKING:
    from llama_space.model_manager import ModelManager
    from llama_space.training.runner import JobRunner

# The training parameters offered in the UI and the API, in this order.
PARAM_FIELDS = ["learning_rate", "num_epochs", "max_steps", "batch_size", "grad_accum", "max_length",
                "lora_r", "lora_alpha", "lora_dropout", "eval_fraction", "seed"]
STATUS_KEYS = ["job_id", "state", "step", "total_steps", "loss", "eval_loss", "eta_seconds", "adapter", "error",
               "resumable", "checkpoint_step", "elapsed_seconds"]


class TrainingActions:
    """What the Fine-tune and Adapters tabs and the API can do; every failure is a UserError."""

    def __init__(self, manager: ModelManager, runner: JobRunner, allow_changes: bool = True,
                 disabled_reason: str = "") -> None:
        self.manager = manager
        self.runner = runner
        self.allow_changes = allow_changes
        self.disabled_reason = disabled_reason

    def _require_changes_allowed(self) -> None:
        if not self.allow_changes:
            raise UserError(self.disabled_reason)
        if not self.manager.settings.changes_allowed:  # on only through an HF OAuth login (ui/__init__.py)
            oauth.check_oauth_change()

    def validate(self, file: str | None, max_length: int = TrainingParams.max_length) -> dict:
        """The validation report of an uploaded dataset (see llama_space.data.validate_file)."""
        if not file:
            raise UserError("Upload a dataset file first (JSON, JSONL, CSV or Parquet).")
        return validate_file(file, self.manager.tokenizer, int(max_length),
                             max_bytes=self.manager.settings.max_upload_mb * 2**20)

    def params(self, preset: str, values: dict) -> TrainingParams:
        """Preset values overridden by the given (non-empty) fields."""
        if preset not in PRESETS:
            raise UserError(f"Unknown preset {preset!r}; choose one of {', '.join(PRESETS)}.")
        given = {key: value for key, value in values.items() if value is not None and value != ""}
        return TrainingParams.preset(preset, **given)

    def start(self, file: str | None, adapter_name: str, params: TrainingParams) -> str:
        """Launch a training job; returns its id."""
        self._require_changes_allowed()
        if not file:
            raise UserError("Upload a dataset file first (JSON, JSONL, CSV or Parquet).")
        adapters.validate_name(adapter_name)
        return self.runner.start(file, adapter_name, params)

    def status(self, job_id: str) -> dict:
        """The contract's job status fields for `job_id`."""
        status = self.runner.status(job_id)
        return {key: status.get(key) for key in STATUS_KEYS}

    def current(self, job_id: str = "") -> dict | None:
        """Full status (with metrics and log tail) of `job_id`, else of the running or newest job."""
        if not job_id:
            found = self.runner.active() or next(iter(self.runner.jobs()), None)
            if found is None:
                return None
            job_id = found["job_id"]
        return {**self.runner.status(job_id), "metrics": self.runner.metrics(job_id)}

    def cancel(self, job_id: str) -> dict:
        """Ask the job to stop within one optimizer step."""
        self._require_changes_allowed()
        return {key: value for key, value in self.runner.cancel(job_id).items() if key in STATUS_KEYS}

    def resume(self, job_id: str) -> dict:
        """Continue an interrupted job from its last complete checkpoint."""
        self._require_changes_allowed()
        return {key: value for key, value in self.runner.resume(job_id).items() if key in STATUS_KEYS}

    def list_adapters(self) -> list[dict]:
        """Every adapter on disk with its metadata."""
        return adapters.describe(self.manager.settings.adapters_dir)

    def delete_adapter(self, name: str) -> dict:
        """Unload and delete an adapter."""
        self._require_changes_allowed()
        if name in adapters.BASE_NAMES:
            raise UserError("Choose an adapter to delete (the base model cannot be deleted).")
        self.manager.unload_adapter(adapters.validate_name(name))
        adapters.delete(self.manager.settings.adapters_dir, name)
        return {"deleted": name}

    def zip(self, name: str) -> Path:
        """A zip of the adapter's files in a fresh temporary directory, for download."""
        return adapters.zip_adapter(self.manager.settings.adapters_dir, name,
                                    Path(tempfile.mkdtemp(prefix="llama-space-zip-")))

    def push(self, name: str, repo_id: str, private: bool = True) -> str:
        """Upload an adapter to the Hugging Face Hub; returns its URL."""
        self._require_changes_allowed()
        return adapters.push_to_hub(self.manager.settings.adapters_dir, name, repo_id, private=private)


def as_gradio_error(fn):
    """Wrap `fn` so a UserError reaches the user (UI or API client) as a gr.Error with its text."""
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            raise gr.Error(str(exc)) from exc
    wrapper.__name__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    return wrapper


def register_training_api(actions: TrainingActions) -> None:
    """Named endpoints for scripts, built on hidden components inside the current Blocks."""
    with gr.Column(visible=False):
        file = gr.File(label="file")
        adapter_name = gr.Textbox(label="adapter_name")
        preset = gr.Textbox("quick", label="preset")
        values = [gr.Number(None, label=field) for field in PARAM_FIELDS]
        job_id = gr.Textbox(label="job_id")
        name = gr.Textbox(label="name")
        result = gr.JSON()
        triggers = {api: gr.Button(api) for api in ("validate_dataset", "start_training", "job_status",
                                                     "cancel_training", "resume_training", "list_adapters",
                                                     "delete_adapter")}

    def start_training(path, adapter, preset_name, *numbers):
        params = actions.params(preset_name, dict(zip(PARAM_FIELDS, numbers)))
        return {"job_id": actions.start(path, adapter, params)}

    wiring = {
        "validate_dataset": (lambda path: actions.validate(path), [file]),
        "start_training": (start_training, [file, adapter_name, preset, *values]),
        "job_status": (actions.status, [job_id]),
        "cancel_training": (actions.cancel, [job_id]),
        "resume_training": (actions.resume, [job_id]),
        "list_adapters": (lambda: actions.list_adapters(), []),
        "delete_adapter": (actions.delete_adapter, [name]),
    }
    for api_name, (fn, inputs) in wiring.items():
        triggers[api_name].click(as_gradio_error(fn), inputs, result, api_name=api_name)
