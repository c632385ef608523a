"""The Adapters tab: trained adapters with their metadata; delete, download as zip, push to the Hub."""

from __future__ import annotations

from typing import TYPE_CHECKING

import gradio as gr

from llama_space.web.error_boundary import user_facing

if TYPE_CHECKING:
    from llama_space.service.actions import Actions

# The last columns show the latest evaluation (service/evaluate.py): the adapter's figure, the base's beside it.
EVALUATION_COLUMNS = {"loss (base)": "loss", "perplexity (base)": "perplexity", "exact match (base)": "exact_match",
                      "contains (base)": "contains", "reward accuracy (base)": "reward_accuracy",
                      "reward margin (base)": "reward_margin"}
COLUMNS = ["name", "base_model", "created", "method", "lineage", "system prompt", "train_loss", "eval_loss", "steps",
           "lora_r", "dataset", "evaluated on", *EVALUATION_COLUMNS]


def adapter_rows(actions: Actions) -> list[list]:
    """One table row per adapter on disk."""
    rows = []
    for item in actions.list_adapters():
        hyper = item.get("hyperparameters") or {}
        rows.append([item.get("name"), item.get("base_model", ""), item.get("created", ""),
                     item.get("method", "sft"), lineage_text(item), item.get("system_prompt", ""),
                     _round(item.get("train_loss")), _round(item.get("eval_loss")), item.get("steps", ""),
                     hyper.get("lora_r", item.get("r", "")), item.get("dataset_fingerprint", ""),
                     *_evaluation_cells(item.get("evaluation"))])
    return rows


def lineage_text(metadata: dict) -> str:
    """Where an adapter comes from, oldest first: "sft-1 (sft) → dpo-2 (dpo)"; empty for a fresh one."""
    steps = metadata.get("lineage") if isinstance(metadata.get("lineage"), list) else []
    return " → ".join(f"{step.get('adapter')} ({step.get('method', 'sft')})" for step in steps
                      if isinstance(step, dict))


def _round(value):
    return round(value, 4) if isinstance(value, float) else ("" if value is None else value)


def _evaluation_cells(evaluation) -> list[str]:
    """"evaluated on", then "adapter (base)" per figure; blanks when never evaluated."""
    if not isinstance(evaluation, dict):
        return [""] * (1 + len(EVALUATION_COLUMNS))
    base = evaluation.get("base") if isinstance(evaluation.get("base"), dict) else {}
    return [str(evaluation.get("source", "")),
            *(f"{_figure(evaluation.get(key))} ({_figure(base.get(key))})" for key in EVALUATION_COLUMNS.values())]


def _figure(value) -> str:
    return f"{value:.4g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"


def build_adapters_tab(actions: Actions):
    """Lay out the adapters tab; returns (reload function, its outputs) so selecting the tab refreshes it."""
    allow_changes = actions.permissions.controls_on
    table = gr.Dataframe(adapter_rows(actions), headers=COLUMNS, interactive=False, label="Adapters",
                         elem_id="adapters-table")
    with gr.Row():
        name = gr.Dropdown(actions.adapter_names(), label="Adapter", elem_id="adapter-pick",
                           allow_custom_value=False)
        refresh = gr.Button("Refresh", elem_id="adapters-refresh")
    with gr.Row():
        delete = gr.Button("Delete", variant="stop", interactive=allow_changes, elem_id="adapter-delete")
        download = gr.Button("Download .zip", interactive=allow_changes, elem_id="adapter-zip")
        zip_file = gr.File(label="Download", interactive=False)
    with gr.Row():
        repo_id = gr.Textbox(label="Hub repository (user/name)", placeholder="your-name/my-adapter")
        private = gr.Checkbox(True, label="Private")
        push = gr.Button("Push to Hub", interactive=allow_changes, elem_id="adapter-push")
    message = gr.Markdown(elem_id="adapters-message")
    hidden = {"api_visibility": "private"}

    def reload():
        return adapter_rows(actions), gr.Dropdown(choices=actions.adapter_names())

    def on_delete(adapter_name):
        actions.delete_adapter(adapter_name or "")
        return (*reload(), f"Deleted adapter {adapter_name}.")

    def on_zip(adapter_name):
        return str(actions.zip(adapter_name or ""))

    def on_push(adapter_name, repo, is_private):
        return f"Pushed {adapter_name} to {actions.push(adapter_name or '', repo, is_private)}"

    reload = user_facing(reload, "listing adapters")
    refresh.click(reload, None, [table, name], **hidden)
    delete.click(user_facing(on_delete), name, [table, name, message], **hidden)
    download.click(user_facing(on_zip), name, zip_file, **hidden)
    push.click(user_facing(on_push), inputs_kwargs={"adapter_name": name, "repo": repo_id, "is_private": private},
               outputs=message, **hidden)
    return reload, [table, name]
