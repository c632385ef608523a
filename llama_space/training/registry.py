"""Training jobs on disk: data_dir/jobs/<job_id>/ holds each job's config, data copy, status, metrics and log.

The store (jobs.store) is the source of truth across app restarts. What training adds: preparing a job checks
the adapter name and tokenizes the data before anything is written; a job's status says whether it can be
resumed and from which checkpoint; a cancelled job's checkpoints go. A shared job (trained in a thread of the
app, training.shared_runs) is gone when the app that ran it is, or, in this process, when its thread has ended.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from llama_space import adapters
from llama_space.errors import UserError
from llama_space.jobs import files as jobfiles
from llama_space.jobs.privacy import hide_paths, server_places
from llama_space.jobs.store import JobKind, JobStore
from llama_space.model.source import base_model_name, resolve_model
from llama_space.training import checkpoints
from llama_space.training.job_config import TrainingJobConfig
from llama_space.training.params import TrainingParams

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from llama_space.settings import Settings

TRAINING = JobKind(noun="training job", folder="jobs", log_file=jobfiles.LOG_FILE)
JOB_ID_IN_TEXT = re.compile(r"\b\d{8}-\d{6}-[0-9a-f]{6}\b")


class JobRegistry(JobStore):
    """Creates training job folders and reads their status, reconciled with the processes that run them."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings.data_dir, TRAINING)
        self.settings = settings
        self._tokenizers: dict[str, PreTrainedTokenizerBase] = {}
        self._places = server_places(settings)

    def hide_paths(self, text: str) -> str:
        """`text` (a job's log or error) without this server's absolute paths (see jobs.privacy)."""
        return hide_paths(text, self._places)

    def _tokenizer(self) -> PreTrainedTokenizerBase:
        from transformers import AutoTokenizer

        source = resolve_model(self.settings.model, self.settings.cache_dir)
        if source not in self._tokenizers:
            self._tokenizers[source] = AutoTokenizer.from_pretrained(source, token=os.environ.get("HF_TOKEN"))
        return self._tokenizers[source]

    def create(self, dataset_path: str | Path, adapter_name: str, params: TrainingParams,
               plan: dict | None = None) -> str:
        """Prepare a job and put it in place at once (nothing launches it); return its id."""
        job_id = self.prepare(dataset_path, adapter_name, params, plan)
        self.commit(job_id)
        return job_id

    def prepare(self, dataset_path: str | Path, adapter_name: str, params: TrainingParams,
                plan: dict | None = None) -> str:
        """Validate the name and the data and write the whole job folder under its staging name; return the id.

        `plan` (the memory planner's choice: placement, quantization, estimate, reason) goes into job.json and
        the status; without one the job runs in its own process.

        This is the slow part of a start (tokenizing, copying up to max_upload_mb), done before anything is
        locked; the folder stays out of every listing until `commit` puts it in place, or `discard` drops it.
        """
        from llama_space.data import dataset_fingerprint
        from llama_space.training.methods import get_method

        adapters_dir = Path(self.settings.adapters_dir).resolve()
        if adapters.adapter_path(adapters_dir, adapter_name).exists():
            raise UserError(adapters.exists_message(adapter_name))
        if params.from_adapter:  # before tokenizing: a missing parent or one of another base is refused at once
            adapters.lineage_of(adapters_dir, params.from_adapter, base_model_name(self.settings.model))
            if not params.system_prompt:  # a continued adapter keeps the prompt it was trained with
                params = dataclasses.replace(params, system_prompt=adapters.trained_system_prompt(
                    adapters_dir, params.from_adapter))
        dataset = Path(dataset_path)
        if not dataset.is_file():
            raise UserError(f"Dataset file {dataset.name!r} not found; upload it again.")
        max_bytes = self.settings.max_upload_mb * 2**20
        examples = get_method(params.method).build_examples(dataset, self._tokenizer(), params, max_bytes)
        job_id, copy = self.new_id(), "dataset" + dataset.suffix.lower()
        # The dataset copy goes in before job.json: the config records the copy's fingerprint.
        staging = self.staging(job_id)
        try:
            staging.mkdir(parents=True)
            shutil.copyfile(dataset, staging / copy)
            fingerprint = dataset_fingerprint(staging / copy)
        except OSError as exc:  # disk full, quota, permissions: leave no half-made job behind
            self.discard(job_id)
            raise UserError(f"Could not copy the dataset into the job folder "
                            f"({exc.strerror or 'input/output error'}); no job was created.") from exc
        config = TrainingJobConfig(
            job_id=job_id, model=self.settings.model, base_model=base_model_name(self.settings.model),
            cache_dir=str(Path(self.settings.cache_dir).resolve()), adapters_dir=str(adapters_dir),
            adapter=adapter_name, dataset=copy, dataset_name=dataset.name, dataset_fingerprint=fingerprint,
            examples=len(examples), max_bytes=max_bytes, params=params, plan=plan)
        self.write_job(job_id, config.to_dict(), {
            "adapter": adapter_name, "plan": plan, "placement": (plan or {}).get("placement", "process"),
            "step": 0, "total_steps": None, "loss": None, "eval_loss": None, "eta_seconds": None}, commit=False)
        return job_id

    def read_config(self, job_id: str) -> TrainingJobConfig:
        """The job's configuration, checked (UserError naming what is wrong with a damaged or hand-edited one)."""
        job_dir = self.job_dir(job_id)
        return TrainingJobConfig.read(job_dir)

    def in_thread(self, status: dict) -> bool:
        return status.get("placement") == "shared"  # jobs written before runs_in existed say so this way

    def damaged_keys(self) -> tuple[str, ...]:
        return ("adapter",)

    def clean_up(self, job_dir: Path, state: str) -> None:
        if state == "cancelled":  # nothing left to resume from
            shutil.rmtree(job_dir / jobfiles.CHECKPOINTS_DIR, ignore_errors=True)

    def derived(self, job_dir: Path, status: dict) -> dict:
        latest = checkpoints.latest(job_dir / jobfiles.CHECKPOINTS_DIR)
        return {**super().derived(job_dir, status), "resumable": status.get("state") == "interrupted",
                "checkpoint_step": checkpoints.step_of(latest) if latest else None}
