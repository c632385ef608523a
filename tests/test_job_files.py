"""Damaged job files and half-made job dirs: one bad job never disables the others."""

from __future__ import annotations

import os
import sys
import threading

import pytest

from llama_space.errors import UserError
from llama_space.jobs import files as jobfiles
from llama_space.settings import Settings
from llama_space.training import JobRunner, TrainingParams
from llama_space.web.janitor import Janitor

from jobutil import write_alpaca

DAMAGE = {"cut short": b'{"state": "runn', "empty": b"", "binary": b"\x00\xff\xfe", "a list": b"[1, 2]"}


@pytest.fixture
def settings(tiny_model_dir, tmp_path) -> Settings:
    return Settings(model=str(tiny_model_dir), data_dir=tmp_path / "data", adapters_dir=tmp_path / "adapters")


def _quick_process(monkeypatch, script: str = "pass") -> None:
    """Launch `script` (its command line naming the job dir) instead of training."""
    from llama_space.training import runner as runner_module

    monkeypatch.setattr(runner_module, "train_command",
                        lambda job_dir, resume: [sys.executable, "-c", script, str(job_dir)])


def _expected_error(damaged_file: str, damage: str) -> str:
    what = {jobfiles.STATUS_FILE: "status file", jobfiles.JOB_FILE: "configuration file"}[damaged_file]
    why = "not a JSON object" if damage == "a list" else "not valid JSON"
    return f"The job's {what} is damaged ({why}); its checkpoints and log are kept in the job folder."


@pytest.mark.parametrize("damage", DAMAGE)
@pytest.mark.parametrize("damaged_file", [jobfiles.STATUS_FILE, jobfiles.JOB_FILE])
def test_a_damaged_job_file_fails_that_job_alone(settings, tmp_path, monkeypatch, damaged_file, damage):
    runner = JobRunner(settings)
    data = write_alpaca(tmp_path / "d.jsonl", rows=4)
    good, bad = (runner.registry.create(data, name, TrainingParams(max_steps=2)) for name in ("good", "bad"))
    for job_id in (good, bad):
        (runner.registry.job_dir(job_id) / jobfiles.CHECKPOINTS_DIR / "checkpoint-2").mkdir(parents=True)
        jobfiles.update_status(runner.registry.job_dir(job_id), state="completed")
    bad_dir = runner.registry.job_dir(bad)
    (bad_dir / damaged_file).write_bytes(DAMAGE[damage])

    listed = {job["job_id"]: job for job in runner.jobs()}
    assert listed[good]["state"] == "completed"
    assert (listed[bad]["state"], listed[bad]["error"]) == ("failed", _expected_error(damaged_file, damage))
    assert listed[bad]["adapter"] == "bad" and not listed[bad]["resumable"]
    assert runner.status(bad)["error"] == listed[bad]["error"]
    with pytest.raises(UserError, match="already failed"):
        runner.cancel(bad)
    with pytest.raises(UserError, match="only an interrupted job can be resumed"):
        runner.resume(bad)

    assert Janitor(settings).sweep()["job_scratch"] == 2  # the good job's checkpoints and dataset copy
    assert (bad_dir / jobfiles.CHECKPOINTS_DIR / "checkpoint-2").is_dir()
    assert (bad_dir / damaged_file).read_bytes() == DAMAGE[damage]  # left for a person to inspect

    _quick_process(monkeypatch)
    new = runner.start(data, "new", {"max_steps": 2})
    runner.wait(new, timeout=30, poll=0.05)
    assert sorted(job["job_id"] for job in runner.jobs()) == sorted([good, bad, new])


def test_a_process_that_damages_its_status_file_is_reaped_quietly(settings, tmp_path, monkeypatch):
    crashes = []
    monkeypatch.setattr(threading, "excepthook", crashes.append)
    _quick_process(monkeypatch, "import sys; open(sys.argv[1] + '/status.json', 'w').write('{'); sys.exit(3)")
    runner = JobRunner(settings)
    job_id = runner.start(write_alpaca(tmp_path / "d.jsonl", rows=4), "cut", {"max_steps": 2})
    reaper = next((thread for thread in threading.enumerate() if thread.name == f"reap-{job_id}"), None)
    if reaper:  # else it is done already
        reaper.join(timeout=30)
        assert not reaper.is_alive()
    assert crashes == []
    status = runner.status(job_id)
    assert (status["state"], status["error"]) == ("failed", _expected_error(jobfiles.STATUS_FILE, "cut short"))


def test_janitor_sweeps_job_dirs_whose_preparing_process_died(settings):
    jobs = settings.data_dir.resolve() / "jobs"
    dead, alive = jobs / ".new-20990101-000000-aaaaaa-999999999", jobs / f".new-20990101-000000-bbbbbb-{os.getpid()}"
    for staging in (dead, alive):
        staging.mkdir(parents=True)
        jobfiles.write_json_atomic(staging / jobfiles.STATUS_FILE, {"state": "queued"})
    assert Janitor(settings).sweep()["job_staging"] == 1
    assert not dead.exists() and alive.is_dir()  # still being prepared
