"""The Export tab: merge an adapter into its base or convert it to GGUF (merged, or the adapter beside its base's
GGUF) as a job, watch it, download it, push it."""

from __future__ import annotations

from typing import TYPE_CHECKING

import gradio as gr

from llama_space.export.gguf_types import QTYPES
from llama_space.web.error_boundary import user_facing
from llama_space.web.ui.export_api import download_paths, register_export_api

if TYPE_CHECKING:
    from llama_space.service.export_actions import ExportActions

POLL_SECONDS = 2.0
KIND_LABELS = [("Merged model (safetensors, for transformers / vLLM / TGI)", "merge"),
               ("GGUF + Ollama Modelfile (for llama.cpp / Ollama)", "gguf"),
               ("Adapter GGUF + base GGUF + Modelfile (llama.cpp --lora / Ollama ADAPTER; the base file is reused)",
                "gguf_adapter")]
GGUF_KINDS = ("gguf", "gguf_adapter")
# Bits a weight on Llama-3.1-8B (the K-quant mixes keep some tensors at Q6_K).
QTYPE_NOTES = {"f16": "16 bits", "bf16": "16 bits", "q8_0": "8.5 bits", "q4_0": "5.0 bits",
               "q4_k_m": "4.9 bits, Ollama's default", "q5_k_m": "5.7 bits", "q6_k": "6.6 bits"}


def status_markdown(status: dict | None) -> str:
    """What the tab shows about one export."""
    if not status:
        return "No export yet: choose an adapter and start one."
    what = f"{status['kind']}" + (f" ({status['quantization']})" if status.get("quantization") else "")
    line = f"**Export `{status['export_id']}`** · {what} of `{status['adapter']}` · **{status['state']}**"
    if status["state"] in ("queued", "running"):
        line += f" · {status.get('stage') or ''} {100 * (status.get('progress') or 0):.0f}%"
    parts = [line, f"Needs: {status.get('needs') or '?'}"]
    if status.get("elapsed_seconds") is not None:
        parts.append(f"Elapsed: {status['elapsed_seconds']:.0f} s")
    if status.get("files"):
        parts.append("Files: " + ", ".join(f"`{name}`" for name in status["files"]))
    if status.get("error"):
        parts.append(f"❌ {status['error']}")
    return "\n\n".join(parts)


def add_export_tab(exports: ExportActions) -> None:
    """The Export tab and the export endpoints."""
    with gr.Tab("Export", id="export"):
        build_export_tab(exports)
    register_export_api(exports)


def build_export_tab(exports: ExportActions) -> None:
    """Lay out the tab and wire its events; a timer shows the running (or latest) export, after a reload too."""
    allow = exports.permissions.controls_on
    if not allow:
        gr.Markdown(f"⚠️ {exports.permissions.disabled_reason}", elem_id="export-disabled")
    with gr.Row():
        adapter = gr.Dropdown(exports.adapter_names(), label="Adapter", elem_id="export-adapter")
        kind = gr.Radio(KIND_LABELS, value="merge", label="Export as", elem_id="export-kind")
        quantization = gr.Dropdown([(f"{q} ({QTYPE_NOTES[q]})", q) for q in QTYPES], value="q8_0",
                                   label="GGUF quantization", visible=False,
                                   info="The model's; for an adapter GGUF, its base's (the adapter itself is F16)",
                                   elem_id="export-quantization")
    with gr.Row():
        start = gr.Button("Start export", variant="primary", interactive=allow, elem_id="export-start")
        cancel = gr.Button("Cancel", interactive=allow, elem_id="export-cancel")
        download = gr.Button("Download", interactive=allow, elem_id="export-download")
    export_id = gr.State("")
    status_md = gr.Markdown(status_markdown(None), elem_id="export-status")
    file = gr.File(label="Download", file_count="multiple", interactive=False, elem_id="export-file")
    with gr.Row():
        repo_id = gr.Textbox(label="Hub repository (user/name)", placeholder="your-name/my-model")
        private = gr.Checkbox(True, label="Private")
        push_what = gr.Radio([("This export", "export"), ("The adapter", "adapter")], value="export",
                             label="Push")
        push = gr.Button("Push to Hub", interactive=allow, elem_id="export-push")
    message = gr.Markdown(elem_id="export-message")
    hidden = {"api_visibility": "private"}

    def on_start(adapter_name, export_kind, qtype):
        started = exports.start_export(adapter_name or "", export_kind, qtype)
        return started["export_id"], status_markdown(started)

    def poll(current):
        status = exports.current(current)
        return (status["export_id"] if status else ""), status_markdown(status)

    def on_push(current, adapter_name, what, repo, is_private):
        source = current if what == "export" else (adapter_name or "")
        return f"Pushed to {exports.push(source, repo, is_private)['url']}"

    adapter.focus(lambda: gr.Dropdown(choices=exports.adapter_names()), None, adapter, queue=False, **hidden)
    kind.change(lambda value: gr.Dropdown(visible=value in GGUF_KINDS), kind, quantization, queue=False, **hidden)
    start.click(user_facing(on_start, "starting the export"),
                inputs_kwargs={"adapter_name": adapter, "export_kind": kind, "qtype": quantization},
                outputs=[export_id, status_md], **hidden)
    cancel.click(user_facing(lambda current: status_markdown(exports.cancel_export(current)), "cancelling"),
                 export_id, status_md, **hidden)
    download.click(user_facing(lambda current: download_paths(exports, current), "preparing the download"),
                   export_id, file, **hidden)
    push.click(user_facing(on_push, "pushing to the Hub"),
               inputs_kwargs={"current": export_id, "adapter_name": adapter, "what": push_what, "repo": repo_id,
                              "is_private": private}, outputs=message, **hidden)
    gr.Timer(POLL_SECONDS).tick(user_facing(poll, "reading the export status"), export_id, [export_id, status_md],
                                queue=False, show_progress="hidden", **hidden)
