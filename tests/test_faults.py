"""Faults on the tiny model: kill -9 training (also mid-checkpoint) and the app, a disk full at publish, load.

Figures (kills survived, streams held) are written to test-artifacts/fault-figures.json.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from gradio_client import Client, handle_file

from llama_space import adapters
from llama_space.jobs import files as jobfiles
from llama_space.jobs.launcher import job_pid
from llama_space.jobs.processes import pid_alive
from llama_space.settings import Settings
from llama_space.training import JobRunner, TrainingParams
from llama_space.web.janitor import Janitor

from apputil import free_port, launched_app
from conftest import REPO
from jobutil import (
    PERSONA,
    ended,
    finished,
    make_runner,
    one_thread_jobs,  # noqa: F401 - an autouse fixture: job processes train on one thread
    poll,
    write_alpaca,
)

pytestmark = pytest.mark.slow  # training, export or app runs of many seconds: make test-fast leaves them out

ARTIFACTS = REPO / "test-artifacts"
FIGURES: dict = {}
# (learning_rate, num_epochs, max_steps, batch_size, grad_accum, max_length, lora_r, lora_alpha, lora_dropout,
#  eval_fraction, seed) for /start_training; None keeps the quick preset's value (checkpoint every 20 steps).
QUICK_100_STEPS = (None, None, 100, 2, None, 96, None, None, None, None, None)


@pytest.fixture(scope="module", autouse=True)
def fault_figures():
    """Write the figures the tests gathered once they have all run."""
    yield
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "fault-figures.json").write_text(json.dumps(FIGURES, indent=1))


def step_losses(runner: JobRunner, job_id: str) -> dict[int, float]:
    return {m["step"]: m["loss"] for m in runner.metrics(job_id) if "loss" in m}


def adapter_weights(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path / adapters.WEIGHTS_FILE))


def files_digest(path: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.iterdir())}


# ---- kill -9 the training process, again and again --------------------------------------------------------
def wait_and_kill(job_dir: Path, check, timeout: float = 300, interval: float = 0.001) -> dict | None:
    """Kill the job the moment check(status, checkpoint writes in progress) holds; None if it ended first."""
    checkpoints_dir = job_dir / jobfiles.CHECKPOINTS_DIR
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = jobfiles.read_json(job_dir / jobfiles.STATUS_FILE)
        if status.get("state") not in (None, "queued", "running"):
            return None
        try:
            writing = [e.name for e in os.scandir(checkpoints_dir) if e.name.startswith(".tmp-checkpoint-")]
        except FileNotFoundError:
            writing = []
        pid = job_pid(job_dir, status)
        if pid and check(status, writing):
            os.kill(pid, signal.SIGKILL)
            return {"step": status.get("step") or 0, "writing": writing}
        time.sleep(interval)
    raise AssertionError("the moment to kill never came")


def mid_checkpoint(after_step: int):
    """While the checkpoint of a step past `after_step` is being written."""
    return lambda status, writing: any(int(name.rsplit("-", 1)[1]) > after_step for name in writing)


def at_random_moment(after_step: int, rng: random.Random):
    """At a random moment of a random step soon after `after_step`: in a forward or backward pass, an
    optimizer step or a checkpoint write (step-based, so it lands the same way on a fast or a loaded machine)."""
    target, delay, fire_at = after_step + rng.randint(0, 2), rng.uniform(0, 0.08), []

    def check(status, writing) -> bool:
        if not fire_at and (status.get("step") or 0) > target:
            fire_at.append(time.monotonic() + delay)
        return bool(fire_at) and time.monotonic() >= fire_at[0]
    return check


def test_repeated_kill_9_then_resume_matches_an_uninterrupted_run(tiny_model_dir, tmp_path):
    params = TrainingParams(max_steps=30, batch_size=2, grad_accum=2, save_steps=1, learning_rate=1e-2, seed=7)
    data = write_alpaca(tmp_path / "d.jsonl")
    baseline = make_runner(tiny_model_dir, tmp_path / "baseline")
    baseline_id = baseline.start(data, "steady", params)  # its own process: runs beside the killed one

    runner = make_runner(tiny_model_dir, tmp_path / "killed")
    job_id = runner.start(data, "survivor", params)
    job_dir = runner.registry.job_dir(job_id)
    rng = random.Random(1234)
    # (when, after which step): each kill waits for progress past the last one, and none nears the publish.
    plan = [("checkpoint write", 1), ("random", 5), ("checkpoint write", 9), ("random", 13),
            ("checkpoint write", 17), ("random", 21)]
    kills = []
    for moment, after in plan:
        check = mid_checkpoint(after) if moment == "checkpoint write" else at_random_moment(after, rng)
        killed = wait_and_kill(job_dir, check)
        assert killed is not None, f"the job ended before the {moment} kill after step {after}"
        stopped = poll("the job to be marked interrupted", lambda: ended(runner.status(job_id)),  # noqa: B023
                       timeout=180, interval=0.2)
        assert stopped["state"] == "interrupted" and stopped["resumable"], stopped
        left = sorted(p.name for p in (job_dir / jobfiles.CHECKPOINTS_DIR).glob(".tmp-checkpoint-*"))
        if moment == "checkpoint write":
            assert left, "the kill mid-write should leave the half-written checkpoint behind"
            assert stopped["checkpoint_step"] < int(left[-1].rsplit("-", 1)[1])  # never used
        kills.append({"moment": moment, "at_step": killed["step"], "checkpoint_being_written": killed["writing"],
                      "resumed_from_checkpoint": stopped["checkpoint_step"]})
        runner = make_runner(tiny_model_dir, tmp_path / "killed")  # as after an app restart
        runner.resume(job_id)

    done = finished(runner, job_id, timeout=600)
    assert done["state"] == "completed", done["log_tail"]
    reference = finished(baseline, baseline_id, timeout=600)
    assert reference["state"] == "completed", reference["log_tail"]

    # Each resume started from the checkpoint its interruption reported, and steps redone after it are logged once.
    log = (job_dir / jobfiles.LOG_FILE).read_text()
    for kill in kills:
        assert f"resuming from {job_dir}/checkpoints/checkpoint-{kill['resumed_from_checkpoint']}" in log, kill
    assert [m["step"] for m in runner.metrics(job_id) if "loss" in m] == list(range(1, 31))
    assert adapters.list_names(tmp_path / "killed" / "adapters") == ["survivor"]
    resumed, steady = step_losses(runner, job_id), step_losses(baseline, baseline_id)
    assert sorted(resumed) == sorted(steady) == list(range(1, 31))
    worst = max(abs(resumed[s] - steady[s]) for s in steady)
    assert worst < 1e-3, (resumed, steady)
    a = adapter_weights(tmp_path / "killed" / "adapters" / "survivor")
    b = adapter_weights(tmp_path / "baseline" / "adapters" / "steady")
    weight_gap = max((a[k] - b[k]).abs().max().item() for k in b)
    assert a.keys() == b.keys() and weight_gap < 1e-4, weight_gap
    FIGURES["training kills"] = {"kills_survived": len(kills), "kills": kills,
                                 "final_loss_resumed": resumed[30], "final_loss_uninterrupted": steady[30],
                                 "max_step_loss_gap": worst, "max_adapter_weight_gap": weight_gap}


# ---- kill -9 the app and its training process, then restart the app ------------------------------------------
def start_app(model: Path, root: Path, port: int) -> subprocess.Popen:
    log = open(root / f"app-{port}.log", "ab")  # noqa: SIM115 - the app writes to it after this returns
    return subprocess.Popen(
        [sys.executable, "app.py", "--model", str(model), "--port", str(port), "--data-dir", str(root / "data"),
         "--adapters-dir", str(root / "adapters")],
        cwd=REPO, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"})


def wait_until_serving(process: subprocess.Popen, url: str, timeout: float = 300) -> Client:
    def up():
        assert process.poll() is None, f"the app exited with {process.returncode}"
        try:
            return httpx.get(url + "/gradio_api/info", timeout=10).status_code == 200
        except httpx.HTTPError:
            return False

    poll("the app to serve", up, timeout=timeout, interval=0.5)
    return Client(url, verbose=False)


def test_app_and_training_killed_then_resumed_after_restart(tiny_model_dir, tmp_path):
    port = free_port()
    app = start_app(tiny_model_dir, tmp_path, port)
    try:
        client = wait_until_serving(app, f"http://127.0.0.1:{port}")
        job_id = client.predict(handle_file(str(PERSONA)), "restarted", "quick", *QUICK_100_STEPS,
                                api_name="/start_training")["job_id"]
        checkpointed = poll("a checkpoint", lambda: (s := client.predict(job_id, api_name="/job_status"))[
            "checkpoint_step"] and s, timeout=300)
        assert checkpointed["state"] == "running" and checkpointed["step"] < 100, checkpointed
        job_dir = tmp_path / "data" / "jobs" / job_id
        trainer_pid = job_pid(job_dir, jobfiles.read_json(job_dir / jobfiles.STATUS_FILE))
        # A machine restart: the app and the training process die at once, nobody records anything.
        os.kill(app.pid, signal.SIGKILL)
        os.kill(trainer_pid, signal.SIGKILL)
        app.wait(timeout=60)
        poll("the training process to be gone", lambda: not pid_alive(trainer_pid), timeout=60)
        assert jobfiles.read_json(job_dir / jobfiles.STATUS_FILE)["state"] == "running"  # stale on disk

        port = free_port()
        app = start_app(tiny_model_dir, tmp_path, port)
        client = wait_until_serving(app, f"http://127.0.0.1:{port}")
        status = client.predict(job_id, api_name="/job_status")
        assert status["state"] == "interrupted" and status["resumable"], status
        assert status["checkpoint_step"] >= checkpointed["checkpoint_step"]
        client.predict(job_id, api_name="/resume_training")
        done = poll("the resumed job to finish", lambda: ended(client.predict(job_id, api_name="/job_status")),
                    timeout=600, interval=1)
        assert done["state"] == "completed" and done["step"] == done["total_steps"] == 100, done
        assert [a["name"] for a in client.predict(api_name="/list_adapters")] == ["restarted"]
        assert isinstance(client.predict("Hello", "", "restarted", 8, 0.0, 1.0, api_name="/generate"), str)
        FIGURES["app restart"] = {"killed_at_step": checkpointed["step"],
                                  "resumed_from_checkpoint": status["checkpoint_step"], "final_state": done["state"]}
    finally:
        app.kill()
        app.wait(timeout=60)


# ---- a disk full while the adapter is saved ------------------------------------------------------------------
FAULTY_SAVE = '''
import errno
from pathlib import Path

from llama_space.training import lora

_save = lora.save_adapter


def _save_then_disk_full(model, directory, base_model, *args, **kwargs):
    _save(model, directory, base_model, *args, **kwargs)
    weights = Path(directory) / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # the write was cut short
    raise OSError(errno.ENOSPC, "No space left on device")


lora.save_adapter = _save_then_disk_full
'''


def test_failed_save_leaves_the_previous_adapter_intact(tiny_model_dir, tmp_path, monkeypatch):
    import torch
    from safetensors.torch import save_file

    old = tmp_path / "adapters" / "old"
    old.mkdir(parents=True)
    save_file({"base_model.model.lm_head.lora_A.weight": torch.ones(2, 2)}, str(old / adapters.WEIGHTS_FILE))
    (old / adapters.CONFIG_FILE).write_text(json.dumps({"peft_type": "LORA", "r": 2}))
    before = files_digest(old)
    fault = tmp_path / "fault"
    fault.mkdir()
    (fault / "sitecustomize.py").write_text(FAULTY_SAVE)  # loaded by the training process at start-up
    monkeypatch.setenv("PYTHONPATH", str(fault))

    runner = make_runner(tiny_model_dir, tmp_path)
    job_id = runner.start(write_alpaca(tmp_path / "d.jsonl"), "new", TrainingParams(max_steps=3, save_steps=2))
    status = finished(runner, job_id, timeout=300)

    assert status["state"] == "failed", status["log_tail"]
    assert "No space left on device" in status["error"] and status["error"].startswith("Training failed"), status
    assert files_digest(old) == before, "the previous adapter changed"
    assert not (tmp_path / "adapters" / "new").exists()
    assert adapters.list_names(tmp_path / "adapters") == ["old"]
    # The half-written staging dir is hidden from listings and swept once its process is gone.
    janitor = Janitor(runner.registry.settings)
    poll("the staging dir to be swept", lambda: janitor.sweep()["staging"] == 1, timeout=60)
    assert sorted(p.name for p in (tmp_path / "adapters").iterdir()) == ["old"]
    FIGURES["disk full at publish"] = {"state": status["state"], "error": status["error"],
                                       "previous_adapter_intact": True}


# ---- 8 chat streams at once while a job trains ---------------------------------------------------------------
def test_eight_concurrent_streams_while_training(tiny_model_dir, tmp_path):
    from openai import OpenAI

    # float32: batched replies then equal the replies each prompt gets alone, token for token.
    settings = Settings(model=str(tiny_model_dir), adapters_dir=tmp_path / "adapters", data_dir=tmp_path / "data",
                        dtype="float32")
    prompts = [f"Tell me about the number {i}." for i in range(8)]
    with launched_app(settings) as app:
        client = Client(app.url, verbose=False)
        expected = [client.predict(p, "", "", 48, 0.0, 1.0, api_name="/generate") for p in prompts]
        values = (None, None, 100_000, 2, None, 96, None, None, None, None, None)
        job_id = client.predict(handle_file(str(PERSONA)), "busy", "quick", *values,
                                api_name="/start_training")["job_id"]
        poll("training to run", lambda: client.predict(job_id, api_name="/job_status")["step"], timeout=300)

        def gradio_stream(prompt: str) -> tuple[str, int]:
            updates = list(Client(app.url, verbose=False).submit(prompt, [], "", "", 48, 0.0, 1.0, api_name="/chat"))
            return updates[-1], len(updates)

        def openai_stream(prompt: str) -> tuple[str, int]:
            sdk = OpenAI(base_url=f"{app.url}/v1", api_key="unused", max_retries=0, timeout=600)
            chunks = [c.choices[0].delta.content or "" for c in sdk.chat.completions.create(
                model="base", messages=[{"role": "user", "content": prompt}], max_tokens=48, temperature=0,
                stream=True) if c.choices]
            return "".join(chunks), len(chunks)

        started = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(gradio_stream if i % 2 else openai_stream, p) for i, p in enumerate(prompts)]
            results = [f.result(timeout=900) for f in futures]
        elapsed = time.monotonic() - started
        training = client.predict(job_id, api_name="/job_status")
        client.predict(job_id, api_name="/cancel_training")

    assert [text for text, _ in results] == expected  # nothing dropped, cut short or mixed up
    assert all(updates >= 1 for _, updates in results)
    assert training["state"] == "running", training
    FIGURES["concurrent streams"] = {"streams": len(results), "completed": len(results), "errors": 0,
                                     "seconds": round(elapsed, 1), "training_step_after": training["step"]}
