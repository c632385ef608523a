"""The job registry without training: validation at creation, restart, liveness and refusals."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from llama_space.errors import UserError
from llama_space.jobs import files as jobfiles
from llama_space.settings import Settings
from llama_space.training import JobRunner, TrainingParams

from jobutil import write_alpaca


@pytest.fixture
def settings(tiny_model_dir, tmp_path) -> Settings:
    return Settings(model=str(tiny_model_dir), data_dir=tmp_path / "data", adapters_dir=tmp_path / "adapters")


def test_create_validates_copies_and_records_the_job(settings, tmp_path):
    runner = JobRunner(settings)
    data = write_alpaca(tmp_path / "upload.jsonl", rows=12)
    job_id = runner.registry.create(data, "my-adapter", TrainingParams(max_steps=3))
    job_dir = runner.registry.job_dir(job_id)
    assert job_dir == settings.data_dir.resolve() / "jobs" / job_id
    config = runner.registry.config(job_id)
    assert (job_dir / config["dataset"]).read_bytes() == data.read_bytes()
    assert config["adapter"] == "my-adapter" and config["base_model"] == str(settings.model)
    assert config["params"]["max_steps"] == 3 and config["examples"] == 12 and len(config["dataset_fingerprint"]) == 16
    status = jobfiles.read_json(job_dir / jobfiles.STATUS_FILE)
    assert status["state"] == "queued" and status["adapter"] == "my-adapter"


def test_bad_dataset_or_name_fails_at_start_without_a_job(settings, tmp_path):
    runner = JobRunner(settings)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"instruction": "Say nothing", "output": " "}) + "\n")
    with pytest.raises(UserError, match="Nothing to train"):
        runner.start(bad, "fine-name", {"max_steps": 2})
    good = write_alpaca(tmp_path / "good.jsonl")
    for name in ("../x", "/abs", "a\x00b", "\u0430dapter"):
        with pytest.raises(UserError, match="Invalid adapter name"):
            runner.start(good, name, {"max_steps": 2})
    (settings.adapters_dir / "taken").mkdir(parents=True)
    with pytest.raises(UserError, match="'taken' exists; choose another name or delete it"):
        runner.start(good, "taken", {"max_steps": 2})
    with pytest.raises(UserError, match="unknown training parameter"):
        runner.start(good, "fine-name", {"epochs": 2})
    assert runner.jobs() == []


def _quick_process(monkeypatch, script: str = "pass") -> None:
    """Launch `script` (its command line naming the job dir) instead of training."""
    from llama_space.training import runner as runner_module

    monkeypatch.setattr(runner_module, "train_command",
                        lambda job_dir, resume: [sys.executable, "-c", script, str(job_dir)])


def _before_tokenizing(monkeypatch, hook) -> None:
    """Run hook() each time a start is about to tokenize its data."""
    from llama_space import data

    real = data.build_examples

    def build_examples(*args, **kwargs):
        hook()
        return real(*args, **kwargs)

    monkeypatch.setattr(data, "build_examples", build_examples)


def test_status_polls_answer_while_a_start_tokenizes(settings, tmp_path, monkeypatch):
    runner = JobRunner(settings)
    data = write_alpaca(tmp_path / "d.jsonl")
    earlier = runner.registry.create(data, "earlier", TrainingParams(max_steps=2))
    jobfiles.update_status(runner.registry.job_dir(earlier), state="completed")
    tokenizing, release = threading.Event(), threading.Event()
    _before_tokenizing(monkeypatch, lambda: (tokenizing.set(), release.wait(timeout=3)))
    _quick_process(monkeypatch)
    started = {}
    start = threading.Thread(target=lambda: started.update(job_id=runner.start(data, "later", {"max_steps": 2})))
    start.start()
    try:
        assert tokenizing.wait(timeout=30)
        for poll_once in (lambda: runner.status(earlier)["state"], lambda: [job["job_id"] for job in runner.jobs()]):
            began = time.monotonic()
            answer = poll_once()
            assert time.monotonic() - began < 0.5, "a status poll waited for the start"
        assert answer == [earlier]  # the job being prepared is not listed yet
    finally:
        release.set()
        start.join(timeout=30)
    assert runner.wait(started["job_id"], timeout=30, poll=0.05)["adapter"] == "later"


def test_a_job_launched_while_a_start_prepares_refuses_that_start_without_a_trace(settings, tmp_path, monkeypatch):
    runner = JobRunner(settings)
    data = write_alpaca(tmp_path / "d.jsonl")
    interrupted = runner.registry.create(data, "first", TrainingParams(max_steps=2))  # never launched
    assert runner.status(interrupted)["resumable"]
    _quick_process(monkeypatch, "import time; time.sleep(60)")
    _before_tokenizing(monkeypatch, lambda: runner.resume(interrupted))  # another request, meanwhile
    try:
        with pytest.raises(UserError, match=f"already running \\(job {interrupted}\\)"):
            runner.start(data, "second", {"max_steps": 2})
        assert sorted(path.name for path in runner.registry.root.iterdir()) == [interrupted]
    finally:
        os.kill(int((runner.registry.job_dir(interrupted) / jobfiles.PID_FILE).read_text()), signal.SIGKILL)
    assert runner.wait(interrupted, timeout=30, poll=0.05)["state"] == "interrupted"


@pytest.mark.parametrize("broken, message", [
    ("shutil.copyfile", "Could not copy the dataset into the job folder (No space left on device); no job was created."),
    ("llama_space.jobs.files.write_json_atomic",
     "Could not write the training job's files (No space left on device); no training job was created."),
])
def test_a_job_creation_failing_half_way_leaves_no_directory(settings, tmp_path, monkeypatch, broken, message):
    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    runner = JobRunner(settings)
    monkeypatch.setattr(broken, disk_full)
    with pytest.raises(UserError) as refused:
        runner.start(write_alpaca(tmp_path / "d.jsonl"), "full", {"max_steps": 2})
    assert str(refused.value) == message
    assert list(runner.registry.root.iterdir()) == [] and runner.jobs() == []


def test_unknown_or_malformed_job_ids_are_user_errors(settings):
    runner = JobRunner(settings)
    for job_id in ("20250101-000000-abcdef", "../../etc", "", None):
        with pytest.raises(UserError, match="no training job"):
            runner.status(job_id)


def _fake_running(registry, job_id, pid):
    jobfiles.update_status(registry.job_dir(job_id), state="running", pid=pid, started=time.time())


def test_restart_finds_jobs_and_marks_dead_ones_interrupted(settings, tmp_path):
    first = JobRunner(settings)
    data = write_alpaca(tmp_path / "d.jsonl")
    dead, stranger, never = (first.registry.create(data, f"a{i}", TrainingParams(max_steps=2)) for i in range(3))
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    _fake_running(first.registry, dead, gone.pid)
    _fake_running(first.registry, stranger, os.getpid())  # alive, but its command line is not this job's

    restarted = JobRunner(settings)  # what an app restart sees
    listed = restarted.jobs()
    assert [j["job_id"] for j in listed] == [never, stranger, dead]  # newest first
    assert {j["state"] for j in listed} == {"interrupted"}
    assert all(j["resumable"] for j in listed) and restarted.active() is None


def test_live_job_blocks_a_second_start_and_cancel_of_interrupted_job(settings, tmp_path):
    runner = JobRunner(settings)
    data = write_alpaca(tmp_path / "d.jsonl")
    job_id = runner.registry.create(data, "first", TrainingParams(max_steps=2))
    job_dir = runner.registry.job_dir(job_id)
    # A stand-in process whose command line names the job dir, like a real training process.
    stand_in = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", str(job_dir)])
    try:
        cmdline = Path(f"/proc/{stand_in.pid}/cmdline")
        deadline = time.monotonic() + 5
        while job_id.encode() not in cmdline.read_bytes() and time.monotonic() < deadline:
            time.sleep(0.01)  # the command line appears a few ms after Popen returns (exec in progress)
        assert job_id.encode() in cmdline.read_bytes(), cmdline.read_bytes()
        _fake_running(runner.registry, job_id, stand_in.pid)
        active = JobRunner(settings).active()
        assert active and active["job_id"] == job_id, (runner.status(job_id), cmdline.read_bytes())
        with pytest.raises(UserError, match=f"already running \\(job {job_id}\\); wait .* or cancel it"):
            runner.start(data, "second", {"max_steps": 2})
    finally:
        stand_in.kill()
        stand_in.wait()
    assert runner.status(job_id)["state"] == "interrupted"
    cancelled = runner.cancel(job_id)
    assert cancelled["state"] == "cancelled" and not cancelled["resumable"]
    with pytest.raises(UserError, match="already cancelled"):
        runner.cancel(job_id)
    with pytest.raises(UserError, match="only an interrupted job can be resumed"):
        runner.resume(job_id)


def test_cli_refuses_a_finished_job_and_keeps_its_status(settings, tmp_path):
    from llama_space.training import train

    runner = JobRunner(settings)
    job_id = runner.registry.create(write_alpaca(tmp_path / "d.jsonl"), "done", TrainingParams(max_steps=2))
    job_dir = runner.registry.job_dir(job_id)
    jobfiles.update_status(job_dir, state="completed")
    assert train.main(["--job-dir", str(job_dir)]) == 2
    assert runner.status(job_id)["state"] == "completed"
    jobfiles.update_status(job_dir, state="failed", error="earlier failure")
    assert train.main(["--job-dir", str(job_dir)]) == 2  # a failed job needs --resume
    assert runner.status(job_id)["error"] == "earlier failure"


@pytest.mark.parametrize("raised, state, message", [
    ("oom", "failed", "Out of memory at step 3. Lower batch_size or max_length"),
    ("cuda-oom-text", "failed", "Out of memory at step 3"),
    ("bug", "failed", "Training failed at step 3 (ValueError); the job's log shows what went wrong."),
    ("disk", "failed", "Training failed at step 3: No space left on device. Fix that, then resume the job"),
    ("user", "failed", "adapter 'x' exists"),
    ("ctrl-c", "interrupted", None),
])
def test_any_failure_ends_as_a_clear_status(settings, tmp_path, monkeypatch, raised, state, message):
    import torch

    from llama_space.training import train

    errors = {"oom": torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
              "cuda-oom-text": RuntimeError("DefaultCPUAllocator: not enough memory: out of memory"),
              "bug": ValueError("shapes do not match in /secret/path"), "user": UserError("adapter 'x' exists"),
              "disk": OSError(28, "No space left on device", "/secret/path/checkpoint-3"),
              "ctrl-c": KeyboardInterrupt()}

    def failing_job(job_dir, base=None):
        jobfiles.update_status(job_dir, step=3)
        raise errors[raised]

    runner = JobRunner(settings)
    job_id = runner.registry.create(write_alpaca(tmp_path / "d.jsonl"), "x", TrainingParams(max_steps=5))
    monkeypatch.setattr(train, "train_job", failing_job)
    code = train.run(runner.registry.job_dir(job_id), resume=False)
    status = jobfiles.read_json(runner.registry.job_dir(job_id) / jobfiles.STATUS_FILE)
    assert (code != 0, status["state"]) == (True, state)
    assert status["error"] == message if message is None else message in status["error"]
    assert "/secret" not in str(status["error"])  # no file names or raw exception text in what users see


@pytest.mark.parametrize("script, state, message", [
    ("import sys; sys.exit(3)", "failed", "exited with code 3 before reporting why"),
    ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", "interrupted", None),
])
def test_a_process_that_dies_silently_is_reaped_and_reported(settings, tmp_path, monkeypatch, script, state, message):
    from llama_space.training import runner as runner_module

    monkeypatch.setattr(runner_module, "train_command",
                        lambda job_dir, resume: [sys.executable, "-c", script, str(job_dir)])
    runner = JobRunner(settings)
    job_id = runner.start(write_alpaca(tmp_path / "d.jsonl"), "silent", {"max_steps": 2})
    status = runner.wait(job_id, timeout=30, poll=0.05)
    assert status["state"] == state
    assert status["error"] is None if message is None else message in status["error"]
    pid = int((runner.registry.job_dir(job_id) / jobfiles.PID_FILE).read_text())
    assert not Path(f"/proc/{pid}").exists()  # reaped: no zombie left behind


def test_a_status_read_before_the_reaper_records_the_exit_waits_for_it(settings, tmp_path, monkeypatch):
    """On a busy machine the reaper may record an exit late: a status read after the process exited but before
    that must not take the job for interrupted (it failed, with its exit code)."""
    from llama_space.jobs import launcher
    from llama_space.training import runner as runner_module

    monkeypatch.setattr(runner_module, "train_command",
                        lambda job_dir, resume: [sys.executable, "-c", "import sys; sys.exit(3)", str(job_dir)])
    reaped, wait = threading.Event(), subprocess.Popen.wait

    def late_wait(process, *args, **kwargs):
        code = wait(process, *args, **kwargs)
        reaped.set()
        time.sleep(0.5)  # exited and reaped, its exit not yet recorded
        return code

    monkeypatch.setattr(launcher.subprocess.Popen, "wait", late_wait)
    runner = JobRunner(settings)
    job_id = runner.start(write_alpaca(tmp_path / "d.jsonl"), "late", {"max_steps": 2})
    assert reaped.wait(30)
    assert runner.status(job_id)["state"] in jobfiles.ACTIVE_STATES
    status = runner.wait(job_id, timeout=30, poll=0.05)
    assert status["state"] == "failed" and "exited with code 3" in status["error"]


def test_a_late_reaper_of_a_killed_run_leaves_the_resumed_launch_alone(settings, tmp_path, monkeypatch):
    """After an app restart, the old runner's reaper of a killed run may wake only while the new runner is
    launching the resumed job (status queued, process not started yet): it must not mark that job stopped."""
    from types import SimpleNamespace

    from llama_space.jobs import launcher as launcher_module
    from llama_space.training import runner as runner_module

    old, new = JobRunner(settings), JobRunner(settings)
    job_id = old.registry.create(write_alpaca(tmp_path / "d.jsonl"), "late", TrainingParams(max_steps=2))
    job_dir = old.registry.job_dir(job_id)
    (job_dir / jobfiles.PID_FILE).write_text("4194300")  # the killed earlier run
    assert new.status(job_id)["state"] == "interrupted"
    popen = subprocess.Popen

    def launch_after_the_late_reaper(command, **kwargs):
        old.launcher._reap(job_id, job_dir, SimpleNamespace(pid=4194300, wait=lambda: -signal.SIGKILL))
        return popen(command, **kwargs)

    monkeypatch.setattr(runner_module, "train_command",
                        lambda job_dir, resume: [sys.executable, "-c", "import time; time.sleep(60)", str(job_dir)])
    monkeypatch.setattr(launcher_module.subprocess, "Popen", launch_after_the_late_reaper)  # wakes in the window
    status = new.resume(job_id)
    try:
        assert status["state"] == "queued" and new.status(job_id)["state"] == "queued", status
    finally:
        os.kill(int((job_dir / jobfiles.PID_FILE).read_text()), signal.SIGKILL)
