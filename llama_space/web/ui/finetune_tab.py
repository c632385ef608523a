"""The Fine-tune tab: upload (or name a Hub dataset) and validate data, set LoRA parameters, start/cancel/resume
and watch a job."""

from __future__ import annotations

from dataclasses import fields
from typing import TYPE_CHECKING, Any

import gradio as gr

from llama_space.data import hub_dataset
from llama_space.errors import UserError
from llama_space.training.methods import METHODS
from llama_space.training.params import PLACEMENTS, QUANTIZATIONS, TRACKERS, TrainingParams, method_names
from llama_space.web.error_boundary import user_facing
from llama_space.web.ui.feedback import build_feedback_panel
from llama_space.web.ui.jobs_view import job_view, no_job_view

if TYPE_CHECKING:
    from llama_space.service.actions import Actions

POLL_SECONDS = 1.0
# TrainingParams fields that most runs leave at the preset's value: the form does not offer them, /start_training
# does. The form offers every other field, as declared.
NOT_IN_FORM = ("target_modules", "save_steps", "gradient_checkpointing")
# The form's fields picked from a list, with their labels (their values go into TrainingParams as they are); the
# others are numbers.
CHOICE_FIELDS = {"placement": (PLACEMENTS, "Placement (auto: the memory planner picks)"),
                 "quantization": (QUANTIZATIONS, "Base quantization (nf4 = QLoRA)"),
                 "report_to": (TRACKERS, "Experiment tracking"),
                 "method": (method_names(), "Training method")}
# The form's text fields, with their labels: the job's system prompt, and the adapter to continue from (a list of the
# adapters on disk, "" for a fresh LoRA).
TEXT_FIELDS = {"system_prompt": "System prompt for rows without one (chat with the adapter uses it by default)",
               "from_adapter": "Continue from adapter (empty: a fresh LoRA)"}


def _report_markdown(report: dict) -> str:
    stats = report.get("token_stats") or {}
    lines = [f"**{'✅' if report['ok'] else '❌'} {report['summary']}**", "",
             (f"Format: `{report['format']}` ({report.get('kind', 'instruction')} data) · rows: {report['rows']} · trained: {report['valid_rows']} · "
              f"skipped: {report['skipped_rows']} · duplicates: {report['duplicates']} · "
              f"longer than max length ({report['max_length']}): {report['too_long']}")]
    if stats:
        lines.append(f"Tokens per row: min {stats['min']} · median {stats['median']} · p95 {stats['p95']} · "
                     f"max {stats['max']} (max length {report['max_length']})")
    return "\n\n".join(lines)


def _problem_rows(report: dict) -> list[list]:
    rows = [["error", item["row"] or "", item["message"]] for item in report["errors"]]
    rows += [["warning", item["row"] or "", item["message"]] for item in report["warnings"]]
    return rows


def form_values(preset: str) -> dict[str, Any]:
    """The form's fields with preset `preset`'s values, by name (an unset number shows as 0, which TrainingParams
    reads as unset)."""
    params = TrainingParams.preset(preset)
    return {f.name: getattr(params, f.name) if f.name in CHOICE_FIELDS or f.name in TEXT_FIELDS
            else getattr(params, f.name) or 0 for f in fields(TrainingParams) if f.name not in NOT_IN_FORM}


def _methods_info() -> str:
    """What each training method does and trains on, for the method list's help line."""
    return " · ".join(f"{m.name}: {m.description}; trains on {m.accepts}" for m in METHODS.values())


def _training_form(adapter_names: list[str]) -> dict[str, gr.Component]:
    """A field per form value, by TrainingParams name: the numbers three to a row, the lists in one row, then the
    system prompt and the adapter to continue from."""
    values = form_values("standard")
    numbers = [name for name in values if name not in CHOICE_FIELDS and name not in TEXT_FIELDS]
    form: dict[str, gr.Component] = {}
    for row in range(0, len(numbers), 3):
        with gr.Row():
            form |= {name: gr.Number(values[name], label=name.replace("_", " "), elem_id=f"param-{name}",
                                     min_width=100) for name in numbers[row:row + 3]}
    with gr.Row():
        form |= {name: gr.Dropdown(list(CHOICE_FIELDS[name][0]), value=values[name], label=CHOICE_FIELDS[name][1],
                                   info=_methods_info() if name == "method" else None, elem_id=f"param-{name}",
                                   min_width=100)
                 for name in values if name in CHOICE_FIELDS}
    form["system_prompt"] = gr.Textbox(values["system_prompt"], label=TEXT_FIELDS["system_prompt"], lines=2,
                                       elem_id="param-system_prompt")
    form["from_adapter"] = gr.Dropdown(["", *adapter_names], value="", label=TEXT_FIELDS["from_adapter"],
                                       elem_id="param-from_adapter")
    return form


def _hub_fields() -> dict[str, gr.Textbox]:
    """Dataset id, configuration, split and revision of a Hub dataset, named as the API's dataset_* parameters."""
    with gr.Row():
        named = {"dataset_id": gr.Textbox(label="Dataset id", placeholder="owner/name or modelscope:owner/name",
                                          elem_id="hub-dataset-id", scale=2),
                 "dataset_config": gr.Textbox(label="Configuration", placeholder="default",
                                              elem_id="hub-dataset-config")}
    with gr.Row():
        named |= {"dataset_split": gr.Textbox("train", label="Split", elem_id="hub-dataset-split"),
                  "dataset_revision": gr.Textbox(label="Revision", placeholder="main",
                                                 elem_id="hub-dataset-revision")}
    return named


def build_finetune_tab(actions: Actions, feedback=None):
    """Lay out the tab and wire its events; returns the job poller for the page-load hook."""
    allow_changes = actions.permissions.controls_on
    if not allow_changes:
        gr.Markdown(f"⚠️ {actions.permissions.disabled_reason}", elem_id="training-disabled")
    with gr.Row():
        with gr.Column():
            upload = gr.File(label="Instruction or preference data (JSON, JSONL, CSV or Parquet)", file_types=[
                ".json", ".jsonl", ".csv", ".parquet"], elem_id="dataset-upload")
            with gr.Accordion("…or a dataset from the Hugging Face Hub or ModelScope", open=False):
                hub = _hub_fields()
                load_hub = gr.Button("Check the Hub dataset", elem_id="hub-dataset-load")
            report_md = gr.Markdown(elem_id="dataset-report")
            problems = gr.Dataframe(headers=["kind", "row", "message"], interactive=False,
                                    label="Problems", elem_id="dataset-problems")
            preview = gr.HTML(elem_id="dataset-preview")
        with gr.Column():
            adapter_name = gr.Textbox(label="Adapter name", placeholder="my-adapter", elem_id="adapter-name")
            preset = gr.Radio(["standard", "quick"], value="standard", label="Preset", elem_id="preset")
            form = _training_form(actions.adapter_names())
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
    used = build_feedback_panel(feedback, upload, form["method"]) if feedback is not None else []
    hidden = {"api_visibility": "private"}
    max_length = form["max_length"]

    def on_check(max_length, file=None, dataset_id=None, dataset_config="", dataset_split="train",
                 dataset_revision=""):
        """The report of the uploaded file, or of the Hub dataset the hub fields name (the Hub button sends them
        and no file: that dataset alone is checked); nothing once the file is removed."""
        if file is None and dataset_id is None:
            return "", [], ""
        try:
            source = hub_dataset(dataset_id, dataset_config, dataset_split, dataset_revision)
            report = actions.validate(file, max_length or TrainingParams.max_length, source)
        except UserError as exc:
            return f"**❌ {exc}**", [], ""
        return _report_markdown(report), _problem_rows(report), "".join(report["preview"])

    def on_start(file, adapter_name, preset, dataset_id, dataset_config, dataset_split, dataset_revision,
                 **values):
        params = actions.params(preset, values)
        source = hub_dataset(dataset_id, dataset_config, dataset_split, dataset_revision)
        started = actions.start(file, adapter_name, params, source)
        gr.Info(f"Training job {started} started.")
        return started

    def on_preset(preset):
        return {form[name]: value for name, value in form_values(preset).items()}

    def poll(current):
        try:
            status = actions.current(current)
        except UserError as exc:  # a visitor who may not see jobs: the panel says why, every poll alike
            return "", *no_job_view(str(exc))
        return (status["job_id"], *job_view(status)) if status else ("", *no_job_view())

    on_check = user_facing(on_check, "checking the dataset")
    poll = user_facing(poll, "reading the job status")
    report_outputs = [report_md, problems, preview]
    for event in (upload.upload, max_length.submit):
        event(on_check, inputs_kwargs={"file": upload, "max_length": max_length}, outputs=report_outputs, **hidden)
    for event in used:  # the feedback put into the upload: checked like an uploaded file
        event.then(on_check, inputs_kwargs={"file": upload, "max_length": max_length}, outputs=report_outputs,
                   **hidden)
    load_hub.click(on_check, inputs_kwargs={"max_length": max_length, **hub}, outputs=report_outputs, **hidden)
    preset.change(on_preset, preset, list(form.values()), queue=False, **hidden)
    form["from_adapter"].focus(lambda: gr.Dropdown(choices=["", *actions.adapter_names()]), None,
                               form["from_adapter"], queue=False, **hidden)
    start.click(user_facing(on_start), inputs_kwargs={"file": upload, "adapter_name": adapter_name,
                                                      "preset": preset, **hub, **form}, outputs=job_id, **hidden)
    cancel.click(user_facing(actions.cancel), job_id, None, **hidden)
    resume.click(user_facing(lambda current: actions.resume(current)["job_id"], "resuming the job"), job_id, job_id, **hidden)
    outputs = [job_id, progress_html, loss_plot, log_tail]
    gr.Timer(POLL_SECONDS).tick(poll, job_id, outputs, queue=False, show_progress="hidden", **hidden)
    return poll, job_id, outputs
