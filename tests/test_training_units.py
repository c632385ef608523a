"""Training building blocks in-process: parameters, packing, atomic checkpoints and resuming from them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llama_space.errors import UserError
from llama_space.training import checkpoints
from llama_space.training.params import DEFAULT_TARGETS, PRESETS, TrainingParams


def test_params_defaults_match_the_issue():
    p = TrainingParams()
    assert (p.lora_r, p.lora_alpha, p.lora_dropout) == (8, 32, 0.1)
    assert p.target_modules == list(DEFAULT_TARGETS)
    assert (p.learning_rate, p.num_epochs, p.batch_size, p.grad_accum, p.max_length) == (1e-4, 3, 4, 4, 384)
    assert p.max_steps is None and p.eval_fraction == 0


@pytest.mark.parametrize("field, value", [
    ("lora_r", 0), ("lora_r", 2.5), ("lora_dropout", 1.0), ("learning_rate", 0), ("learning_rate", float("nan")),
    ("batch_size", True), ("grad_accum", -1), ("max_length", 8), ("eval_fraction", 0.9), ("max_steps", -3),
    ("target_modules", []), ("target_modules", ["q_proj; rm -rf"]), ("gradient_checkpointing", "maybe"),
])
def test_params_out_of_range_are_user_errors(field, value):
    with pytest.raises(UserError, match=field):
        TrainingParams(**{field: value})


def test_params_round_trip_coercion_and_presets():
    p = TrainingParams(batch_size=2.0, max_steps=0, target_modules="q_proj, v_proj")
    assert (p.batch_size, p.max_steps, p.target_modules) == (2, None, ["q_proj", "v_proj"])
    assert TrainingParams.from_dict(json.loads(json.dumps(p.to_dict()))) == p
    with pytest.raises(UserError, match="unknown training parameter.*lr"):
        TrainingParams.from_dict({"lr": 1})
    quick = TrainingParams.preset("quick", seed=7)
    assert quick.learning_rate > TrainingParams().learning_rate and quick.grad_accum == 1
    assert quick.max_steps and quick.max_length == 256 and quick.seed == 7
    assert set(PRESETS) >= {"quick", "standard"}
    with pytest.raises(UserError, match="unknown preset"):
        TrainingParams.preset("turbo")


def test_packed_logits_equal_per_row_logits(tiny_model_dir, tmp_path):
    import torch

    from llama_space.training.collate import packing_collator
    from llama_space.training.lora import load_base

    model, _ = load_base(str(tiny_model_dir), tmp_path)
    assert model.config.use_cache is False  # with a cache, packed rows would attend to each other
    rows = [list(range(5, 5 + n)) for n in (7, 3, 12)]
    batch = packing_collator()([{"input_ids": r, "labels": r} for r in rows])
    assert "attention_mask" not in batch and batch["input_ids"].shape == (1, 22)
    assert batch["position_ids"][0].tolist() == list(range(7)) + list(range(3)) + list(range(12))
    assert [batch["labels"][0, i].item() for i in (0, 7, 10)] == [-100] * 3  # nothing predicted across rows
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits[0]
        start = 0
        for row in rows:
            alone = model(input_ids=torch.tensor([row])).logits[0]
            torch.testing.assert_close(packed[start:start + len(row)], alone, atol=1e-5, rtol=1e-4)
            start += len(row)


def _fake_checkpoint(root: Path, step: int) -> Path:
    path = root / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "trainer_state.json").write_text("{}")
    return path


def test_incomplete_checkpoint_writes_are_ignored_and_cleaned(tmp_path):
    old = _fake_checkpoint(tmp_path, 2)
    partial = checkpoints.staging_dir(tmp_path, 4)  # what a kill -9 during a save leaves
    (partial / "checkpoint-4").mkdir(parents=True)
    (partial / "checkpoint-4" / "adapter_model.safetensors").write_bytes(b"half")
    (tmp_path / "checkpoint-6").mkdir()  # no trainer_state.json: not a complete checkpoint
    assert checkpoints.latest(tmp_path) == old
    written = tmp_path / "incoming"
    written.mkdir()
    (written / "trainer_state.json").write_text("{}")
    checkpoints.publish(written, tmp_path, 8)
    assert checkpoints.latest(tmp_path) == tmp_path / "checkpoint-8"
    assert not partial.exists()
    _fake_checkpoint(tmp_path, 10)
    checkpoints.prune(tmp_path)
    assert [p.name for p in checkpoints.complete(tmp_path)] == ["checkpoint-8", "checkpoint-10"]


def _rows(tokenizer, n=16):
    rows = []
    for i in range(n):
        ids = tokenizer(f"question {i} answer {i * 7} " * (1 + i % 3))["input_ids"]
        rows.append({"input_ids": ids, "labels": [-100] * 3 + ids[3:]})
    return rows


def _trainer(tiny_model_dir, tmp_path, max_steps):
    from transformers import TrainerCallback, set_seed

    from llama_space.training.lora import add_lora, load_base
    from llama_space.training.methods import get_method

    set_seed(0)
    model, tokenizer = load_base(str(tiny_model_dir), tmp_path)
    params = TrainingParams(max_steps=max_steps, save_steps=2, batch_size=2, grad_accum=2, learning_rate=1e-2)
    return get_method("sft").build_trainer(add_lora(model, params), tokenizer, params,
                                           checkpoints_dir=tmp_path / "checkpoints", train_rows=_rows(tokenizer),
                                           eval_rows=[], callback=TrainerCallback(), activation_checkpointing=False)


class SimulatedKill(Exception):
    """Stands in for a kill -9 in the middle of writing a checkpoint."""


def test_crash_while_saving_keeps_previous_checkpoint_and_resume_works(tiny_model_dir, tmp_path, monkeypatch):
    from llama_space.training.trainer import JobTrainer

    trainer = _trainer(tiny_model_dir, tmp_path, max_steps=4)
    real_save_rng = JobTrainer._save_rng_state

    def crash_at_step_4(self, output_dir):
        real_save_rng(self, output_dir)
        if self.state.global_step == 4:  # model and optimizer are written, trainer state is not
            raise SimulatedKill

    monkeypatch.setattr(JobTrainer, "_save_rng_state", crash_at_step_4)
    with pytest.raises(SimulatedKill):
        trainer.train()
    ckpts = tmp_path / "checkpoints"
    assert checkpoints.latest(ckpts) == ckpts / "checkpoint-2"
    assert (ckpts / ".tmp-checkpoint-4" / "checkpoint-4" / "optimizer.pt").is_file()
    assert not (ckpts / "checkpoint-4").exists()

    monkeypatch.setattr(JobTrainer, "_save_rng_state", real_save_rng)
    resumed = _trainer(tiny_model_dir, tmp_path, max_steps=4)
    resumed.train(resume_from_checkpoint=str(checkpoints.latest(ckpts)))
    assert resumed.state.global_step == 4
    assert [p.name for p in checkpoints.complete(ckpts)] == ["checkpoint-2", "checkpoint-4"]
    assert not list(ckpts.glob(".tmp-*"))
    assert {p.name for p in (ckpts / "checkpoint-4").iterdir()} >= {
        "adapter_config.json", "adapter_model.safetensors", "optimizer.pt", "rng_state.pth", "scheduler.pt",
        "trainer_state.json"}


def test_loss_on_trained_positions_only_equals_the_full_loss(tiny_model_dir, tmp_path):
    import torch
    from transformers import AutoTokenizer

    from llama_space.training.collate import packing_collator

    trainer = _trainer(tiny_model_dir, tmp_path, max_steps=1)
    model = trainer.model.eval()
    rows = _rows(AutoTokenizer.from_pretrained(tiny_model_dir), n=3)
    batch = packing_collator()(rows)
    trained = int((batch["labels"][:, 1:] != -100).sum())
    with torch.no_grad():
        reference = model(**batch).loss  # transformers' own loss: logits at every position
        ours = trainer.compute_loss(model, dict(batch))
        ours_step = trainer.compute_loss(model, dict(batch), num_items_in_batch=torch.tensor(trained * 2))
    torch.testing.assert_close(ours, reference)
    torch.testing.assert_close(ours_step * 2, reference)  # normalised by the whole step's labelled tokens


def test_publish_refuses_a_name_taken_during_training_and_keeps_the_adapter(tiny_model_dir, tmp_path):
    from llama_space import adapters
    from llama_space.training.train import publish

    trainer = _trainer(tiny_model_dir, tmp_path, max_steps=1)
    taken = tmp_path / "adapters" / "mine"
    taken.mkdir(parents=True)
    (taken / "adapter_model.safetensors").write_bytes(b"someone else's")
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    with pytest.raises(UserError, match="'mine' exists; choose another name or delete it.*kept in"):
        publish(trainer.model, job_dir, tmp_path / "adapters", "mine", {"base_model": "tiny"})
    assert (taken / "adapter_model.safetensors").read_bytes() == b"someone else's"
    assert sorted(p.name for p in (job_dir / "adapter").iterdir()) == sorted(
        [adapters.CONFIG_FILE, adapters.WEIGHTS_FILE, adapters.METADATA_FILE])
    assert not list((tmp_path / "adapters").glob(".tmp-*"))


def test_unknown_lora_targets_name_the_real_linear_layers(tiny_model_dir, tmp_path):
    from llama_space.training.lora import add_lora, load_base

    model, _ = load_base(str(tiny_model_dir), tmp_path)
    with pytest.raises(UserError, match="c_attn.*its linear layers are: .*down_proj.*q_proj"):
        add_lora(model, TrainingParams(target_modules=["c_attn"]))


def test_length_grouped_order_depends_only_on_seed_and_epoch():
    import torch

    from llama_space.training.trainer import EpochSeededLengthSampler

    lengths = [5, 80, 12, 40, 7, 66, 30, 9, 51, 18, 3, 70]

    def order(epoch: int) -> list[int]:
        torch.manual_seed(epoch * 1000 + 1)  # the global RNG (restored differently on resume) must not matter
        sampler = EpochSeededLengthSampler(lengths, batch_size=4, seed=42)
        sampler.set_epoch(epoch)
        return list(sampler)

    assert order(2) == order(2) and sorted(order(2)) == list(range(12))
    assert order(1) != order(2)
