"""The Export tab: merge an adapter into its base or convert it to GGUF (merged, or the adapter beside its base's
GGUF) as a job, watch it, download it, push it."""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

import gradio as gr

from llama_space.export.gguf_types import QTYPES
from llama_space.web.error_boundary import user_facing
from llama_space.web.i18n import L, core_text, t
from llama_space.web.strings import STRINGS
from llama_space.web.ui.export_api import download_paths, register_export_api

if TYPE_CHECKING:
    from llama_space.service.export_actions import ExportActions

POLL_SECONDS = 2.0
KINDS = ("merge", "gguf", "gguf_adapter")
GGUF_KINDS = ("gguf", "gguf_adapter")  # those that take a quantization: the model's, or the base's
# Bits a weight on Llama-3.1-8B (the K-quant mixes keep some tensors at Q6_K).
QTYPE_BITS = {"f16": "16", "bf16": "16", "q8_0": "8.5", "q4_0": "5.0", "q4_k_m": "4.9", "q5_k_m": "5.7", "q6_k": "6.6"}
DEFAULT_QTYPE = "q4_k_m"  # Ollama's


def _qtype_label(qtype: str) -> str:
    return f"{qtype} ({t('ex.bits_default' if qtype == DEFAULT_QTYPE else 'ex.bits', bits=QTYPE_BITS[qtype])})"


def _state(state) -> str:
    return t(f"ex.state.{state}") if f"ex.state.{state}" in STRINGS else str(state)


def status_markdown(status: dict | None) -> str:
    """What the tab shows about one export (a progress bar while it runs)."""
    if not status:
        return f"<div class='export-none'>{html.escape(t('ex.none'))}</div>"  # built for a request (its language)
    what = t(f"ex.what.{status['kind']}") if f"ex.what.{status['kind']}" in STRINGS else str(status["kind"])
    what += f" ({status['quantization']})" if status.get("quantization") else ""
    head = t("ex.heading", id=f"<code>{html.escape(status['export_id'])}</code>", what=html.escape(what),
             adapter=f"<code>{html.escape(status['adapter'])}</code>",
             state=f"<b class='export-state' data-state='{html.escape(status['state'])}'>"
                   f"{html.escape(_state(status['state']))}</b>")
    parts = [f"<div>{head}</div>"]
    if status["state"] in ("queued", "running"):
        done = 100 * (status.get("progress") or 0)
        parts.append(f"<progress class='export-bar' value='{done:.0f}' max='100' style='width:100%'></progress>"
                     f"<div>{html.escape(core_text(status.get('stage') or ''))} {done:.0f}%</div>")
    parts.append(f"<div>{html.escape(t('ex.needs', needs=core_text(status.get('needs') or '?')))}</div>")
    if status.get("elapsed_seconds") is not None:
        parts.append(f"<div>{html.escape(t('ex.elapsed', seconds=round(status['elapsed_seconds'])))}</div>")
    if status.get("files"):
        parts.append(f"<div>{html.escape(t('ex.file_list', files=', '.join(status['files'])))}</div>")
    if status.get("error"):
        parts.append(f"<div class='status-error'>{html.escape(core_text(status['error']))}</div>")
    return "".join(parts)


def add_export_tab(exports: ExportActions) -> None:
    """The Export tab and the export endpoints."""
    with gr.Tab(L("tab.export"), id="export"):
        build_export_tab(exports)
        # Inside the tab: gr.api adds (invisible) blocks, which gr.Tabs takes only inside a tab.
        register_export_api(exports)


def build_export_tab(exports: ExportActions) -> None:
    """Lay out the tab and wire its events; a timer shows the running (or latest) export, after a reload too."""
    allow = exports.permissions.controls_on
    if not allow:  # a function: Gradio renders it on each page load, in that visitor's language
        gr.Markdown(lambda: f"<div class='status-error'>{html.escape(core_text(exports.permissions.disabled_reason))}"
                            "</div>", elem_id="export-disabled")
    with gr.Row():
        adapter = gr.Dropdown(exports.adapter_names(), value=None, label=L("common.adapter"),
                              elem_id="export-adapter")
        kind = gr.Radio([(L(f"ex.kind.{k}"), k) for k in KINDS], value="merge", label=L("ex.kind"),
                        elem_id="export-kind")
        quantization = gr.Dropdown([(q, q) for q in QTYPES], value="q8_0", label=L("ex.quantization"),
                                   info=L("ex.quantization_info"), visible=False, elem_id="export-quantization")
    needs = gr.Markdown(L("ex.needs_unknown"), elem_id="export-needs")
    with gr.Row():
        start = gr.Button(L("ex.start"), variant="primary", interactive=allow, elem_id="export-start")
        cancel = gr.Button(L("common.cancel"), interactive=False, elem_id="export-cancel")
        download = gr.Button(L("ex.download"), interactive=False, elem_id="export-download")
    export_id = gr.State("")
    status_md = gr.HTML("<div class='export-none'>" + L("ex.none") + "</div>", elem_id="export-status")
    files = gr.File(label=L("ex.files"), file_count="multiple", interactive=False, visible=False,
                    elem_id="export-file")
    with gr.Row():
        repo_id = gr.Textbox(label=L("common.hub_repo"), placeholder="your-name/my-model")
        private = gr.Checkbox(True, label=L("common.private"))
        push_what = gr.Radio([(L("ex.push.export"), "export"), (L("ex.push.adapter"), "adapter")], value="export",
                             label=L("ex.push_what"))
        push = gr.Button(L("common.push"), interactive=allow, elem_id="export-push")
    message = gr.Markdown(elem_id="export-message")
    hidden = {"api_visibility": "private"}

    def controls(status: dict | None) -> tuple:
        running = bool(status) and status["state"] in ("queued", "running")
        return (gr.Button(interactive=allow and not running), gr.Button(interactive=allow and running),
                gr.Button(interactive=allow and bool(status) and status["state"] == "completed"))

    def on_needs(adapter_name, export_kind, qtype):
        text = exports.needs(adapter_name or "", export_kind, qtype)
        return t("ex.needs", needs=core_text(text)) if text else t("ex.needs_unknown")

    def on_start(adapter_name, export_kind, qtype):
        started = exports.start_export(adapter_name or "", export_kind, qtype)
        return started["export_id"], status_markdown(started), *controls(started)

    def poll(current):
        status = exports.current(current)
        return (status["export_id"] if status else ""), status_markdown(status), *controls(status)

    def on_download(current):
        return gr.File(download_paths(exports, current), visible=True)

    def on_push(current, adapter_name, what, repo, is_private):
        source = current if what == "export" else (adapter_name or "")
        return t("ex.pushed", url=exports.push(source, repo, is_private)["url"])

    adapter.focus(lambda: gr.Dropdown(choices=exports.adapter_names()), None, adapter, queue=False, **hidden)
    kind.change(lambda value: gr.Dropdown(visible=value in GGUF_KINDS,
                                          choices=[(_qtype_label(q), q) for q in QTYPES]), kind, quantization,
                queue=False, **hidden)
    for event in (adapter.change, kind.change, quantization.change):
        event(user_facing(on_needs, "estimating the export"),
              inputs_kwargs={"adapter_name": adapter, "export_kind": kind, "qtype": quantization}, outputs=needs,
              **hidden)
    controls_out = [start, cancel, download]
    start.click(user_facing(on_start, "starting the export"),
                inputs_kwargs={"adapter_name": adapter, "export_kind": kind, "qtype": quantization},
                outputs=[export_id, status_md, *controls_out], **hidden)
    cancel.click(user_facing(lambda current: status_markdown(exports.cancel_export(current)), "cancelling"),
                 export_id, status_md, **hidden)
    download.click(user_facing(on_download, "preparing the download"), export_id, files, **hidden)
    push.click(user_facing(on_push, "pushing to the Hub"),
               inputs_kwargs={"current": export_id, "adapter_name": adapter, "what": push_what, "repo": repo_id,
                              "is_private": private}, outputs=message, **hidden)
    gr.Timer(POLL_SECONDS).tick(user_facing(poll, "reading the export status"), export_id,
                                [export_id, status_md, *controls_out], queue=False, show_progress="hidden", **hidden)
