"""The chunked training loss equals the plain cross-entropy, gradients included, and keeps no full logits."""

from __future__ import annotations

import pytest
import torch
from transformers import TrainerCallback

from llama_space.data import IGNORE_INDEX
from llama_space.training.collate import packing_collator
from llama_space.training.lora import add_lora, load_base
from llama_space.training.methods import get_method
from llama_space.training.params import DEFAULT_TARGETS, TrainingParams


def lora_trainer(model_dir, tmp_path, targets):
    """SFT's trainer on the tiny model with a LoRA whose B matrices are random, so every LoRA weight has a gradient."""
    torch.manual_seed(0)
    model, tokenizer = load_base(str(model_dir), tmp_path / "cache")
    model = add_lora(model, TrainingParams(lora_dropout=0.0, target_modules=list(targets)))
    for name, param in model.named_parameters():
        if "lora_B" in name:
            param.data.normal_(std=0.02)
    trainer = get_method("sft").build_trainer(model, tokenizer, TrainingParams(max_steps=1),
                                              checkpoints_dir=tmp_path / "ckpt",
                                              train_rows=[{"input_ids": [1, 2], "labels": [1, 2]}], eval_rows=[],
                                              callback=TrainerCallback(), activation_checkpointing=False)
    model.train()
    return trainer


def packed_batch(vocab: int) -> dict:
    """Two packed examples of 20 and 28 tokens, prompts masked (the collator also masks each first label)."""
    generator = torch.Generator().manual_seed(1)
    rows = []
    for length, prompt in ((20, 7), (28, 12)):
        ids = torch.randint(0, vocab, (length,), generator=generator).tolist()
        rows.append({"input_ids": ids, "labels": [IGNORE_INDEX] * prompt + ids[prompt:]})
    return packing_collator()(rows)


def loss_and_grads(trainer, batch: dict, budget: int | None):
    """Loss and LoRA gradients from SFTTrainer.compute_loss (budget None: plain cross-entropy on full logits)."""
    model = trainer.model
    model.zero_grad()
    if budget is None:
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        logits = model(**inputs).logits[0, :-1].float()
        loss = torch.nn.functional.cross_entropy(logits, batch["labels"][0, 1:], ignore_index=IGNORE_INDEX)
    else:
        trainer.logits_budget = budget
        loss = trainer.compute_loss(model, dict(batch))
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return loss.detach(), grads


@pytest.mark.parametrize("targets", [DEFAULT_TARGETS, (*DEFAULT_TARGETS, "lm_head")], ids=["default", "lm_head"])
def test_chunked_loss_and_lora_gradients_equal_plain(tiny_model_dir, tmp_path, targets):
    trainer = lora_trainer(tiny_model_dir, tmp_path, targets)
    vocab = trainer.model.config.vocab_size
    batch = packed_batch(vocab)
    plain_loss, plain_grads = loss_and_grads(trainer, batch, budget=None)
    assert any("lm_head" in n for n in plain_grads) == ("lm_head" in targets)
    for budget in (vocab * 5, vocab * 10**6):  # 5 tokens a chunk (7 chunks), and one chunk
        loss, grads = loss_and_grads(trainer, batch, budget)
        torch.testing.assert_close(loss, plain_loss, rtol=1e-6, atol=1e-6)
        assert grads.keys() == plain_grads.keys()
        for name, grad in grads.items():
            assert grad.abs().sum() > 0, name
            torch.testing.assert_close(grad, plain_grads[name], rtol=1e-4, atol=1e-7, msg=name)


def largest_saved_tensor(trainer, batch: dict, budget: int) -> int:
    """Elements of the largest tensor autograd keeps for backward while the loss is taken (weights aside)."""
    weights = {p.data_ptr() for p in trainer.model.parameters()}
    sizes = []

    def pack(tensor):
        if tensor.data_ptr() not in weights:  # a reference to a weight costs no memory
            sizes.append(tensor.numel())
        return tensor

    trainer.logits_budget = budget
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        trainer.compute_loss(trainer.model, dict(batch))
    return max(sizes)


def test_chunks_keep_no_logits_for_backward(tiny_model_dir, tmp_path):
    trainer = lora_trainer(tiny_model_dir, tmp_path, DEFAULT_TARGETS)
    vocab = trainer.model.config.vocab_size
    batch = packed_batch(vocab)
    trained = int((batch["labels"][0, 1:] != IGNORE_INDEX).sum())
    assert largest_saved_tensor(trainer, batch, budget=vocab * 10**6) >= trained * vocab  # one chunk keeps them
    assert largest_saved_tensor(trainer, batch, budget=vocab * 5) < vocab  # chunks keep only hidden states


def test_all_masked_batch_has_zero_loss(tiny_model_dir, tmp_path):
    trainer = lora_trainer(tiny_model_dir, tmp_path, DEFAULT_TARGETS)
    batch = packed_batch(trainer.model.config.vocab_size)
    batch["labels"][:] = IGNORE_INDEX
    trainer.logits_budget = 5 * trainer.model.config.vocab_size
    loss = trainer.compute_loss(trainer.model, dict(batch))
    assert loss.item() == 0.0
