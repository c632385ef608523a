"""Experiment trackers for a job (`report_to`): checked before training, their files kept in the job folder.

TensorBoard event files go to <job>/logs/tensorboard, trackio's local store to <job>/logs/trackio, offline
W&B runs to <job>/logs/wandb and MLflow runs to <job>/logs/mlruns. A W&B mode or an MLflow tracking server the
user set in the environment is kept: those send the runs where the user pointed them.
"""

from __future__ import annotations

import os
from pathlib import Path

from llama_space.errors import UserError

LOGS_DIR = "logs"  # inside the job folder
PROJECT = "llama-space"  # the trackers' project (trackio, W&B) or experiment (MLflow) name
PACKAGES = {"tensorboard": "tensorboard", "trackio": "trackio", "wandb": "wandb", "mlflow": "mlflow"}
# Where the runs go, as the user set it before any job: kept. Taken at import, before set_up changed anything,
# so that a job trained in the app process (shared placement) does not inherit the previous job's folders.
USER_SET = frozenset(key for key in ("WANDB_MODE", "MLFLOW_TRACKING_URI", "WANDB_PROJECT", "MLFLOW_EXPERIMENT_NAME")
                     if key in os.environ)


def logs_dir(job_dir: Path) -> Path:
    """Where a job's tracker writes."""
    return Path(job_dir) / LOGS_DIR


def require_installed(report_to: str) -> None:
    """UserError unless the tracker's package can be used (the same check the Trainer makes)."""
    from transformers import integrations

    if report_to == "none":
        return
    if not getattr(integrations, f"is_{report_to}_available")():
        package = PACKAGES[report_to]
        raise UserError(f"report_to={report_to} needs the {package} package: install {package} "
                        f"(pip install {package}) or choose report_to=none.")


def environment(report_to: str, job_dir: Path) -> dict[str, str]:
    """Environment variables that point `report_to`'s files into the job folder (TensorBoard needs none)."""
    logs = logs_dir(job_dir).resolve()
    return {
        "trackio": {"TRACKIO_DIR": str(logs / "trackio")},
        "wandb": {"WANDB_DIR": str(logs), "WANDB_MODE": "offline", "WANDB_PROJECT": PROJECT},
        "mlflow": {"MLFLOW_TRACKING_URI": (logs / "mlruns").as_uri(), "MLFLOW_EXPERIMENT_NAME": PROJECT},
    }.get(report_to, {})


def set_up(report_to: str, job_dir: Path) -> None:
    """Check the tracker is installed and set its environment for this process, before the Trainer exists.

    trackio reads its directory when first imported and W&B and MLflow when the run starts, so the variables
    go into this process's environment; the user's own W&B mode or MLflow server (USER_SET) wins.
    """
    require_installed(report_to)
    for key, value in environment(report_to, job_dir).items():
        if key not in USER_SET:
            os.environ[key] = value
    if report_to != "none":
        logs_dir(job_dir).mkdir(parents=True, exist_ok=True)


def where_to_look(report_to: str, job_dir: Path) -> str | None:
    """A command that shows the job's tracked run, for the job view; None without a tracker."""
    logs = _shown(logs_dir(job_dir))
    if report_to == "tensorboard":
        return f"tensorboard --logdir {logs / 'tensorboard'}"
    if report_to == "trackio":
        return f"TRACKIO_DIR={logs / 'trackio'} trackio show --project {PROJECT}"
    if report_to == "wandb":
        if os.environ.get("WANDB_MODE", "offline") != "offline":
            return f"the W&B project {os.environ.get('WANDB_PROJECT', PROJECT)}"
        return f"wandb sync {logs / 'wandb'}/offline-run-*"
    if report_to == "mlflow":
        uri = os.environ.get("MLFLOW_TRACKING_URI", "")
        if uri and not uri.startswith("file:"):
            return f"the MLflow server's experiment {os.environ.get('MLFLOW_EXPERIMENT_NAME', PROJECT)}"
        return f"mlflow ui --backend-store-uri {(logs / 'mlruns').as_posix()}"
    return None


def _shown(path: Path) -> Path:
    """`path` relative to the working directory when inside it (what a person types there), else absolute."""
    path = path.resolve()
    try:
        return path.relative_to(Path.cwd())
    except ValueError:
        return path
