"""The jobs layer on its own: a store and a launcher for a kind of job that runs a few lines of Python.

Training, export and evaluation build on these (their own tests cover what each adds); here each behaviour the
three share is checked once, on a toy kind: process jobs that finish, die or are cancelled, thread jobs, damaged
files, staging folders and sweeps.
"""

from __future__ import annotations

import os
import sys
import threading
import time

import pytest

from llama_space.errors import UserError
from llama_space.jobs import files, launcher
from llama_space.jobs.store import JobKind, JobStore

TOY = JobKind(noun="toy job", folder="toys", log_file="toy.log", id_key="toy_id")


@pytest.fixture
def store(tmp_path):
    return JobStore(tmp_path / "data", TOY)


def new_job(store: JobStore, **status) -> str:
    job_id = store.new_id()
    store.write_job(job_id, {"what": "toy"}, status)
    return job_id


def script(body: str) -> list[str]:
    """A process that runs `body` with `job_dir` and `files` bound (the job's folder is its last argument)."""
    code = ("import sys, os, time, pathlib; from llama_space.jobs import files; "
            "job_dir = pathlib.Path(sys.argv[-1]); " + body)
    return [sys.executable, "-c", code]


def test_a_process_job_reports_its_own_end(store):
    job_id = new_job(store)
    job = launcher.Launcher(store)
    job.start_process(job_id, [*script("files.update_status(job_dir, state='running', pid=os.getpid()); "
                                       "print('working'); files.update_status(job_dir, state='completed')"),
                               str(store.job_dir(job_id))], "toy")
    status = launcher.wait(lambda: store.status(job_id), timeout=30, poll=0.05)
    assert status["state"] == "completed" and status["toy_id"] == job_id and status["error"] is None
    assert files.log_tail(store.job_dir(job_id), 5, TOY.log_file).strip() == "working"


@pytest.mark.parametrize("body, state, error", [
    ("print('about to fail'); sys.exit(3)", "failed", "exited with code 3 before reporting why"),
    ("os.kill(os.getpid(), 9)", "interrupted", None),
])
def test_a_process_that_dies_silently_is_recorded_by_its_reaper(store, body, state, error):
    job_id = new_job(store)
    pid = launcher.Launcher(store).start_process(job_id, [*script(body), str(store.job_dir(job_id))], "toy")
    status = launcher.wait(lambda: files.read_status(store.job_dir(job_id)), timeout=30, poll=0.05)
    assert status["state"] == state
    assert status["error"] is None if error is None else error in status["error"] and "about to fail" in status["error"]
    assert not os.path.exists(f"/proc/{pid}")  # reaped: no zombie


def test_cancel_and_terminate_end_a_process_job_as_cancelled(store):
    job_id = new_job(store)
    job = launcher.Launcher(store)
    job.start_process(job_id, [*script("files.update_status(job_dir, state='running', pid=os.getpid()); "
                                       "time.sleep(60)"), str(store.job_dir(job_id))], "toy")
    deadline = time.monotonic() + 30
    while not files.read_status(store.job_dir(job_id)).get("pid") and time.monotonic() < deadline:
        time.sleep(0.05)
    store.request_cancel(job_id)
    job.terminate(job_id, store.status(job_id))
    status = launcher.wait(lambda: store.status(job_id), timeout=30, poll=0.05)
    assert status["state"] == "cancelled" and status["error"] is None


def test_a_launch_that_cannot_start_fails_the_job_and_says_why(store):
    job_id = new_job(store)
    with pytest.raises(UserError, match="Could not start the toy process"):
        launcher.Launcher(store).start_process(job_id, ["/nonexistent/program"], "toy")
    assert store.status(job_id)["state"] == "failed"


def test_a_thread_job_runs_while_its_thread_does_and_is_interrupted_when_it_ends_unreported(store):
    job_id = new_job(store)
    release, seen = threading.Event(), []

    def work():
        files.update_status(store.job_dir(job_id), state="running", pid=os.getpid())
        release.wait(30)

    thread = launcher.Launcher(store).start_thread(job_id, work)
    deadline = time.monotonic() + 10
    while store.status(job_id)["state"] != "running" and time.monotonic() < deadline:
        time.sleep(0.01)
    seen.append(store.status(job_id)["state"])
    assert launcher.in_thread_here(store.job_dir(job_id))
    release.set()
    thread.join(10)
    assert seen == ["running"]
    assert store.status(job_id)["state"] == "interrupted"  # it ended without recording how


def test_a_thread_job_of_an_app_that_is_gone_is_interrupted(store):
    job_id = new_job(store)
    files.update_status(store.job_dir(job_id), state="running", pid=4194300, runs_in="thread", process_start=1)
    assert store.status(job_id)["state"] == "interrupted"


@pytest.mark.parametrize("name, text", [
    (files.STATUS_FILE, '{"state": "running"'),  # cut short
    (files.STATUS_FILE, '{"state": "exploded"}'),  # a state no job has
    (files.STATUS_FILE, '{"state": "running", "pid": "12"}'),  # a pid that is not a number
    (files.JOB_FILE, "[]"),
])
def test_a_damaged_file_fails_that_job_alone(store, name, text):
    damaged, sound = new_job(store), new_job(store)
    (store.job_dir(damaged) / name).write_text(text)
    listed = {status["toy_id"]: status for status in store.list_jobs()}
    assert listed[damaged]["state"] == "failed" and "damaged" in listed[damaged]["error"]
    assert listed[sound]["state"] != "failed"


def test_ids_are_checked_and_unknown_ones_refused(store):
    for wrong in ("../etc", "20261207-101500-zzzzzz", "", None):
        with pytest.raises(UserError, match="There is no toy job"):
            store.job_dir(wrong)


def test_a_job_is_listed_only_once_committed_and_the_sweep_takes_dead_staging_and_old_jobs(store):
    job_id = store.new_id()
    store.write_job(job_id, {"what": "toy"}, {}, commit=False)
    assert store.list_jobs() == []
    store.commit(job_id)
    assert [status["toy_id"] for status in store.list_jobs()] == [job_id]
    dead = store.root / ".new-20261207-101500-abcdef-4194300"  # prepared by a process that is gone
    dead.mkdir()
    files.update_status(store.job_dir(job_id), state="completed", finished=time.time() - 100)
    assert store.sweep() == 1 and not dead.exists() and store.job_dir(job_id)
    assert store.sweep(keep_seconds=1000) == 0
    assert store.sweep(keep_seconds=10) == 1 and store.list_jobs() == []
