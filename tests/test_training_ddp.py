"""Data-parallel training: the job runner, made to see two GPUs, launches the job under `accelerate launch`;
without GPUs its two processes train on the CPU and talk over gloo. Compared with the same job in one process
with the same global batch."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import NamedTuple

import pytest

from llama_space import adapters
from llama_space.jobs import files as jobfiles
from llama_space.training import JobRunner, TrainingParams, runner

from jobutil import finished, make_runner, poll, write_alpaca

pytestmark = pytest.mark.slow  # training, export or app runs of many seconds: make test-fast leaves them out

# 24 rows, 4 per rank and micro-batch: one epoch is 3 optimizer steps for 2 ranks (6 for one).
PARAMS = {"learning_rate": 3e-2, "num_epochs": 1, "batch_size": 4, "grad_accum": 1, "lora_dropout": 0.0,
          "save_steps": 2, "seed": 3}
# A job starts three Python processes (the launcher and two ranks importing torch and transformers) on the 2 cores that
# parallel test runs share: ~40 s before the first step at a load of 4, more under heavier load. The training itself
# takes seconds; waits fail at once when the job ends, so this bound only stops a hung job.
JOB_TIMEOUT = 300


@pytest.fixture(scope="module", autouse=True)
def two_gpus_visible():
    """The runner launches one process per GPU it sees; two processes share the 2 cores, one thread each."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(runner, "_cuda_devices", lambda: 2)
        patch.setenv("OMP_NUM_THREADS", "1")
        yield


def until_status(runner_: JobRunner, job_id: str, what: str, check) -> dict:
    """The job's status once `check(status)` holds; fails at once if the job ends before."""
    def probe():
        status = runner_.status(job_id)
        if check(status):
            return status
        assert status["state"] in jobfiles.ACTIVE_STATES, f"the job ended before {what}: {status}"
    return poll(what, probe, timeout=JOB_TIMEOUT, interval=0.05)


def job_processes(job_dir: Path) -> list[int]:
    """Pids of the live processes whose command line names the job: the launcher and each rank."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and job_dir.name.encode() in (proc / "cmdline").read_bytes():
                found.append(int(proc.name))
        except OSError:  # ended meanwhile
            continue
    return found


def ended_and_exited(runner_: JobRunner, job_id: str) -> dict:
    """The job's final status once every process of the job has exited too.

    Rank 0 records how the job ended before it logs that and leaves, and the other ranks and the launcher exit after
    it: only then is the log complete, with whatever a rank or torchrun wrote on the way out.
    """
    status = finished(runner_, job_id, timeout=JOB_TIMEOUT)
    poll("every process of the job to exit", lambda: not job_processes(runner_.registry.job_dir(job_id)), timeout=60)
    return status


class Run(NamedTuple):
    runner: JobRunner
    job_id: str
    status: dict  # once ended
    adapter: Path  # where it publishes

    @property
    def job_dir(self) -> Path:
        return self.runner.registry.job_dir(self.job_id)


@pytest.fixture(scope="module")
def runs(tiny_model_dir, tmp_path_factory) -> dict[int, Run]:
    """The same job trained by 2 processes of 4 rows per micro-batch and by 1 process of 8 rows, side by side."""
    started = {}
    for processes, batch_size in ((2, 4), (1, 8)):
        root = tmp_path_factory.mktemp(f"processes-{processes}")
        job_runner_ = make_runner(tiny_model_dir, root)
        params = TrainingParams(**{**PARAMS, "batch_size": batch_size})
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(runner, "_cuda_devices", lambda processes=processes: processes)
            started[processes] = job_runner_, job_runner_.start(write_alpaca(root / "sums.jsonl"), "sums", params), root
    return {processes: Run(job_runner_, job_id, ended_and_exited(job_runner_, job_id), root / "adapters" / "sums")
            for processes, (job_runner_, job_id, root) in started.items()}


def test_two_ranks_shard_each_step_and_rank_0_alone_reports(runs):
    ddp = runs[2]
    assert ddp.status["state"] == "completed", ddp.status["error"]
    # 3 steps, not 6: each step took 4 rows on each of 2 ranks.
    assert ddp.status["processes"] == 2 and ddp.status["step"] == ddp.status["total_steps"] == 3
    assert [m["step"] for m in ddp.runner.metrics(ddp.job_id) if "loss" in m] == [1, 2, 3]  # written once a step
    log = (ddp.job_dir / jobfiles.LOG_FILE).read_text()
    for rank in (0, 1):
        assert f"INFO [rank {rank}/2] llama_space.training: device cpu" in log
        assert f"INFO [rank {rank}/2] llama_space.training.progress: training: step 0 of 3" in log
    assert log.count("published adapter 'sums'") == log.count("[rank 0/2] llama_space.training: job ") == 1
    assert "[rank 1/2] llama_space.training.progress: step" not in log and "Traceback" not in log
    assert sorted(p.name for p in ddp.job_dir.iterdir()) == sorted(  # no checkpoints left, no stray temp files
        [jobfiles.JOB_FILE, jobfiles.STATUS_FILE, jobfiles.METRICS_FILE, jobfiles.LOG_FILE, jobfiles.PID_FILE,
         "dataset.jsonl"])


def test_published_adapter_has_the_single_process_files(runs):
    assert runs[1].status["state"] == "completed" and runs[1].status["total_steps"] == 3, runs[1].status["error"]
    published = {processes: run.adapter for processes, run in runs.items()}
    for path in published.values():
        assert [p.name for p in path.parent.iterdir()] == ["sums"]  # one copy, no staging dir left behind
    assert sorted(p.name for p in published[2].iterdir()) == sorted(p.name for p in published[1].iterdir()) == sorted(
        [adapters.CONFIG_FILE, adapters.WEIGHTS_FILE, adapters.METADATA_FILE])
    configs = [json.loads((path / adapters.CONFIG_FILE).read_text()) for path in published.values()]
    for config in configs:
        config["target_modules"] = sorted(config["target_modules"])  # PEFT writes a set in hash order
    assert configs[0] == configs[1]
    meta = {processes: adapters.read_metadata(path) for processes, path in published.items()}
    assert (meta[2]["processes"], meta[1]["processes"]) == (2, 1) and meta[2]["steps"] == meta[1]["steps"] == 3


def test_lora_weights_trained_and_equal_to_one_process_with_the_global_batch(runs, tiny_model_dir):
    import torch
    from safetensors.torch import load_file
    from transformers import set_seed

    from llama_space.training.lora import add_lora, load_base

    weights = {processes: load_file(run.adapter / adapters.WEIGHTS_FILE) for processes, run in runs.items()}
    ddp = weights[2]
    assert ddp and all("lora_A" in k or "lora_B" in k for k in ddp)
    assert all(torch.isfinite(v).all() for v in ddp.values())
    assert all(v.abs().max() > 0 for k, v in ddp.items() if "lora_B" in k)  # B starts at zero
    set_seed(PARAMS["seed"])  # the job's LoRA initialisation, rebuilt
    params = TrainingParams(**PARAMS)
    initial = {k.replace(".default", ""): v for k, v in
               add_lora(load_base(str(tiny_model_dir), tiny_model_dir)[0], params).state_dict().items() if "lora_" in k}
    assert initial.keys() == ddp.keys()
    assert all(not torch.allclose(v, ddp[k]) for k, v in initial.items() if "lora_A" in k)
    # Same rows per step, gradients averaged over the ranks: the same training up to float rounding.
    for name, value in ddp.items():
        torch.testing.assert_close(value, weights[1][name], rtol=1e-4, atol=1e-5)
    logged = {processes: [m[key] for m in run.runner.metrics(run.job_id) if "loss" in m
                          for key in ("loss", "grad_norm")] for processes, run in runs.items()}
    assert logged[2] == pytest.approx(logged[1], rel=1e-4)  # the loss scale is right, not just Adam-normalised


def test_cancel_stops_every_rank(tiny_model_dir, tmp_path):
    job_runner_ = make_runner(tiny_model_dir, tmp_path)
    job_id = job_runner_.start(write_alpaca(tmp_path / "d.jsonl"), "never",
                               TrainingParams(**{**PARAMS, "num_epochs": 100, "batch_size": 2, "grad_accum": 2}))
    job_dir = job_runner_.registry.job_dir(job_id)
    until_status(job_runner_, job_id, "a few steps", lambda s: s["step"] >= 3)
    job_runner_.cancel(job_id)
    status = ended_and_exited(job_runner_, job_id)
    assert status["state"] == "cancelled" and status["error"] is None
    log = (job_dir / jobfiles.LOG_FILE).read_text()
    assert "Traceback" not in log and "ChildFailedError" not in log  # no rank was left waiting, none failed
    assert not (job_dir / jobfiles.CHECKPOINTS_DIR).exists() and not (tmp_path / "adapters" / "never").exists()


def test_ranks_outlive_a_killed_launcher_and_a_killed_job_resumes_on_both(tiny_model_dir, tmp_path):
    job_runner_ = make_runner(tiny_model_dir, tmp_path)
    params = TrainingParams(**{**PARAMS, "num_epochs": 12, "batch_size": 2, "grad_accum": 2, "save_steps": 3})
    job_id = job_runner_.start(write_alpaca(tmp_path / "d.jsonl"), "survivor", params)
    job_dir = job_runner_.registry.job_dir(job_id)
    until_status(job_runner_, job_id, "a checkpoint", lambda s: s["checkpoint_step"] and s["step"] < 30)
    launcher = int((job_dir / jobfiles.PID_FILE).read_text())
    ranks = [pid for pid in job_processes(job_dir) if pid != launcher]
    assert len(ranks) == 2, ranks
    try:
        for pid in ranks:
            os.kill(pid, signal.SIGSTOP)  # hold the training where it is
        os.kill(launcher, signal.SIGKILL)
        poll("the runner to reap the launcher",
             lambda: f"reap-{job_id}" not in {t.name for t in threading.enumerate()})
        assert job_runner_.status(job_id)["state"] == "running"  # rank 0 still holds the job: no resume allowed
    finally:
        for pid in ranks:
            os.kill(pid, signal.SIGKILL)
    status = until_status(job_runner_, job_id, "the job to be marked interrupted",
                          lambda s: s["state"] == "interrupted")
    checkpoint = status["checkpoint_step"]
    assert status["resumable"] and checkpoint >= 3
    job_runner_.resume(job_id)
    status = ended_and_exited(job_runner_, job_id)
    assert status["state"] == "completed" and status["step"] == status["total_steps"] == 36, status["error"]
    log = (job_dir / jobfiles.LOG_FILE).read_text()
    for rank in (0, 1):
        assert (f"[rank {rank}/2] llama_space.training: device cpu:0; resuming from "
                f"{job_dir}/checkpoints/checkpoint-{checkpoint}") in log
    assert [m["step"] for m in job_runner_.metrics(job_id) if "loss" in m] == list(range(1, 37))
    assert adapters.list_names(tmp_path / "adapters") == ["survivor"]


def _stop_vote(rank: int, rendezvous: str) -> None:
    """One of two gloo ranks: only rank 1 saw the cancel file, yet both must stop after this micro-batch."""
    from types import SimpleNamespace

    import torch.distributed as dist
    from transformers import TrainerControl

    from llama_space.training.trainer import StopTogether, any_rank

    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=2)
    try:
        control = TrainerControl(should_training_stop=rank == 1)
        StopTogether().on_substep_end(SimpleNamespace(device="cpu"), None, control)
        assert control.should_training_stop
        assert any_rank(False) is False and any_rank(rank == 0) is True
    finally:
        dist.destroy_process_group()


def test_a_stop_seen_by_one_rank_stops_both(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_stop_vote, args=(str(tmp_path / "rendezvous"),), nprocs=2)  # raises if a rank's assertion fails


def _leave_when_done(rank: int, rendezvous: str) -> None:
    """One of two gloo ranks at the end of a job: rank 1 is done at once, rank 0 (publishing) a second later."""
    import time

    import torch.distributed as dist

    from llama_space.training.train import leave_ranks

    os.environ["WORLD_SIZE"] = "2"  # as torchrun sets it
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=2)
    start = time.monotonic()
    if rank == 0:
        time.sleep(1)
    leave_ranks(finished=True)
    assert time.monotonic() - start > 0.5  # rank 1 waited for rank 0 rather than exit right after its last collective
    assert not dist.is_initialized()


def test_a_rank_that_finished_waits_for_the_others_and_leaves_the_group(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_leave_when_done, args=(str(tmp_path / "rendezvous"),), nprocs=2)  # raises if a rank's assertion fails


@pytest.mark.parametrize("gpus, launched", [(0, False), (1, False), (4, True)])
def test_runner_launches_one_process_per_gpu_through_accelerate(monkeypatch, tmp_path, gpus, launched):
    monkeypatch.setattr(runner, "_cuda_devices", lambda: gpus)
    command = runner.train_command(tmp_path, resume=True)
    assert command[0] == sys.executable and command[-5:] == [
        "-m", runner.TRAIN_MODULE, "--job-dir", str(tmp_path), "--resume"]
    if launched:
        assert command[1:3] == ["-m", "accelerate.commands.launch"] and "--multi_gpu" in command
        assert command[command.index("--num_processes") + 1] == "4"
        assert command[command.index("--main_process_port") + 1] == "0"  # a free port: jobs and tests may overlap
    else:
        assert command == [sys.executable, "-m", runner.TRAIN_MODULE, "--job-dir", str(tmp_path), "--resume"]
