"""The Fine-tune tab: upload (or name a Hub dataset) and validate data, set LoRA parameters, start/cancel/resume
and watch a job."""

from __future__ import annotations

from typing import TYPE_CHECKING

import gradio as gr

from llama_space.data import hub_dataset
from llama_space.errors import UserError
from llama_space.service.actions import PARAM_FIELDS
from llama_space.training.params import PLACEMENTS, QUANTIZATIONS, TRACKERS, TrainingParams
from llama_space.web.errors import user_facing
from llama_space.web.ui.jobs_view import job_view, no_job_view

if TYPE_CHECKING:
    from llama_space.service.actions import Actions

POLL_SECONDS = 1.0
# Training parameters picked from a list, with their labels; their values go into TrainingParams as they are.
CHOICE_FIELDS = {"placement": (PLACEMENTS, "Placement (auto: the memory planner picks)"),
                 "quantization": (QUANTIZATIONS, "Base quantization (nf4 = QLoRA)"),
                 "report_to": (TRACKERS, "Experiment tracking")}


def _report_markdown(report: dict) -> str:
    stats = report.get("token_stats") or {}
    lines = [f"**{'✅' if report['ok'] else '❌'} {report['summary']}**", "",
             f"Format: `{report['format']}` · rows: {report['rows']} · trained: {report['valid_rows']} · "
             f"skipped: {report['skipped_rows']} · duplicates: {report['duplicates']} · "
             f"longer than max length ({report['max_length']}): {report['too_long']}"]
    if stats:
        lines.append(f"Tokens per row: min {stats['min']} · median {stats['median']} · p95 {stats['p95']} · "
                     f"max {stats['max']} (max length {report['max_length']})")
    return "\n\n".join(lines)


def _problem_rows(report: dict) -> list[list]:
    rows = [["error", item["row"] or "", item["message"]] for item in report["errors"]]
    rows += [["warning", item["row"] or "", item["message"]] for item in report["warnings"]]
    return rows


def _preset_values(name: str) -> list:
    params = TrainingParams.preset(name)
    return [getattr(params, field) or 0 for field in PARAM_FIELDS] + [getattr(params, f) for f in CHOICE_FIELDS]


def _hub_fields() -> list[gr.Textbox]:
    """Dataset id, configuration, split and revision of a Hub dataset (the dataset_* parameters of the API)."""
    with gr.Row():
        fields = [gr.Textbox(label="Hub dataset id", placeholder="owner/name", elem_id="hub-dataset-id", scale=2),
                  gr.Textbox(label="Configuration", placeholder="default", elem_id="hub-dataset-config")]
    with gr.Row():
        fields += [gr.Textbox("train", label="Split", elem_id="hub-dataset-split"),
                   gr.Textbox(label="Revision", placeholder="main", elem_id="hub-dataset-revision")]
    return fields


def build_finetune_tab(actions: Actions):
    """Lay out the tab and wire its events; returns the job poller for the page-load hook."""
    allow_changes = actions.permissions.controls_on
    if not allow_changes:
        gr.Markdown(f"⚠️ {actions.permissions.disabled_reason}", elem_id="training-disabled")
    with gr.Row():
        with gr.Column():
            upload = gr.File(label="Instruction data (JSON, JSONL, CSV or Parquet)", file_types=[
                ".json", ".jsonl", ".csv", ".parquet"], elem_id="dataset-upload")
            with gr.Accordion("…or a dataset from the Hugging Face Hub", open=False):
                hub = _hub_fields()
                load_hub = gr.Button("Check the Hub dataset", elem_id="hub-dataset-load")
            report_md = gr.Markdown(elem_id="dataset-report")
            problems = gr.Dataframe(headers=["kind", "row", "message"], interactive=False,
                                    label="Problems", elem_id="dataset-problems")
            preview = gr.HTML(elem_id="dataset-preview")
        with gr.Column():
            adapter_name = gr.Textbox(label="Adapter name", placeholder="my-adapter", elem_id="adapter-name")
            preset = gr.Radio(["standard", "quick"], value="standard", label="Preset", elem_id="preset")
            inputs = []
            defaults = list(zip(PARAM_FIELDS, _preset_values("standard")))
            for row in range(0, len(defaults), 3):
                with gr.Row():
                    inputs += [gr.Number(value, label=field.replace("_", " "), elem_id=f"param-{field}",
                                         min_width=100) for field, value in defaults[row:row + 3]]
            with gr.Row():
                inputs += [gr.Dropdown(list(choices), value=getattr(TrainingParams(), field), label=label,
                                       elem_id=f"param-{field}", min_width=100)
                           for field, (choices, label) in CHOICE_FIELDS.items()]
            with gr.Row():
                start = gr.Button("Start training", variant="primary", interactive=allow_changes,
                                  elem_id="start-training")
                cancel = gr.Button("Cancel", elem_id="cancel-training", interactive=allow_changes)
                resume = gr.Button("Resume", elem_id="resume-training", interactive=allow_changes)
    job_id = gr.State("")
    progress_html = gr.HTML(elem_id="job-progress")
    loss_plot = gr.LinePlot(x="step", y="loss", color="series", title="Loss", elem_id="loss-plot", height=260,
                            visible=False)
    log_tail = gr.Textbox(label="Log", lines=8, max_lines=8, interactive=False, elem_id="job-log")
    hidden = {"api_visibility": "private"}
    max_length = inputs[PARAM_FIELDS.index("max_length")]

    fields = PARAM_FIELDS + list(CHOICE_FIELDS)

    def on_upload(file, length, *hub_values):
        """The report of the uploaded file or (hub_values given) of the Hub dataset they name."""
        if file is None and not hub_values:
            return "", [], ""
        try:
            source = hub_dataset(*hub_values) if hub_values else None
            report = actions.validate(file, length or TrainingParams.max_length, source)
        except UserError as exc:
            return f"**❌ {exc}**", [], ""
        return _report_markdown(report), _problem_rows(report), "".join(report["preview"])

    def on_start(file, name, preset_name, *values):
        params, hub_values = dict(zip(fields, values)), values[len(fields):]
        started = actions.start(file, name, actions.params(preset_name, params), hub_dataset(*hub_values))
        gr.Info(f"Training job {started} started.")
        return started

    def poll(current):
        try:
            status = actions.current(current)
        except UserError as exc:  # a visitor who may not see jobs: the panel says why, every poll alike
            return "", *no_job_view(str(exc))
        return (status["job_id"], *job_view(status)) if status else ("", *no_job_view())

    on_upload = user_facing(on_upload, "checking the dataset")
    poll = user_facing(poll, "reading the job status")
    report_outputs = [report_md, problems, preview]
    upload.upload(on_upload, [upload, max_length], report_outputs, **hidden)
    max_length.submit(on_upload, [upload, max_length], report_outputs, **hidden)
    load_hub.click(lambda length, *values: on_upload(None, length, *values), [max_length, *hub], report_outputs,
                   **hidden)  # the Hub dataset alone, whether or not a file is uploaded too
    preset.change(_preset_values, preset, inputs, queue=False, **hidden)
    start.click(user_facing(on_start), [upload, adapter_name, preset, *inputs, *hub], job_id, **hidden)
    cancel.click(user_facing(actions.cancel), job_id, None, **hidden)
    resume.click(user_facing(lambda current: actions.resume(current)["job_id"], "resuming the job"), job_id, job_id, **hidden)
    outputs = [job_id, progress_html, loss_plot, log_tail]
    gr.Timer(POLL_SECONDS).tick(poll, job_id, outputs, queue=False, show_progress="hidden", **hidden)
    return poll, job_id, outputs
