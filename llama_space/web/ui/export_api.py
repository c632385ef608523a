"""Named Gradio endpoints for exports, each one call into service.export_actions.ExportActions.

/export_adapter(adapter, kind="merge", quantization="q8_0"), /export_status(export_id), /cancel_export(export_id),
/list_exports(), /push_to_hub(source, repo_id, private=True) and /download_export(export_id, file="") -> the file.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import gradio as gr

from llama_space.web.error_boundary import user_facing

if TYPE_CHECKING:
    from llama_space.service.export_actions import ExportActions


def download_path(exports: ExportActions, export_id: str, file: str = "") -> str:
    """The completed export's file (or its file named `file`), served from where it lies: copying an 8B model
    into Gradio's cache would take as long as the export (only files a permitted user asked for are served)."""
    path = exports.download(export_id, file)
    gr.set_static_paths([path])
    return str(path)


def download_paths(exports: ExportActions, export_id: str) -> list[str]:
    """Every file of the completed export, served from where they lie (see download_path)."""
    paths = exports.download_all(export_id)
    gr.set_static_paths(paths)
    return [str(path) for path in paths]


def register_export_api(exports: ExportActions) -> None:
    """Typed endpoints (gr.api) for scripts, plus /download_export on a hidden File (gr.api cannot return files)."""

    def export_adapter(adapter: str, kind: str = "merge", quantization: str = "q8_0") -> dict:
        """Start merging `adapter` into the base (kind "merge": safetensors), converting the merged model to GGUF
        (kind "gguf") or writing the adapter as a llama.cpp LoRA GGUF beside its base's GGUF (kind "gguf_adapter";
        the base's file is written once and reused) as a job; quantization (f16, bf16, q8_0, q4_0, q4_k_m, q5_k_m
        or q6_k) is the GGUF's, or the base's. Returns its status with export_id."""
        return exports.start_export(adapter, kind, quantization)

    def export_status(export_id: str) -> dict:
        """state (queued|running|completed|failed|cancelled|interrupted), stage, progress 0..1, files, error."""
        return exports.export_status(export_id)

    def cancel_export(export_id: str) -> dict:
        """Stop a queued or running export; its partial files are removed."""
        return exports.cancel_export(export_id)

    def list_exports() -> list[dict]:
        """Every export's status, newest first."""
        return exports.list_exports()

    def push_to_hub(source: str, repo_id: str, private: bool = True) -> dict:
        """Push an adapter (by name) or a completed export (by export_id) to the Hub repo `repo_id` with a model
        card; needs HF_TOKEN. Returns {url, repo_id, private}."""
        return exports.push(source, repo_id, private)

    for fn, what in ((export_adapter, "starting the export"), (export_status, "reading the export status"),
                     (cancel_export, "cancelling the export"), (list_exports, "listing exports"),
                     (push_to_hub, "pushing to the Hub")):
        gr.api(user_facing(fn, what), api_name=fn.__name__)
    with gr.Column(visible=False):
        export_id = gr.Textbox(label="export_id")
        name = gr.Textbox("", label="file")
        file = gr.File(label="file")
        trigger = gr.Button("download_export")

    def download_export(export_id: str, file: str = "") -> str:
        """The completed export's file: the merged model's zip, the GGUF file or the adapter GGUF; `file` names
        another of its files (the base GGUF of a gguf_adapter export, Modelfile, README.md)."""
        return download_path(exports, export_id, file)

    trigger.click(user_facing(download_export, "preparing the download"), inputs_kwargs={"export_id": export_id,
                  "file": name}, outputs=file, api_name="download_export")
