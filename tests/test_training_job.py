"""Real training runs of the tiny model through the job process: publish, cancel, NaN (kill -9 and resume:
test_faults)."""

from __future__ import annotations

import json

import pytest

from llama_space import adapters
from llama_space.errors import UserError
from llama_space.jobs import files as jobfiles
from llama_space.model.source import base_model_name
from llama_space.training import TrainingParams

from jobutil import (
    finished,
    make_runner,
    one_thread_jobs,  # noqa: F401 - an autouse fixture: job processes train on one thread
    poll,
    write_alpaca,
)

pytestmark = pytest.mark.slow  # training, export or app runs of many seconds: make test-fast leaves them out

STATUS_KEYS = {"state", "step", "total_steps", "loss", "eval_loss", "eta_seconds", "adapter", "error", "pid",
               "created", "started", "updated", "finished", "job_id", "resumable", "checkpoint_step",
               "elapsed_seconds", "log_tail"}


@pytest.fixture(scope="module")
def completed(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("completed")
    runner = make_runner(tiny_model_dir, root)
    params = TrainingParams(learning_rate=3e-2, max_steps=12, batch_size=4, grad_accum=1, eval_fraction=0.2,
                            save_steps=4, seed=3)
    job_id = runner.start(write_alpaca(root / "upload.jsonl"), "arith", params)
    return runner, job_id, finished(runner, job_id), params


def test_job_completes_with_status_and_decreasing_loss(completed):
    runner, job_id, status, _ = completed
    assert status["state"] == "completed", status["error"]
    assert STATUS_KEYS <= status.keys()
    assert status["step"] == status["total_steps"] == 12 and status["eta_seconds"] == 0
    assert status["adapter"] == "arith" and status["error"] is None and status["eval_loss"] is not None
    metrics = runner.metrics(job_id)
    losses = [m["loss"] for m in metrics if "loss" in m]
    assert [m["step"] for m in metrics if "loss" in m] == list(range(1, 13))
    assert [m["step"] for m in metrics if "eval_loss" in m] == [4, 8, 12]
    # The tiny model's random tied embeddings cap how far its loss can fall (from ln(49152) = 10.8).
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.1, losses
    eval_losses = [m["eval_loss"] for m in metrics if "eval_loss" in m]
    assert eval_losses == sorted(eval_losses, reverse=True) and eval_losses[-1] < eval_losses[0], eval_losses
    assert "published adapter 'arith'" in status["log_tail"]
    job_dir = runner.registry.job_dir(job_id)
    assert not (job_dir / jobfiles.CHECKPOINTS_DIR).exists()  # cleaned up once the adapter is published


def test_published_adapter_is_complete_loadable_and_only_lora(completed, tiny_model_dir):
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, set_seed

    from llama_space.training.lora import add_lora, load_base

    runner, job_id, _, params = completed
    path = runner.registry.settings.adapters_dir / "arith"
    assert sorted(p.name for p in path.iterdir()) == sorted(
        [adapters.CONFIG_FILE, adapters.WEIGHTS_FILE, adapters.METADATA_FILE])
    assert not list(path.parent.glob(".tmp-*"))
    config = json.loads((path / adapters.CONFIG_FILE).read_text())
    meta = adapters.read_metadata(path)
    assert config["base_model_name_or_path"] == meta["base_model"] == base_model_name(str(tiny_model_dir))
    # The job runs with what it was given, the memory planner's choices filled in (auto resolved).
    recorded, planned = runner.registry.config(job_id)["params"], ("placement", "quantization", "gradient_checkpointing")
    assert meta["job_id"] == job_id and meta["hyperparameters"] == recorded
    assert {k: v for k, v in recorded.items() if k not in planned} == {
        k: v for k, v in params.to_dict().items() if k not in planned}
    assert (recorded["placement"], recorded["quantization"]) == ("process", "none")
    assert meta["dataset_fingerprint"] == runner.registry.config(job_id)["dataset_fingerprint"]
    assert meta["train_loss"] > 0 and meta["eval_loss"] > 0 and meta["steps"] == 12

    trained = load_file(path / adapters.WEIGHTS_FILE)
    assert trained and all("lora_A" in k or "lora_B" in k for k in trained)  # no base weights inside
    assert all(v.abs().max() > 0 for k, v in trained.items() if "lora_B" in k)  # B starts at zero
    set_seed(params.seed)  # the job's LoRA initialisation, rebuilt
    initial = {k: v for k, v in add_lora(load_base(str(tiny_model_dir), tiny_model_dir)[0], params).state_dict().items()
               if "lora_A" in k}
    changed = [k for k, v in initial.items() if not torch.allclose(v, trained[k.replace(".default", "")])]
    assert len(changed) == len(initial) > 0

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    reference = {k: v.clone() for k, v in base.state_dict().items()}
    model = PeftModel.from_pretrained(base, path)
    for name, value in model.get_base_model().state_dict().items():
        if "lora_" not in name:
            assert torch.equal(value, reference[name.replace(".base_layer", "")]), name
    ids = torch.tensor([[1, 20, 300, 4000]])
    with torch.no_grad(), model.disable_adapter():
        plain = model(ids).logits
    with torch.no_grad():
        adapted = model(ids).logits
    assert not torch.allclose(plain, adapted)


def test_cancel_stops_within_a_step_and_publishes_nothing(tiny_model_dir, tmp_path):
    runner = make_runner(tiny_model_dir, tmp_path)
    data = write_alpaca(tmp_path / "d.jsonl")
    job_id = runner.start(data, "never", TrainingParams(max_steps=500, batch_size=2, grad_accum=2, save_steps=2))
    with pytest.raises(UserError, match=f"already running \\(job {job_id}\\)"):
        runner.start(data, "second", {"max_steps": 2})
    seen = poll("a few training steps", lambda: (s := runner.status(job_id))["state"] == "running"
                and s["step"] >= 3 and s, timeout=90, interval=0.05)
    runner.cancel(job_id)
    status = finished(runner, job_id)
    assert status["state"] == "cancelled" and status["error"] is None
    assert status["step"] <= seen["step"] + 2  # the step in flight, plus one racing our status read
    assert not (tmp_path / "adapters" / "never").exists() and adapters.list_names(tmp_path / "adapters") == []
    assert not (runner.registry.job_dir(job_id) / jobfiles.CHECKPOINTS_DIR).exists()


def test_nan_loss_fails_with_a_clear_error(tiny_model_dir, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    broken = tmp_path / "nan-model"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        model.model.norm.weight.fill_(float("nan"))
    model.save_pretrained(broken)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(broken)
    runner = make_runner(broken, tmp_path)
    job_id = runner.start(write_alpaca(tmp_path / "d.jsonl"), "nan", TrainingParams(max_steps=5, save_steps=2))
    status = finished(runner, job_id)
    assert status["state"] == "failed"
    assert "loss became nan at step 1" in status["error"] and "Lower the learning rate" in status["error"]
    assert adapters.list_names(tmp_path / "adapters") == []
    assert json.loads((runner.registry.job_dir(job_id) / jobfiles.STATUS_FILE).read_text())["loss"] is None
