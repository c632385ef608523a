"""The Fine-tune tab: upload (or name a Hub dataset) and validate data, set LoRA parameters, start/cancel/resume
and watch a job."""

from __future__ import annotations

import html
import math
from dataclasses import fields
from itertools import groupby
from typing import TYPE_CHECKING, Any

import gradio as gr

from llama_space.data import hub_dataset
from llama_space.errors import UserError
from llama_space.training.params import PLACEMENTS, QUANTIZATIONS, TRACKERS, TrainingParams, method_names
from llama_space.web.error_boundary import user_facing
from llama_space.web.i18n import L, core_text, t
from llama_space.web.strings import STRINGS
from llama_space.web.ui.feedback import build_feedback_panel
from llama_space.web.ui.jobs_view import job_view, no_job_view

if TYPE_CHECKING:
    from llama_space.service.actions import Actions
    from llama_space.service.feedback import Feedback

POLL_SECONDS = 1.0
# TrainingParams fields that most runs leave at the preset's value: the form does not offer them, /start_training
# does. The form offers every other field, as declared.
NOT_IN_FORM = ("target_modules", "save_steps", "gradient_checkpointing")
# The form's fields picked from a list (their values go into TrainingParams as they are); the others are numbers.
CHOICE_FIELDS = {"placement": PLACEMENTS, "quantization": QUANTIZATIONS, "report_to": TRACKERS,
                 "method": method_names()}
PROBLEM_COLUMNS = ("ft.col.kind", "ft.col.row", "ft.col.message")
# The form's text fields: the job's system prompt, and the adapter to continue from (a list of the adapters on disk,
# "" for a fresh LoRA).
TEXT_FIELDS = ("system_prompt", "from_adapter")
ESTIMATE_FIELDS = ("max_steps", "num_epochs", "batch_size", "grad_accum", "eval_fraction")


def status_line(ok: bool, text: str) -> str:
    """A status line marked by CSS (a plain-text marker, no emoji: not every browser has their font)."""
    return f"<div class='{'status-ok' if ok else 'status-error'}'><b>{html.escape(text)}</b></div>"


def _report_markdown(report: dict) -> str:
    stats = report.get("token_stats") or {}
    lines = [status_line(report["ok"], core_text(report["summary"])),
             t("ft.report_line", format=f"`{report['format']}`", kind=_data_kind(report), rows=report["rows"], valid=report["valid_rows"],
               skipped=report["skipped_rows"], duplicates=report["duplicates"], max_length=report["max_length"],
               too_long=report["too_long"])]
    if stats:
        lines.append(t("ft.tokens_line", min=stats["min"], median=stats["median"], p95=stats["p95"],
                       max=stats["max"], max_length=report["max_length"]))
    return "\n\n".join(lines)


def _data_kind(report: dict) -> str:
    kind = report.get("kind") or "instruction"
    return t(f"ft.data.{kind}") if f"ft.data.{kind}" in STRINGS else kind


def _problem_table(report: dict | None) -> gr.Dataframe:
    """The report's errors and warnings, hidden when there are none (no table of bare headers)."""
    items = [] if report is None else [("error", item) for item in report["errors"]] + [
        ("warning", item) for item in report["warnings"]]
    rows = [[t(f"ft.kind.{kind}"), item["row"] or "", core_text(item["message"])] for kind, item in items]
    return gr.Dataframe(rows, headers=[t(key) for key in PROBLEM_COLUMNS], visible=bool(rows))


def seconds_per_step(metrics: list[dict]) -> float | None:
    """A job's measured time per optimizer step, from the first and last logged steps (None before two)."""
    timed = [m for m in metrics if isinstance(m.get("time"), (int, float)) and isinstance(m.get("step"), int)]
    if len(timed) < 2 or timed[-1]["step"] <= timed[0]["step"]:
        return None
    return (timed[-1]["time"] - timed[0]["time"]) / (timed[-1]["step"] - timed[0]["step"])


def estimate_text(rows: int, values: dict, per_step: float | None) -> str:
    """Steps a run of `rows` trained rows will take with the form's `values`, and the time at `per_step`."""
    if not rows:
        return ""
    per_update = max(1, int(values.get("batch_size") or 1) * int(values.get("grad_accum") or 1))
    kept = max(1, round(rows * (1 - float(values.get("eval_fraction") or 0))))
    steps = int(values.get("max_steps") or 0) or max(1, math.ceil(
        math.ceil(kept / per_update) * float(values.get("num_epochs") or 1)))
    if per_step is None:
        return t("ft.estimate_unknown", steps=steps)
    minutes, seconds = divmod(round(steps * per_step), 60)
    took = t("job.minutes", minutes=minutes, seconds=seconds) if minutes else t("job.seconds", seconds=seconds)
    return t("ft.estimate", steps=steps, time=took, source=t("ft.estimate_measured"))


def field_label(name: str):
    """A setting's label and help line, by its TrainingParams name (a field without strings shows its name)."""
    if f"field.{name}" not in STRINGS:
        return {"label": name.replace("_", " ")}
    return {"label": L(f"field.{name}"), "info": L(f"help.{name}") if f"help.{name}" in STRINGS else None}


def form_values(preset: str) -> dict[str, Any]:
    """The form's fields with preset `preset`'s values, by name (an unset number shows as 0, which TrainingParams
    reads as unset)."""
    params = TrainingParams.preset(preset)
    return {f.name: getattr(params, f.name) if f.name in CHOICE_FIELDS or f.name in TEXT_FIELDS
            else getattr(params, f.name) or 0 for f in fields(TrainingParams) if f.name not in NOT_IN_FORM}


def _field(name: str, value, adapter_names: list[str]) -> gr.Component:
    """The form's field for TrainingParams field `name`, with its label and help line."""
    layout = {"elem_id": f"param-{name}", "min_width": 160, **field_label(name)}
    if name in CHOICE_FIELDS:
        return gr.Dropdown(list(CHOICE_FIELDS[name]), value=value, **layout)
    if name == "system_prompt":
        return gr.Textbox(value, lines=2, **layout)
    if name == "from_adapter":
        return gr.Dropdown([(L("ft.fresh_lora"), ""), *((n, n) for n in adapter_names)], value="", **layout)
    return gr.Number(value, **layout)


def _training_form(adapter_names: list[str]) -> dict[str, gr.Component]:
    """A field per form value, by TrainingParams name and in its order, each with its help line: the numbers, the
    lists and the text fields, two to a row (a row holds fields of one kind)."""
    values = form_values("standard")
    form: dict[str, gr.Component] = {}
    kind = {**dict.fromkeys(CHOICE_FIELDS, "list"), **dict.fromkeys(TEXT_FIELDS, "text")}
    for _, group in groupby(values, key=lambda name: kind.get(name, "number")):
        names = list(group)
        for row in range(0, len(names), 2):
            with gr.Row():
                form |= {name: _field(name, values[name], adapter_names) for name in names[row:row + 2]}
    return form


def _hub_fields() -> dict[str, gr.Textbox]:
    """Dataset id, configuration, split and revision of a Hub dataset, named as the API's dataset_* parameters."""
    with gr.Row():
        named = {"dataset_id": gr.Textbox(label=L("ft.hub_id"), placeholder=L("ft.hub_id_ph"),
                                          elem_id="hub-dataset-id", scale=2),
                 "dataset_config": gr.Textbox(label=L("ft.hub_config"), placeholder=L("ft.hub_config_ph"),
                                              elem_id="hub-dataset-config")}
    with gr.Row():
        named |= {"dataset_split": gr.Textbox("train", label=L("ft.hub_split"), elem_id="hub-dataset-split"),
                  "dataset_revision": gr.Textbox(label=L("ft.hub_revision"), placeholder="main",
                                                 elem_id="hub-dataset-revision")}
    return named


def build_finetune_tab(actions: Actions, feedback: Feedback | None = None):
    """Lay out the tab (with the collected feedback's panel when `feedback` is given) and wire its events; returns
    the job poller for the page-load hook."""
    allow_changes = actions.permissions.controls_on
    if not allow_changes:  # a function: Gradio renders it on each page load, in that visitor's language
        gr.Markdown(lambda: f"<div class='status-error'>{html.escape(core_text(actions.permissions.disabled_reason))}"
                            "</div>", elem_id="training-disabled")
    with gr.Row():
        with gr.Column():
            upload = gr.File(label=L("ft.upload"), file_types=[
                ".json", ".jsonl", ".csv", ".parquet"], elem_id="dataset-upload")
            with gr.Accordion(L("ft.hub"), open=False):
                hub = _hub_fields()
                load_hub = gr.Button(L("ft.hub_load"), elem_id="hub-dataset-load")
            report_md = gr.Markdown(elem_id="dataset-report")
            problems = gr.Dataframe(interactive=False, label=L("ft.problems"), elem_id="dataset-problems",
                                    visible=False)
            preview = gr.HTML(elem_id="dataset-preview")
        with gr.Column():
            adapter_name = gr.Textbox(label=L("ft.adapter_name"), placeholder="my-adapter",
                                      info=L("ft.adapter_name_info"), elem_id="adapter-name")
            preset = gr.Radio([(L("ft.preset.standard"), "standard"), (L("ft.preset.quick"), "quick")],
                              value="standard", label=L("ft.preset"), info=L("ft.preset_info"), elem_id="preset")
            with gr.Accordion(L("ft.settings"), open=True, elem_id="training-settings"):
                form = _training_form(actions.adapter_names())
            estimate = gr.Markdown(elem_id="training-estimate")
            with gr.Row():
                start = gr.Button(L("ft.start"), variant="primary", interactive=allow_changes,
                                  elem_id="start-training")
                cancel = gr.Button(L("common.cancel"), elem_id="cancel-training", interactive=False)
                resume = gr.Button(L("ft.resume"), elem_id="resume-training", interactive=False)
            # The job beside Start: its progress, loss plot and log.
            progress_html = gr.HTML(elem_id="job-progress")
            loss_plot = gr.LinePlot(x="step", y="loss", color="series", elem_id="loss-plot", height=260,
                                    visible=False, x_title=L("job.axis.step"), y_title=L("job.plot_title"))
            log_tail = gr.Textbox(label=L("job.log"), lines=8, max_lines=8, interactive=False, elem_id="job-log",
                                  autoscroll=True)
    job_id = gr.State("")
    used = build_feedback_panel(feedback, upload, form["method"]) if feedback is not None else []
    hidden = {"api_visibility": "private"}
    max_length = form["max_length"]
    locked = [upload, adapter_name, preset, *form.values()]  # the form, read-only while a job runs

    def on_check(max_length, file=None, dataset_id=None, dataset_config="", dataset_split="train",
                 dataset_revision=""):
        """The report of the uploaded file, or of the Hub dataset the hub fields name (the Hub button sends them
        and no file: that dataset alone is checked); nothing once the file is removed."""
        if file is None and dataset_id is None:
            return "", _problem_table(None), "", 0
        try:
            source = hub_dataset(dataset_id, dataset_config, dataset_split, dataset_revision)
            report = actions.validate(file, max_length or TrainingParams.max_length, source)
        except UserError as exc:
            return status_line(False, core_text(str(exc))), _problem_table(None), "", 0
        return (_report_markdown(report), _problem_table(report), "".join(report["preview"]),
                report["valid_rows"] if report["ok"] else 0)

    def on_start(file, adapter_name, preset, dataset_id, dataset_config, dataset_split, dataset_revision,
                 **values):
        params = actions.params(preset, values)
        source = hub_dataset(dataset_id, dataset_config, dataset_split, dataset_revision)
        started = actions.start(file, adapter_name, params, source)
        gr.Info(t("ft.started", job=started))
        return started

    def on_preset(preset):
        return {form[name]: value for name, value in form_values(preset).items()}

    def controls(status: dict | None) -> tuple:
        """Start and the form only while no job runs; Cancel with a running job, Resume with a stopped one."""
        running = bool(status) and status.get("state") in ("queued", "running")
        stopped = bool(status) and status.get("state") in ("cancelled", "interrupted", "failed")
        return (gr.Button(interactive=allow_changes and not running), gr.Button(interactive=allow_changes and running),
                gr.Button(interactive=allow_changes and stopped),
                *(gr.update(interactive=not running) for _ in locked))

    def poll(current):
        try:
            status = actions.current(current)
        except UserError as exc:  # a visitor who may not see jobs: the panel says why, every poll alike
            return "", *no_job_view(core_text(str(exc))), *controls(None)
        if not status:
            return "", *no_job_view(), *controls(None)
        return status["job_id"], *job_view(status), *controls(status)

    on_check = user_facing(on_check, "checking the dataset")
    poll = user_facing(poll, "reading the job status")
    rows = gr.State(0)  # the rows the checked data trains on

    def on_estimate(trained: int, **values):
        """Steps and time before starting: the time per step measured by the latest job on this device."""
        try:
            latest = actions.current("")
        except UserError:
            latest = None
        return estimate_text(trained, values, seconds_per_step((latest or {}).get("metrics") or []))

    report_outputs = [report_md, problems, preview, rows]
    estimated = [form[name] for name in ESTIMATE_FIELDS if name in form]
    for event in (rows.change, *(field.change for field in estimated)):
        event(user_facing(on_estimate, "estimating the run"),
              inputs_kwargs={"trained": rows, **{name: form[name] for name in ESTIMATE_FIELDS if name in form}},
              outputs=estimate, queue=False, **hidden)
    for event in (upload.upload, max_length.submit):
        event(on_check, inputs_kwargs={"file": upload, "max_length": max_length}, outputs=report_outputs, **hidden)
    for event in used:  # the feedback put into the upload: checked like an uploaded file
        event.then(on_check, inputs_kwargs={"file": upload, "max_length": max_length}, outputs=report_outputs,
                   **hidden)
    load_hub.click(on_check, inputs_kwargs={"max_length": max_length, **hub}, outputs=report_outputs, **hidden)
    preset.change(on_preset, preset, list(form.values()), queue=False, **hidden)
    form["from_adapter"].focus(lambda: gr.Dropdown(choices=[(t("ft.fresh_lora"), ""), *(
        (n, n) for n in actions.adapter_names())]), None,
                               form["from_adapter"], queue=False, **hidden)
    start.click(user_facing(on_start), inputs_kwargs={"file": upload, "adapter_name": adapter_name,
                                                      "preset": preset, **hub, **form}, outputs=job_id, **hidden)
    cancel.click(user_facing(actions.cancel), job_id, None, **hidden)
    resume.click(user_facing(lambda current: actions.resume(current)["job_id"], "resuming the job"), job_id, job_id, **hidden)
    outputs = [job_id, progress_html, loss_plot, log_tail, start, cancel, resume, *locked]
    gr.Timer(POLL_SECONDS).tick(poll, job_id, outputs, queue=False, show_progress="hidden", **hidden)
    return poll, job_id, outputs
