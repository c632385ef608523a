"""How a training job's status looks in the UI: progress bar, loss plot (raw points, a smoothed line, eval loss),
and the log with the app's own lines."""

from __future__ import annotations

import html
import re

import gradio as gr
import pandas as pd

from llama_space.web.i18n import core_text, t

# Library noise in a job's log: Python's warning lines (the message line and the `warnings.warn(` source line
# under it) and tracebacks' file lines are left out; the app's own lines and errors stay.
LOG_NOISE = re.compile(r"warnings\.warn\(|^\s*warnings\.warn|UserWarning|FutureWarning|DeprecationWarning|"
                       r"^\s+File \"|^\s*$")
SMOOTHING = 0.6  # exponential moving average weight of the previous smoothed value


def _eta(seconds) -> str:
    if not isinstance(seconds, (int, float)):
        return "—"
    minutes, secs = divmod(int(seconds), 60)
    return t("job.minutes", minutes=minutes, seconds=secs) if minutes else t("job.seconds", seconds=secs)


def _state(state) -> str:
    key = f"job.state.{state}"
    try:
        return t(key)
    except KeyError:
        return str(state)


def progress_html(status: dict) -> str:
    """A progress bar with state, step, loss, time left and any error."""
    step, total = status.get("step") or 0, status.get("total_steps") or 0
    percent = 100 * step / total if total else 0
    loss = status.get("loss")
    state = html.escape(str(status.get("state")))
    parts = [(f"<b class='job-heading' data-job='{html.escape(str(status.get('job_id', '')))}'>"
              f"{html.escape(t('job.heading', job=status.get('job_id', '')))}</b> · "
              f"<span class='job-state' data-state='{state}'>{html.escape(_state(status.get('state')))}</span>"),
             t("job.step", step=f"<span class='job-step'>{step}</span>", total=total),
             t("job.loss", loss=f"{loss:.4f}" if isinstance(loss, (int, float)) else "—")]
    if isinstance(status.get("eval_loss"), (int, float)):
        parts.append(t("job.eval_loss", loss=f"{status['eval_loss']:.4f}"))
    if status.get("state") in ("queued", "running"):
        parts.append(t("job.eta", eta=_eta(status.get("eta_seconds"))))
    bar = (f"<progress class='job-bar' value='{step}' max='{max(total, 1)}' style='width:100%'></progress>"
           f"<div>{' · '.join(parts)} ({percent:.0f}%)</div>")
    bar += plan_html(status.get("plan"))
    if status.get("adapter") and status.get("state") == "completed":
        bar += (f"<div class='job-ready status-ok'>"
                f"{t('job.ready', adapter='<b>' + html.escape(status['adapter']) + '</b>')}</div>")
    if status.get("tracking"):
        where = f"<code>{html.escape(status['tracking'])}</code>"
        bar += f"<div class='job-tracking'>{t('job.tracking', where=where)}</div>"
    if status.get("error"):
        bar += f"<div class='job-error status-error'>{html.escape(core_text(status['error']))}</div>"
    return bar


def plan_html(plan: dict | None) -> str:
    """Where the job runs and why, with the memory estimate (jobs from before the planner have no plan)."""
    if not plan:
        return ""
    head = t("job.plan", placement=f"<b class='job-placement'>{html.escape(str(plan.get('placement')))}</b>",
             quantization=html.escape(str(plan.get("quantization"))), device=html.escape(str(plan.get("device"))))
    reason = core_text(str(plan.get("reason", "")))  # it has the GB
    return f"<div class='job-plan'>{head} — {html.escape(reason)}</div>"


def loss_frame(metrics: list[dict]) -> pd.DataFrame:
    """Long-format loss history for gr.LinePlot: one row per (whole step, series): the logged training loss, its
    moving average and the eval loss when there is an eval split."""
    rows, smoothed = [], None
    for m in metrics:
        if isinstance(m.get("loss"), (int, float)):
            smoothed = m["loss"] if smoothed is None else SMOOTHING * smoothed + (1 - SMOOTHING) * m["loss"]
            rows.append({"step": int(m["step"]), "loss": m["loss"], "series": t("job.series.loss")})
            rows.append({"step": int(m["step"]), "loss": smoothed, "series": t("job.series.smoothed")})
        if isinstance(m.get("eval_loss"), (int, float)):
            rows.append({"step": int(m["step"]), "loss": m["eval_loss"], "series": t("job.series.eval_loss")})
    return pd.DataFrame(rows, columns=["step", "loss", "series"])


def loss_plot(frame: pd.DataFrame) -> gr.LinePlot:
    """The loss plot, hidden until a loss is logged (an empty plot draws a meaningless "-Infinity" legend)."""
    return gr.LinePlot(frame, visible=not frame.empty)


def clean_log(text: str) -> str:
    """The log without library warnings and traceback source lines."""
    return "\n".join(line for line in (text or "").splitlines() if not LOG_NOISE.search(line))


def job_view(status: dict) -> tuple[str, gr.LinePlot, str]:
    """(progress HTML, loss plot, log tail) for one job status."""
    html_text = progress_html(status)
    frame = loss_frame(status.get("metrics") or [])
    if frame.empty:
        html_text += f"<div class='job-note'>{html.escape(t('job.plot_note'))}</div>"
    return html_text, loss_plot(frame), clean_log(status.get("log_tail", ""))


def no_job_view(why: str | None = None) -> tuple[str, gr.LinePlot, str]:
    """What the job panel shows before any job exists, or, given `why`, to a visitor who may not see jobs."""
    return f"<div class='job-none'>{html.escape(why or t('job.none'))}</div>", loss_plot(loss_frame([])), ""
