"""Helpers for tests that train real jobs and wait on background work.

    from jobutil import finished, make_runner, one_thread_jobs, write_alpaca

    def test_it_trains(tiny_model_dir, tmp_path):
        runner = make_runner(tiny_model_dir, tmp_path)
        job_id = runner.start(write_alpaca(tmp_path / "d.jsonl"), "name", TrainingParams(max_steps=3))
        assert finished(runner, job_id)["state"] == "completed"

Importing the `one_thread_jobs` fixture makes it autouse in the importing module.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

from llama_space.jobs import files as jobfiles
from llama_space.settings import Settings
from llama_space.training import JobRunner

from conftest import REPO

PERSONA = REPO / "examples" / "persona.jsonl"  # the bundled 96-row persona data set

T = TypeVar("T")


@pytest.fixture(scope="module", autouse=True)
def one_thread_jobs():
    """Job processes inherit this: the tiny model trains fastest on one thread, and parallel runs don't fight."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")
        yield


def poll(what: str, check: Callable[[], T], timeout: float = 120, interval: float = 0.25) -> T:
    """check()'s first truthy value within `timeout` seconds, else fail saying what never happened."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for: {what}")
        time.sleep(interval)


def ended(status: dict) -> dict | None:
    """`status` once its job no longer queues or runs, else None (a check for `poll`)."""
    return None if status.get("state") in jobfiles.ACTIVE_STATES else status


def write_alpaca(path: Path, rows: int = 24) -> Path:
    """An Alpaca-format JSONL file of `rows` sums, for training the tiny model."""
    with open(path, "w") as f:
        f.writelines(json.dumps({"instruction": f"What is {i} plus {i}?", "output": f"{i} plus {i} is {2 * i}."}) + "\n" for i in range(rows))
    return path


def make_runner(model: Path, root: Path) -> JobRunner:
    """A job runner for `model` with its data and adapters under `root` (a new one is an app restart)."""
    return JobRunner(Settings(model=str(model), data_dir=root / "data", adapters_dir=root / "adapters"))


def finished(runner: JobRunner, job_id: str, timeout: float = 120) -> dict:
    """The job's status once it has ended; fails showing the log tail if it still runs after `timeout` s."""
    status = runner.wait(job_id, timeout=timeout, poll=0.2)
    assert status["state"] not in jobfiles.ACTIVE_STATES, status["log_tail"]
    return status
