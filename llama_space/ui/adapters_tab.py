"""The Adapters tab: trained adapters with their metadata; delete, download as zip, push to the Hub."""

from __future__ import annotations

import tempfile
from typing import TYPE_CHECKING

import gradio as gr

from llama_space import adapters
from llama_space.errors import UserError

if TYPE_CHECKING:
    from llama_space.model_manager import ModelManager
    from llama_space.ui.training_api import TrainingActions

COLUMNS = ["name", "base_model", "created", "train_loss", "eval_loss", "steps", "lora_r", "dataset"]


def adapter_rows(manager: ModelManager) -> list[list]:
    """One table row per adapter on disk."""
    rows = []
    for item in adapters.describe(manager.settings.adapters_dir):
        hyper = item.get("hyperparameters") or {}
        rows.append([item.get("name"), item.get("base_model", ""), item.get("created", ""),
                     _round(item.get("train_loss")), _round(item.get("eval_loss")), item.get("steps", ""),
                     hyper.get("lora_r", item.get("r", "")), item.get("dataset_fingerprint", "")])
    return rows


def _round(value):
    return round(value, 4) if isinstance(value, float) else ("" if value is None else value)


def build_adapters_tab(actions: TrainingActions) -> gr.Dataframe:
    """Lay out the adapters tab; returns the table so other tabs can refresh it."""
    manager, allow_changes = actions.manager, actions.allow_changes
    table = gr.Dataframe(adapter_rows(manager), headers=COLUMNS, interactive=False, label="Adapters",
                         elem_id="adapters-table")
    with gr.Row():
        name = gr.Dropdown(manager.list_adapters(), label="Adapter", elem_id="adapter-pick",
                           allow_custom_value=False)
        refresh = gr.Button("Refresh", elem_id="adapters-refresh")
    with gr.Row():
        delete = gr.Button("Delete", variant="stop", interactive=allow_changes, elem_id="adapter-delete")
        download = gr.Button("Download .zip", elem_id="adapter-zip")
        zip_file = gr.File(label="Download", interactive=False)
    with gr.Row():
        repo_id = gr.Textbox(label="Hub repository (user/name)", placeholder="your-name/my-adapter")
        private = gr.Checkbox(True, label="Private")
        push = gr.Button("Push to Hub", interactive=allow_changes, elem_id="adapter-push")
    message = gr.Markdown(elem_id="adapters-message")
    hidden = {"api_visibility": "private"}

    def reload():
        return adapter_rows(manager), gr.Dropdown(choices=manager.list_adapters())

    def on_delete(adapter_name):
        try:
            actions.delete_adapter(adapter_name or "")
        except UserError as exc:
            raise gr.Error(str(exc)) from exc
        return (*reload(), f"Deleted adapter {adapter_name}.")

    def on_zip(adapter_name):
        try:
            return str(adapters.zip_adapter(manager.settings.adapters_dir, adapter_name or "",
                                            tempfile.mkdtemp(prefix="llama-space-zip-")))
        except UserError as exc:
            raise gr.Error(str(exc)) from exc

    def on_push(adapter_name, repo, is_private):
        try:
            url = actions.push(adapter_name or "", repo, is_private)
        except UserError as exc:
            raise gr.Error(str(exc)) from exc
        return f"Pushed {adapter_name} to {url}"

    refresh.click(reload, None, [table, name], **hidden)
    delete.click(on_delete, name, [table, name, message], **hidden)
    download.click(on_zip, name, zip_file, **hidden)
    push.click(on_push, [name, repo_id, private], message, **hidden)
    return table
