"""How a training job's status looks in the UI: progress bar, loss plot, log tail."""

from __future__ import annotations

import html

import gradio as gr
import pandas as pd

NO_JOB = "No training job yet: upload data and press Start training."


def _eta(seconds) -> str:
    if not isinstance(seconds, (int, float)):
        return "—"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def progress_html(status: dict) -> str:
    """A progress bar with state, step, loss, ETA and any error."""
    step, total = status.get("step") or 0, status.get("total_steps") or 0
    percent = 100 * step / total if total else 0
    loss = status.get("loss")
    parts = [(f"<b>Job {html.escape(str(status.get('job_id', '')))}</b> · "
              f"<span class='job-state' data-state='{html.escape(str(status.get('state')))}'>"
              f"{html.escape(str(status.get('state')))}</span>"),
             f"step <span class='job-step'>{step}</span> / {total}",
             f"loss {loss:.4f}" if isinstance(loss, (int, float)) else "loss —"]
    if isinstance(status.get("eval_loss"), (int, float)):
        parts.append(f"eval loss {status['eval_loss']:.4f}")
    parts.append(f"ETA {_eta(status.get('eta_seconds'))}")
    bar = (f"<progress class='job-bar' value='{step}' max='{max(total, 1)}' style='width:100%'></progress>"
           f"<div>{' · '.join(parts)} ({percent:.0f}%)</div>")
    bar += plan_html(status.get("plan"))
    if status.get("adapter") and status.get("state") == "completed":
        bar += f"<div>Adapter <b>{html.escape(status['adapter'])}</b> is ready: choose it in the Chat tab.</div>"
    if status.get("tracking"):
        bar += f"<div class='job-tracking'>Tracking: <code>{html.escape(status['tracking'])}</code></div>"
    if status.get("error"):
        bar += f"<div class='job-error' style='color:#b91c1c'>{html.escape(status['error'])}</div>"
    return bar


def plan_html(plan: dict | None) -> str:
    """Where the job runs and why, with the memory estimate (jobs from before the planner have no plan)."""
    if not plan:
        return ""
    head = (f"Placement <b class='job-placement'>{html.escape(str(plan.get('placement')))}</b> · quantization "
            f"{html.escape(str(plan.get('quantization')))} · {html.escape(str(plan.get('device')))}")
    return f"<div class='job-plan'>{head} — {html.escape(str(plan.get('reason', '')))}</div>"  # the reason has the GB


def loss_frame(metrics: list[dict]) -> pd.DataFrame:
    """Long-format loss history for gr.LinePlot: one row per (step, series)."""
    rows = [{"step": m["step"], "loss": m[key], "series": key}
            for m in metrics for key in ("loss", "eval_loss") if isinstance(m.get(key), (int, float))]
    return pd.DataFrame(rows, columns=["step", "loss", "series"])


def loss_plot(frame: pd.DataFrame) -> gr.LinePlot:
    """The loss plot, hidden until a loss is logged (an empty plot draws a meaningless "-Infinity" legend)."""
    return gr.LinePlot(frame, visible=not frame.empty)


def job_view(status: dict) -> tuple[str, gr.LinePlot, str]:
    """(progress HTML, loss plot, log tail) for one job status."""
    html_text = progress_html(status)
    frame = loss_frame(status.get("metrics") or [])
    if frame.empty:
        html_text += "<div class='job-note'>The loss plot appears once the first step is logged.</div>"
    return html_text, loss_plot(frame), status.get("log_tail", "")


def no_job_view(why: str = NO_JOB) -> tuple[str, gr.LinePlot, str]:
    """What the job panel shows before any job exists, or, given `why`, to a visitor who may not see jobs."""
    return f"<div class='job-none'>{html.escape(why)}</div>", loss_plot(loss_frame([])), ""
