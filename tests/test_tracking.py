"""Experiment tracking: a tensorboard job's event files hold its logged losses; a missing tracker fails the job first."""

from __future__ import annotations

import importlib.util

import pytest

from llama_space.jobs import files as jobfiles
from llama_space.training import tracking
from llama_space.training.params import TrainingParams

from jobutil import finished, make_runner, one_thread_jobs, write_alpaca  # noqa: F401 - one_thread_jobs is autouse

pytestmark = pytest.mark.slow  # training, export or app runs of many seconds: make test-fast leaves them out


def event_losses(log_dir) -> dict[int, float]:
    """{step: train/loss} read back from the TensorBoard event files under `log_dir`."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = list(log_dir.rglob("events.out.tfevents.*"))
    assert files, f"no event files under {log_dir}"
    losses = {}
    for path in files:
        events = EventAccumulator(str(path))
        events.Reload()
        if "train/loss" in events.Tags()["scalars"]:
            losses.update({e.step: e.value for e in events.Scalars("train/loss")})
    return losses


def test_tensorboard_job_writes_its_losses_into_the_job_folder(tiny_model_dir, tmp_path):
    runner = make_runner(tiny_model_dir, tmp_path)
    job_id = runner.start(write_alpaca(tmp_path / "d.jsonl"), "tracked",
                          TrainingParams(max_steps=3, report_to="tensorboard", batch_size=2, grad_accum=1))
    status = finished(runner, job_id)
    assert status["state"] == "completed", status
    job_dir = runner.registry.job_dir(job_id)
    logged = {m["step"]: m["loss"] for m in jobfiles.read_metrics(job_dir) if m.get("loss") is not None}
    losses = event_losses(job_dir / tracking.LOGS_DIR / "tensorboard")
    assert sorted(losses) == sorted(logged) == [1, 2, 3]
    for step, loss in logged.items():
        assert losses[step] == pytest.approx(loss, rel=1e-4)
    assert status["tracking"].startswith("tensorboard --logdir ")
    assert status["tracking"].endswith(f"{job_id}/{tracking.LOGS_DIR}/tensorboard")
    from llama_space.web.ui.jobs_view import progress_html

    assert f"Tracking: <code>{status['tracking']}</code>" in progress_html(status)  # the Fine-tune tab's job view


def missing_tracker() -> str:
    """A tracker whose package is not installed here."""
    for name in ("trackio", "wandb", "mlflow"):
        if importlib.util.find_spec(name) is None:
            return name
    pytest.skip("trackio, wandb and mlflow are all installed")


def test_a_tracker_that_is_not_installed_fails_the_job_before_training(tiny_model_dir, tmp_path, monkeypatch):
    from llama_space.errors import UserError
    from llama_space.training import runner as runner_module

    name = missing_tracker()
    message = f"report_to={name} needs the {name} package: install {name} (pip install {name}) or choose report_to=none."
    runner = make_runner(tiny_model_dir, tmp_path)
    with pytest.raises(UserError) as refused:  # /start_training says so at once
        runner.start(write_alpaca(tmp_path / "d.jsonl"), "untracked", TrainingParams(max_steps=3, report_to=name))
    assert str(refused.value) == message and not runner.jobs()
    # The job checks again itself (a job resumed where the package has gone): it fails before any step.
    monkeypatch.setattr(runner_module, "require_tracker", lambda report_to: None)
    job_id = runner.start(write_alpaca(tmp_path / "d.jsonl"), "untracked", TrainingParams(max_steps=3, report_to=name))
    status = finished(runner, job_id)
    assert status["state"] == "failed"
    assert status["error"] == message
    assert not status.get("step") and not jobfiles.read_metrics(runner.registry.job_dir(job_id))


def test_trackers_write_inside_the_job_folder(tmp_path):
    job_dir = tmp_path / "jobs" / "20260101-000000-abcd"
    logs = (job_dir / tracking.LOGS_DIR).resolve()
    assert tracking.environment("trackio", job_dir) == {"TRACKIO_DIR": str(logs / "trackio")}
    assert tracking.environment("wandb", job_dir)["WANDB_DIR"] == str(logs)
    assert tracking.environment("mlflow", job_dir)["MLFLOW_TRACKING_URI"] == (logs / "mlruns").as_uri()
    assert tracking.environment("tensorboard", job_dir) == {} and tracking.where_to_look("none", job_dir) is None
    assert tracking.where_to_look("trackio", job_dir) == (f"TRACKIO_DIR={logs / 'trackio'} trackio show "
                                                          f"--project {tracking.PROJECT}")
