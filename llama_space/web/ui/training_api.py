"""Named Gradio endpoints for fine-tuning and adapters, each one call into service.actions.Actions.

Each is a typed Python function exposed with `gr.api`, so `view_api()` (and the MCP server) show every
parameter under its own name, with its type and default, and `gradio_client` can call it by keyword:
/validate_dataset(file, max_length=384, dataset_id=...), /start_training(file, adapter_name, preset="standard",
<every TrainingParams field>=None, dataset_id=...), /job_status(job_id), /cancel_training(job_id),
/resume_training(job_id), /list_adapters(), /delete_adapter(name).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from dataclasses import fields
from typing import TYPE_CHECKING, Any, get_type_hints

import gradio as gr
from gradio import FileData

from llama_space.data import hub_dataset
from llama_space.errors import UserError
from llama_space.training.params import PRESETS, TrainingParams
from llama_space.web.error_boundary import user_facing

if TYPE_CHECKING:
    from llama_space.service.actions import Actions

FILE_HELP = ("the instruction data (JSON, JSONL, CSV or Parquet), sent with gradio_client.handle_file(path); "
             "None when dataset_id names a Hub dataset")
DATASET_HELP = {
    "dataset_id": "a Hugging Face Hub dataset to use instead of a file, e.g. 'user/name' (HF_TOKEN on the "
                  "server opens private ones), or a ModelScope one, 'modelscope:user/name'",
    "dataset_config": "the Hub dataset's configuration (subset); empty for its default",
    "dataset_split": "the split to read, e.g. 'train' or 'test'",
    "dataset_revision": "a branch, tag or commit of the dataset; empty for the main branch (master on ModelScope)",
}
NOT_UPLOADED = "Send the dataset file with gradio_client.handle_file(path) (a plain path string is not accepted)."


def training_fields() -> list[tuple[str, Any]]:
    """Every TrainingParams field and its type, as declared (the order positional callers of /start_training
    rely on; a new field joins the endpoint by itself)."""
    hints = get_type_hints(TrainingParams)
    return [(f.name, hints[f.name]) for f in fields(TrainingParams)]


def field_help() -> dict[str, str]:
    """Each TrainingParams field's comment in training/params.py: one description for the UI, the API and MCP."""
    return dict(re.findall(r"^\s+(\w+): [^#\n]+#\s*(.+)$", inspect.getsource(TrainingParams), re.MULTILINE))


def uploaded_path(file: Any) -> str | None:
    """The server-side path of a file sent as Gradio FileData (Gradio has checked it is an upload of this app)."""
    if file is None or file == "":
        return None
    if isinstance(file, dict) and (file.get("meta") or {}).get("_type") == "gradio.FileData" and file.get("path"):
        return str(file["path"])
    raise UserError(NOT_UPLOADED)  # a raw path would let a client read any file on the server


def _typed(fn: Callable, params: list[inspect.Parameter], returns: Any, doc: str) -> Callable:
    """`fn(**arguments)` behind the signature `params`, so gr.api sees every name, type and default."""
    signature = inspect.Signature(params, return_annotation=returns)

    def endpoint(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        return fn(**bound.arguments)

    endpoint.__signature__ = signature
    endpoint.__annotations__ = {p.name: p.annotation for p in params} | {"return": returns}
    endpoint.__name__ = endpoint.__qualname__ = fn.__name__
    endpoint.__doc__ = doc
    return endpoint


def _args_doc(helps: dict[str, str]) -> str:
    return "\n".join(f"    {name}: {text}" for name, text in helps.items())


def start_training_endpoint(actions: Actions) -> Callable:
    """/start_training with one keyword parameter per TrainingParams field (None keeps the preset's value)."""
    plain = inspect.Parameter.POSITIONAL_OR_KEYWORD
    helps = field_help()
    params = [inspect.Parameter("file", plain, annotation=FileData | None),
              inspect.Parameter("adapter_name", plain, annotation=str),
              inspect.Parameter("preset", plain, default="standard", annotation=str)]
    params += [inspect.Parameter(name, plain, default=None, annotation=hint | None)
               for name, hint in training_fields()]
    params += [inspect.Parameter(name, plain, default="train" if name == "dataset_split" else "", annotation=str)
               for name in DATASET_HELP]

    def start_training(file, adapter_name, preset, dataset_id, dataset_config, dataset_split, dataset_revision,
                       **values) -> dict:
        source = hub_dataset(dataset_id, dataset_config, dataset_split, dataset_revision)
        return {"job_id": actions.start(uploaded_path(file), adapter_name, actions.params(preset, values), source)}

    doc = (f"Start a LoRA fine-tuning job on a dataset; returns {{\"job_id\"}} (poll it with job_status).\n\n"
           f"Args:\n    file: {FILE_HELP}\n"
           "    adapter_name: the name the trained adapter is published under (letters, digits, '-', '_', '.')\n"
           f"    preset: {' or '.join(PRESETS)}; the training parameters below override its values\n"
           + _args_doc({name: f"{helps.get(name, name)} (None: the preset's value)" for name, _ in training_fields()})
           + "\n" + _args_doc(DATASET_HELP))
    return _typed(start_training, params, dict, doc)


def register_training_api(actions: Actions) -> None:
    """The named endpoints of this module inside the current Blocks."""

    def validate_dataset(file: FileData | None, max_length: int = TrainingParams.max_length, dataset_id: str = "",
                         dataset_config: str = "", dataset_split: str = "train", dataset_revision: str = "") -> dict:
        """Check a dataset (a file or a Hub dataset) before training: per-row errors and warnings, token counts
        and a preview of what the model will learn. Instruction data (for method sft) and preference data (chosen
        and rejected replies, for dpo or orpo) are told apart by their columns: the report's kind says which.

        Args:
            file: the instruction data (JSON, JSONL, CSV or Parquet), sent with gradio_client.handle_file(path); None when dataset_id names a Hub dataset
            max_length: the token length rows are measured against (longer ones are truncated in training)
            dataset_id: a Hugging Face Hub dataset to check instead of a file, e.g. 'user/name', or a ModelScope one, 'modelscope:user/name'
            dataset_config: the Hub dataset's configuration (subset); empty for its default
            dataset_split: the split to read, e.g. 'train' or 'test'
            dataset_revision: a branch, tag or commit of the dataset; empty for the main branch (master on ModelScope)
        """
        source = hub_dataset(dataset_id, dataset_config, dataset_split, dataset_revision)
        return actions.validate(uploaded_path(file), max_length, source)

    def job_status(job_id: str) -> dict:
        """The state of a training job: state (queued, running, completed, failed, cancelled or interrupted),
        step, total_steps, loss, eval_loss, eta_seconds, adapter and error (server paths shown as <data>,
        <adapters>, ...). Only for those who may train: jobs come from private training data.

        Args:
            job_id: the id start_training returned
        """
        return actions.status(job_id)

    def cancel_training(job_id: str) -> dict:
        """Stop a queued, running or interrupted job (within one optimizer step); returns its status.

        Args:
            job_id: the id start_training returned
        """
        return actions.cancel(job_id)

    def resume_training(job_id: str) -> dict:
        """Continue an interrupted job from its last complete checkpoint; returns its status.

        Args:
            job_id: the id of the interrupted job
        """
        return actions.resume(job_id)

    def list_adapters() -> list[dict]:
        """Every trained adapter with its metadata (name, base_model, created, train_loss, eval_loss, steps,
        hyperparameters); pass a name as `adapter` to generate or chat to use it."""
        return actions.list_adapters()

    def delete_adapter(name: str) -> dict:
        """Unload and delete a trained adapter.

        Args:
            name: the adapter's name, as list_adapters shows it
        """
        return actions.delete_adapter(name)

    for fn in (validate_dataset, start_training_endpoint(actions), job_status, cancel_training, resume_training,
               list_adapters, delete_adapter):
        gr.api(user_facing(fn, f"running {fn.__name__}"), api_name=fn.__name__)
