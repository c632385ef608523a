"""The shared placement: a LoRA trained in a thread of the app on the served weights while chat answers."""

from __future__ import annotations

import os
import threading

import pytest

from llama_space.errors import QueueFullError, UserError
from llama_space.inference.admission import Admission, MemoryBoundError
from llama_space.inference.generation_params import GenerationParams
from llama_space.jobs import files as jobfiles
from llama_space.jobs.launcher import in_thread_here
from llama_space.settings import Settings
from llama_space.training import JobRunner, TrainingParams, shared
from llama_space.training.shared_runs import chat_token_bound

from adapterutil import random_adapter
from jobutil import ended, finished, poll, write_alpaca

pytestmark = pytest.mark.slow  # training, export or app runs of many seconds: make test-fast leaves them out

PROMPTS = [[{"role": "user", "content": f"Count to {n}."}] for n in (3, 7)]
GREEDY = GenerationParams(max_new_tokens=12, temperature=0.0)


def shared_params(**overrides) -> TrainingParams:
    values = {"learning_rate": 3e-2, "max_steps": 6, "batch_size": 4, "grad_accum": 1, "save_steps": 3,
              "seed": 3, "placement": "shared"}
    return TrainingParams(**{**values, **overrides})


@pytest.fixture(scope="module")
def served(tiny_model_dir, tmp_path_factory):
    """The tiny model served in fp32 on CPU by a ModelManager, with one adapter loaded (injected in place)."""
    from llama_space.inference.manager import ModelManager

    root = tmp_path_factory.mktemp("shared")
    settings = Settings(model=str(tiny_model_dir), data_dir=root / "data", adapters_dir=root / "adapters",
                        device="cpu", dtype="float32")
    random_adapter(tiny_model_dir, settings.adapters_dir / "served", seed=5)
    manager = ModelManager(settings).load()
    manager.load_adapter("served")
    yield manager, root
    manager.close()


def base_storage(model) -> set[int]:
    return {p.data_ptr() for name, p in model.named_parameters() if "lora_" not in name}


def replies(manager, adapter: str = "") -> list[str]:
    return [manager.generate(messages, GREEDY, adapter) for messages in PROMPTS]


def snapshot(model) -> dict:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def test_training_copy_shares_the_served_storage_without_served_adapters(served):
    import torch

    manager, _ = served
    copy, tokenizer = manager.training_copy()
    served_params = dict(manager.model.named_parameters())
    assert any("lora_" in name for name in served_params)  # the served adapter is injected in place
    assert not any("lora_" in name for name, _ in copy.named_parameters()) and not hasattr(copy, "peft_config")
    for name, param in copy.named_parameters():
        twin = served_params.get(name, served_params.get(name.replace(".weight", ".base_layer.weight")))
        assert param is twin, name
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad(), manager._peft.disable_adapter():
        assert torch.equal(copy(ids).logits, manager._peft(ids).logits)
    assert tokenizer is not manager.tokenizer and tokenizer.chat_template == manager.tokenizer.chat_template


def test_chat_answers_the_same_while_a_shared_job_trains_on_its_weights(served, monkeypatch):
    import torch

    manager, root = served
    trained = []
    copy_of = manager.training_copy
    monkeypatch.setattr(manager, "training_copy", lambda: trained.append(copy_of()) or trained[-1])
    ids = torch.arange(1, 40).unsqueeze(0)

    def served_now():  # greedy replies with and without the served adapter, and the served logits
        with torch.inference_mode():
            logits = manager.model(ids).logits
        return replies(manager), replies(manager, "served"), logits

    before = served_now()
    weights = snapshot(manager.model)
    runner = JobRunner(manager.settings, manager)
    job_id = runner.start(write_alpaca(root / "a.jsonl"), "shared-arith", shared_params(max_steps=16))
    during, bounds = [], set()
    while (state := runner.status(job_id)["state"]) in jobfiles.ACTIVE_STATES:
        bounds.add(manager.admission.job_limit if state == "running" else "queued")
        during.append(served_now())
    status = finished(runner, job_id)
    assert status["state"] == "completed", status["error"]
    assert status["placement"] == "shared" and status["plan"]["placement"] == "shared"
    assert status["plan"]["reason"] and status["plan"]["estimate_gb"] > 0
    assert len(during) >= 3
    for reply, adapted, logits in during:
        assert (reply, adapted) == before[:2] and torch.equal(logits, before[2])
    # Chat's KV cache was bounded beside the job by the memory its plan left, and is free again after it.
    assert bounds - {"queued", None} == {chat_token_bound(status["plan"])} and chat_token_bound(status["plan"]) > 0
    assert manager.admission.job_limit is None
    tree, _ = trained[0]  # the tree the job trained, LoRA injected: its base weights are the served storage
    assert sum("lora_" in name for name, _ in tree.named_parameters()) > 0
    assert base_storage(tree) == base_storage(manager.model)
    assert all(p.equal(weights[n]) for n, p in manager.model.named_parameters())
    assert "published adapter 'shared-arith'" in status["log_tail"]
    assert replies(manager, "shared-arith") != before[0]  # the new adapter answers, and differently
    assert replies(manager) == before[0]


def test_a_shared_job_trains_the_same_with_sampled_chat_beside_it(tiny_model_dir, tmp_path):
    """LoRA dropout and gradient checkpointing's replay draw from torch's global generator in the training thread:
    sampled and seeded replies served one at a time meanwhile must not move it (fp32, CPU)."""
    import torch
    from safetensors.torch import load_file

    from llama_space import adapters
    from llama_space.inference.manager import ModelManager

    settings = Settings(model=str(tiny_model_dir), data_dir=tmp_path / "data", adapters_dir=tmp_path / "adapters",
                        device="cpu", dtype="float32", concurrency=1)
    manager = ModelManager(settings).load()
    data = write_alpaca(tmp_path / "d.jsonl")
    params = shared_params(max_steps=6, lora_dropout=0.3, gradient_checkpointing="on")
    sampled = [GenerationParams(max_new_tokens=8, temperature=0.9, seed=seed) for seed in (None, 5)]

    def trained(name: str, chat: bool) -> dict:
        runner = JobRunner(settings, manager)
        job_id = runner.start(data, name, params)
        chats = 0
        while chat and runner.status(job_id)["state"] in jobfiles.ACTIVE_STATES:
            manager.generate(PROMPTS[0], sampled[chats % 2])
            chats += 1
        status = finished(runner, job_id)
        assert status["state"] == "completed", status["error"]
        assert not chat or chats >= 2
        return load_file(settings.adapters_dir / name / adapters.WEIGHTS_FILE)

    alone, beside = trained("alone", chat=False), trained("beside", chat=True)
    assert alone.keys() == beside.keys()
    for name, weight in alone.items():
        assert torch.allclose(weight, beside[name], rtol=0, atol=1e-6), name
    manager.close()


def test_out_of_memory_in_a_step_fails_the_job_not_the_app(served, monkeypatch):
    from llama_space.training.trainer import JobTrainer

    manager, root = served
    before = replies(manager)

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(JobTrainer, "training_step", out_of_memory)
    runner = JobRunner(manager.settings, manager)
    job_id = runner.start(write_alpaca(root / "o.jsonl"), "oom", shared_params())
    status = finished(runner, job_id)
    assert status["state"] == "failed" and status["error"].startswith("Out of memory")
    assert "batch_size" in status["error"] and "Traceback" not in status["error"]
    assert replies(manager) == before and manager.admission.job_limit is None
    assert not in_thread_here(runner.registry.job_dir(job_id))
    again = runner.start(write_alpaca(root / "o2.jsonl"), "oom2", shared_params())  # not busy any more
    assert finished(runner, again)["state"] == "failed"


def test_cancel_and_an_app_restart_resume(served):
    manager, root = served
    runner = JobRunner(manager.settings, manager)
    data = write_alpaca(root / "r.jsonl", rows=48)
    job_id = runner.start(data, "resumed", shared_params(max_steps=40, save_steps=2))
    poll("a checkpoint", lambda: runner.status(job_id)["checkpoint_step"])
    runner.close()  # the app ends: checkpoint and stop
    status = runner.status(job_id)
    assert status["state"] == "interrupted" and status["resumable"], status
    stopped_at = status["step"]
    assert status["checkpoint_step"] == stopped_at  # the stop wrote a checkpoint of its own
    restarted = JobRunner(manager.settings, manager)  # the next start resumes it by itself
    assert restarted.status(job_id)["state"] in jobfiles.ACTIVE_STATES
    status = finished(restarted, job_id)
    assert status["state"] == "completed", status["error"]
    steps = [m["step"] for m in restarted.metrics(job_id) if "loss" in m]
    assert steps == list(range(1, 41))
    log = (runner.registry.job_dir(job_id) / jobfiles.LOG_FILE).read_text()
    assert f"resuming from {runner.registry.job_dir(job_id) / jobfiles.CHECKPOINTS_DIR}" in log

    job_id = restarted.start(data, "cancelled", shared_params(max_steps=400, save_steps=2))
    poll("a running step", lambda: (restarted.status(job_id)["step"] or 0) >= 1)
    restarted.cancel(job_id)
    status = finished(restarted, job_id)
    assert status["state"] == "cancelled"
    assert not (restarted.registry.job_dir(job_id) / jobfiles.CHECKPOINTS_DIR).exists()
    assert "cancelled" not in manager.list_adapters()


def test_a_dead_apps_shared_job_is_interrupted_and_a_live_ones_is_not(served, tmp_path):
    manager, _ = served
    runner = JobRunner(Settings(model=manager.settings.model, data_dir=tmp_path, adapters_dir=tmp_path / "a"))
    job_id = runner.registry.create(write_alpaca(tmp_path / "d.jsonl"), "x", shared_params(),
                                    {"placement": "shared"})
    job_dir = runner.registry.job_dir(job_id)
    here = runner.registry.status(job_id)  # queued by this process, but no thread of it trains the job
    assert here["state"] == "interrupted"
    parent = os.getppid()
    start = shared_process_start(parent)
    jobfiles.update_status(job_dir, state="running", pid=parent, process_start=start)
    assert runner.status(job_id)["state"] == "running"  # another live app trains it
    jobfiles.update_status(job_dir, state="running", pid=parent, process_start=start + 1)
    assert runner.status(job_id)["state"] == "interrupted"  # that pid is another process now
    with pytest.raises(UserError, match="placement process"):
        runner.resume(job_id)  # no served model in this runner


def shared_process_start(pid: int) -> int:
    from llama_space.jobs.processes import process_start

    return process_start(pid)


def test_the_training_thread_leaves_chat_cores_and_priority():
    import torch

    seen = {}

    def train_side():
        with shared.yield_cpu_to_chat():
            seen["threads"] = torch.get_num_threads()
            seen["nice"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
            in_thread("started_meanwhile")
        in_thread("started_after")

    def in_thread(key):  # what a thread started now begins with
        probe = threading.Thread(target=lambda: seen.setdefault(key, torch.get_num_threads()))
        probe.start()
        probe.join()

    # torch keeps two counts: each thread's own (this one's is chat's, untouched by the job) and the one a new
    # thread begins with, which is the last count any thread set (chat's ThreadGovernor in the batch engine
    # picks fewer threads while other processes load the machine). They differ after such a decode, so what
    # threads start with after the job is compared with what they started with before it, not with ours.
    main_nice, main_threads = os.getpriority(os.PRIO_PROCESS, threading.get_native_id()), torch.get_num_threads()
    in_thread("started_before")
    thread = threading.Thread(target=train_side)
    thread.start()
    thread.join()
    half, started_before = max(1, (os.cpu_count() or 1) // 2), seen.pop("started_before")
    assert seen == {"threads": half, "nice": main_nice + shared.TRAIN_NICE, "started_meanwhile": half,
                    "started_after": started_before}
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == main_nice
    assert torch.get_num_threads() == main_threads


def test_admission_bounds_kv_tokens_beside_a_job():
    admission = Admission(limit=4, memory_wait=0.3)
    admission.enter(500)
    admission.bound_tokens(800)
    with pytest.raises(MemoryBoundError, match="only 800 fit"):
        admission.enter(900)  # can never fit: refused at once
    with pytest.raises(QueueFullError, match="500 of 800 tokens"):
        admission.enter(400)  # fits alone, not beside the first: waits, then refused
    assert admission.in_flight == 1
    admitted = threading.Event()
    waiter = threading.Thread(target=lambda: (admission.enter(400), admitted.set()))
    admission.memory_wait = 10
    waiter.start()
    assert not admitted.wait(0.2)
    admission.leave(500)  # room now: the waiter goes in
    assert admitted.wait(5)
    waiter.join()
    admission.bound_tokens(None)
    admission.enter(10_000)
    assert (admission.in_flight, admission.tokens_in_use) == (2, 10_400)


def test_a_refused_plan_says_the_numbers(served, monkeypatch):
    from llama_space.model import device_memory

    manager, root = served
    monkeypatch.setattr(device_memory, "free_memory", lambda device: 10**6)
    runner = JobRunner(manager.settings, manager)
    with pytest.raises(UserError, match=r"needs about .* GB, 0\.0 GB free"):
        runner.start(write_alpaca(root / "p.jsonl"), "nope", shared_params(placement="auto"))
    assert not runner.jobs() or all(s["adapter"] != "nope" for s in runner.jobs())


def test_cuda_allocator_setting_is_made_before_torch_unless_the_user_chose_one():
    import subprocess
    import sys

    from llama_space.settings import prepare_cuda_allocator

    from conftest import REPO

    environ = {}
    prepare_cuda_allocator(environ)
    assert environ == {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}
    for name in ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF"):
        chosen = {name: "max_split_size_mb:128"}
        prepare_cuda_allocator(chosen)
        assert chosen == {name: "max_split_size_mb:128"}
    # app.py's start-up, ended by a bad setting: the variable is set, and torch not yet imported.
    probe = ("import os, runpy, sys\nsys.argv = ['app.py', '--port', 'nope']\n"
             "try:\n    runpy.run_path('app.py', run_name='__main__')\nexcept SystemExit:\n    pass\n"
             "print(os.environ.get('PYTORCH_CUDA_ALLOC_CONF'), 'torch' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF")}
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=120, check=False)
    assert out.stdout.split() == ["expandable_segments:True", "False"], out.stderr


def test_a_shared_job_through_the_api_answers_in_chat_and_survives_an_app_restart(tiny_model_dir, tmp_path):
    from gradio_client import Client, handle_file

    from apputil import launched_app

    settings = Settings(model=str(tiny_model_dir), data_dir=tmp_path / "data", adapters_dir=tmp_path / "adapters",
                        device="cpu", dtype="float32")
    greedy = {"prompt": "Count to 3.", "max_new_tokens": 12, "temperature": 0.0}
    with launched_app(settings) as app:
        client = Client(app.url, verbose=False)
        base = client.predict(**greedy, adapter="", api_name="/generate")
        job_id = client.predict(file=handle_file(str(write_alpaca(tmp_path / "d.jsonl"))), adapter_name="sums",
                                preset="quick", max_steps=6, max_length=64, placement="shared",
                                api_name="/start_training")["job_id"]
        assert client.predict(**greedy, adapter="", api_name="/generate") == base  # chat answers meanwhile
        status = poll("the shared job to end",
                      lambda: ended(client.predict(job_id=job_id, api_name="/job_status")), timeout=180)
        assert status["state"] == "completed", status
        assert status["placement"] == "shared" and "shared" in status["plan"]["reason"]
        tuned = client.predict(**greedy, adapter="sums", api_name="/generate")
        assert tuned != base
        streamed = list(client.submit(message="Count to 3.", adapter="sums", max_new_tokens=12, temperature=0.0,
                                      api_name="/chat"))
        assert streamed[-1] == tuned
        assert app.backend.admission.job_limit is None
        later = client.predict(file=handle_file(str(write_alpaca(tmp_path / "e.jsonl"))), adapter_name="later",
                               preset="quick", max_steps=400, save_steps=2, max_length=64, placement="shared",
                               api_name="/start_training")["job_id"]
        poll("a checkpoint", lambda: client.predict(job_id=later, api_name="/job_status")["checkpoint_step"])
    stopped = JobRunner(settings).status(later)  # the app's end checkpointed and stopped it
    assert stopped["state"] == "interrupted" and stopped["checkpoint_step"] == stopped["step"], stopped
    with launched_app(settings) as app:  # and the next start resumes it by itself
        client = Client(app.url, verbose=False)
        assert client.predict(job_id=later, api_name="/job_status")["state"] in jobfiles.ACTIVE_STATES
        poll("steps after the restart",
             lambda: client.predict(job_id=later, api_name="/job_status")["step"] > stopped["step"])
        client.predict(job_id=later, api_name="/cancel_training")
        status = poll("the cancel", lambda: ended(client.predict(job_id=later, api_name="/job_status")))
        assert status["state"] == "cancelled"
