"""The Adapters tab: trained adapters in readable columns with details on demand; open one in Chat or Compare,
delete (after a confirmation), download as zip, push to the Hub."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import TYPE_CHECKING

import gradio as gr

from llama_space.web.error_boundary import user_facing
from llama_space.web.i18n import L, t

if TYPE_CHECKING:
    from llama_space.service.actions import Actions

COLUMNS = ("name", "base", "method", "trained_on", "size", "evaluation")
DETAILS = ("created", "lineage", "system_prompt", "train_loss", "eval_loss", "steps", "train_examples",
           "dataset_fingerprint", "job_id", "base_quantization", "hyperparameters", "evaluation")


def headers() -> list[str]:
    return [t(f"ad.col.{column}") for column in COLUMNS]


def _size(folder: Path) -> str:
    try:
        total = sum(p.stat().st_size for p in folder.iterdir() if p.is_file() and not p.is_symlink())
    except OSError:
        return ""
    return f"{total / 2**20:.1f} MB" if total >= 2**20 else f"{total / 2**10:.0f} KB"


def adapter_rows(actions: Actions) -> list[list]:
    """One table row per adapter on disk: name, base model, method, what it was trained on, size, evaluation."""
    rows = []
    for item in actions.list_adapters():
        hyper = item.get("hyperparameters") or {}
        dataset = item.get("dataset_name") or (item.get("dataset_fingerprint") or "")[:12] or "—"
        method = item.get("method") or hyper.get("method", "sft")
        rows.append([item.get("name"), Path(str(item.get("base_model", ""))).name or "—", method,
                     t("ad.trained_on", dataset=dataset, rows=item.get("train_examples", "?"),
                       steps=item.get("steps", "?")),
                     _size(Path(actions.settings.adapters_dir) / str(item.get("name"))),
                     _evaluation_cell(item.get("evaluation"))])
    return rows


def _evaluation_cell(evaluation) -> str:
    """The latest evaluation in a few words: the adapter's perplexity beside the base's, and on preference data its
    reward accuracy beside the base's."""
    if not isinstance(evaluation, dict):
        return t("ad.not_evaluated")
    base = evaluation.get("base") if isinstance(evaluation.get("base"), dict) else {}
    cell = t("ad.eval_cell", adapter=_figure(evaluation.get("perplexity")), base=_figure(base.get("perplexity")))
    if evaluation.get("reward_accuracy") is not None:
        cell += " · " + t("ad.eval_reward", adapter=_figure(evaluation.get("reward_accuracy")),
                          base=_figure(base.get("reward_accuracy")))
    return cell


def _figure(value) -> str:
    return f"{value:.4g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"


def lineage_text(metadata: dict) -> str:
    """Where an adapter comes from, oldest first: "sft-1 (sft) → dpo-2 (dpo)"; empty for a fresh one."""
    steps = metadata.get("lineage") if isinstance(metadata.get("lineage"), list) else []
    return " → ".join(f"{step.get('adapter')} ({step.get('method', 'sft')})" for step in steps
                      if isinstance(step, dict))


def details_html(actions: Actions, name: str) -> str:
    """Everything the adapter's metadata says, for the one chosen."""
    item = next((a for a in actions.list_adapters() if a.get("name") == name), None)
    if not item:
        return ""
    rows = []
    for key in DETAILS:
        value = lineage_text(item) if key == "lineage" else item.get(key)
        if value in (None, "", {}):
            continue
        text = json.dumps(value, ensure_ascii=False) if isinstance(value, (dict, list)) else str(value)
        rows.append(f"<tr><th>{html.escape(t(f'ad.detail.{key}'))}</th><td><code>{html.escape(text)}</code></td></tr>")
    return f"<table class='adapter-details'>{''.join(rows)}</table>"


def build_adapters_tab(actions: Actions):
    """Lay out the adapters tab; returns (reload function, its outputs, (Open in Chat, Compare, adapter choice))
    so selecting the tab refreshes it and the app can send the chosen adapter to the other tabs."""
    allow_changes = actions.permissions.controls_on
    empty = gr.Markdown(L("ad.empty"), elem_id="adapters-empty", visible=False)
    table = gr.Dataframe(interactive=False, label=L("ad.table"), elem_id="adapters-table", wrap=True, visible=False)
    with gr.Row():
        name = gr.Dropdown(actions.adapter_names(), value=None, label=L("ad.pick"), info=L("ad.pick_info"),
                           elem_id="adapter-pick", allow_custom_value=False, scale=2)
        refresh = gr.Button(L("common.refresh"), elem_id="adapters-refresh", scale=0, min_width=100)
    details = gr.HTML(elem_id="adapter-details")
    with gr.Row():
        open_chat = gr.Button(L("ad.open_chat"), elem_id="adapter-open-chat", min_width=120)
        compare = gr.Button(L("ad.compare"), elem_id="adapter-compare", min_width=120)
        download = gr.Button(L("ad.zip"), interactive=allow_changes, elem_id="adapter-zip", min_width=120)
        delete = gr.Button(L("ad.delete"), variant="stop", interactive=allow_changes, elem_id="adapter-delete",
                           min_width=120)
    with gr.Row(visible=False, elem_id="adapter-confirm") as confirm_row:
        confirm_text = gr.Markdown(elem_id="adapter-confirm-text")
        confirm = gr.Button(L("ad.confirm_yes"), variant="stop", elem_id="adapter-delete-confirm", min_width=120)
        keep = gr.Button(L("ad.confirm_no"), elem_id="adapter-delete-keep", min_width=120)
    zip_file = gr.File(label=L("common.download"), interactive=False, visible=False, elem_id="adapter-zip-file")
    with gr.Row():
        repo_id = gr.Textbox(label=L("common.hub_repo"), placeholder="your-name/my-adapter")
        private = gr.Checkbox(True, label=L("common.private"))
        push = gr.Button(L("common.push"), interactive=allow_changes, elem_id="adapter-push")
    message = gr.Markdown(elem_id="adapters-message")
    hidden = {"api_visibility": "private"}

    def reload():
        """The table with headers in the visitor's language, hidden (a line instead) when there is no adapter."""
        rows = adapter_rows(actions)
        return (gr.Dataframe(rows, headers=headers(), visible=bool(rows)), gr.Markdown(visible=not rows),
                gr.Dropdown(choices=actions.adapter_names()))

    def on_row(event: gr.SelectData):
        row = event.index[0] if isinstance(event.index, (list, tuple)) else event.index
        rows = adapter_rows(actions)
        return gr.Dropdown(value=rows[row][0]) if 0 <= row < len(rows) else gr.skip()

    def ask(adapter_name):
        if not adapter_name:
            raise gr.Error(t("ad.choose_first"))
        return gr.Row(visible=True), t("ad.confirm", name=f"**{adapter_name}**")

    def on_delete(adapter_name):
        actions.delete_adapter(adapter_name or "")
        return (*reload(), "", gr.Row(visible=False), t("ad.deleted", name=adapter_name))

    def on_zip(adapter_name):
        return gr.File(str(actions.zip(adapter_name or "")), visible=True)

    def on_push(adapter_name, repo, is_private):
        return t("ad.pushed", name=adapter_name, url=actions.push(adapter_name or "", repo, is_private))

    reload = user_facing(reload, "listing adapters")
    outputs = [table, empty, name]
    refresh.click(reload, None, outputs, **hidden)
    table.select(on_row, None, name, queue=False, **hidden)
    name.change(user_facing(lambda n: details_html(actions, n or ""), "reading the adapter"), name, details,
                queue=False, **hidden)
    delete.click(user_facing(ask), name, [confirm_row, confirm_text], queue=False, **hidden)
    keep.click(lambda: gr.Row(visible=False), None, confirm_row, queue=False, **hidden)
    confirm.click(user_facing(on_delete), name, [*outputs, details, confirm_row, message], **hidden)
    download.click(user_facing(on_zip), name, zip_file, **hidden)
    push.click(user_facing(on_push), inputs_kwargs={"adapter_name": name, "repo": repo_id, "is_private": private},
               outputs=message, **hidden)
    return reload, outputs, (open_chat, compare, name)
