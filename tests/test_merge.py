"""Merging an adapter into its base, shard by shard: same replies as base + adapter, the right files, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from llama_space.errors import UserError
from llama_space.export import merge, resources

from adapterutil import random_adapter

ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
PROMPTS = ["What is the capital of France?", "Write a haiku about rain.", "2 + 2 ="]


@pytest.fixture(scope="module")
def sharded_base(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny Llama saved in several safetensors shards, as an 8B checkpoint is."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("sharded")
    AutoModelForCausalLM.from_pretrained(tiny_model_dir).save_pretrained(out, max_shard_size="1MB")
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out)
    assert len(list(out.glob("*.safetensors"))) >= 2
    return out


def merged(base: Path, adapter: Path, out: Path) -> Path:
    return merge.merge_adapter(merge.plan_merge(base, adapter), out)


def greedy(model, tokenizer, prompt: str, tokens: int = 12) -> list[int]:
    ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)["input_ids"]
    with torch.inference_mode():
        out = model.generate(ids, max_new_tokens=tokens, do_sample=False)
    return out[0, ids.shape[1]:].tolist()


def base_plus_adapter(base: Path, adapter: Path, dtype=torch.float32):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    return PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=dtype), adapter).eval()


def test_merged_model_answers_as_base_plus_adapter(sharded_base, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter = random_adapter(sharded_base, tmp_path / "lora", seed=5, targets=ALL_LINEAR)
    out = merged(sharded_base, adapter, tmp_path / "merged")
    reference = base_plus_adapter(sharded_base, adapter)
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = torch.randint(0, 1000, (2, 24))
    with torch.inference_mode():
        torch.testing.assert_close(model(ids).logits, reference(ids).logits, atol=1e-5, rtol=1e-4)
        base_logits = AutoModelForCausalLM.from_pretrained(sharded_base)(ids).logits
    assert (model(ids).logits - base_logits).abs().max() > 1e-3  # the adapter did change the model
    for prompt in PROMPTS:
        assert greedy(model, tokenizer, prompt) == greedy(reference, tokenizer, prompt)


def test_merged_folder_holds_shards_index_tokenizer_and_template(sharded_base, tmp_path):
    from transformers import AutoTokenizer

    adapter = random_adapter(sharded_base, tmp_path / "lora", seed=2)
    out = merged(sharded_base, adapter, tmp_path / "merged")
    shards = sorted(p.name for p in out.glob("*.safetensors"))
    count = len(list(sharded_base.glob("*.safetensors")))
    assert shards == [f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]
    index = json.loads((out / merge.INDEX_FILE).read_text())
    on_disk = {}
    for name in shards:
        with safe_open(str(out / name), "pt") as f:
            on_disk.update(dict.fromkeys(f.keys(), name))
    assert index["weight_map"] == on_disk
    base_index = json.loads((sharded_base / merge.INDEX_FILE).read_text())
    assert set(index["weight_map"]) == set(base_index["weight_map"])
    assert index["metadata"]["total_size"] == sum(
        end - start for name in shards for key, info in merge.read_header(out / name)[1].items()
        if key != "__metadata__" for start, end in [info["data_offsets"]])
    side = {p.name for p in out.iterdir()} - set(shards)
    assert side == {merge.INDEX_FILE, merge.PROVENANCE_FILE, "config.json", "generation_config.json",
                    "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"}
    assert AutoTokenizer.from_pretrained(out).chat_template == AutoTokenizer.from_pretrained(sharded_base).chat_template
    assert json.loads((out / merge.PROVENANCE_FILE).read_text())["adapter"] == "lora"
    _assert_only_targets_changed(sharded_base, out, base_index, index, targets=("q_proj", "v_proj"))


def _assert_only_targets_changed(base: Path, out: Path, base_index: dict, index: dict, targets) -> None:
    for key, name in index["weight_map"].items():
        with safe_open(str(out / name), "pt") as new, safe_open(str(base / base_index["weight_map"][key]), "pt") as old:
            same = torch.equal(new.get_tensor(key), old.get_tensor(key))
        assert same != any(f".{t}." in key for t in targets), key


def test_lora_on_a_tied_output_head_unties_it(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    assert json.loads((tiny_model_dir / "config.json").read_text())["tie_word_embeddings"]
    adapter = random_adapter(tiny_model_dir, tmp_path / "lora", seed=9, targets=("q_proj", "lm_head"))
    out = merged(tiny_model_dir, adapter, tmp_path / "merged")
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is False
    index = json.loads((out / merge.INDEX_FILE).read_text())["weight_map"]
    assert index[merge.HEAD] == "model-00002-of-00002.safetensors" != index[merge.EMBEDDINGS]
    ids = torch.randint(0, 1000, (2, 16))
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.inference_mode():
        torch.testing.assert_close(model(ids).logits, base_plus_adapter(tiny_model_dir, adapter)(ids).logits,
                                   atol=1e-5, rtol=1e-4)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert torch.equal(model.model.embed_tokens.weight, base.model.embed_tokens.weight)
    assert not torch.equal(model.lm_head.weight, base.lm_head.weight)


def test_bf16_base_merges_in_bf16_like_peft(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = tmp_path / "bf16"
    AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16).save_pretrained(base)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(base)
    adapter = random_adapter(tiny_model_dir, tmp_path / "lora", seed=7, targets=ALL_LINEAR)
    plan = merge.plan_merge(base, adapter)
    assert plan.dtype == "BF16"
    out = merge.merge_adapter(plan, tmp_path / "merged")
    dtypes = {info["dtype"] for path in out.glob("*.safetensors")
              for key, info in merge.read_header(path)[1].items() if key != "__metadata__"}
    assert dtypes == {"BF16"}
    ours = AutoModelForCausalLM.from_pretrained(out).state_dict()
    peft_merged = base_plus_adapter(base, adapter, torch.float32).merge_and_unload().state_dict()
    for key, value in ours.items():  # PEFT merged in fp32 here: ours differs by bf16 rounding alone
        torch.testing.assert_close(value.float(), peft_merged[key], atol=0.02, rtol=0.01)


def test_nf4_trained_adapter_merges_into_the_unquantized_base_only(tiny_model_dir, tmp_path):
    adapter = random_adapter(tiny_model_dir, tmp_path / "lora", seed=3)
    meta = json.loads((adapter / "llama_space.json").read_text())
    (adapter / "llama_space.json").write_text(json.dumps({**meta, "base_quantization": "nf4"}))
    out = merged(tiny_model_dir, adapter, tmp_path / "merged")
    assert json.loads((out / merge.PROVENANCE_FILE).read_text())["base_quantization_in_training"] == "nf4"
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    quantized = tmp_path / "quantized"
    quantized.mkdir()
    config = json.loads((tiny_model_dir / "config.json").read_text())
    (quantized / "config.json").write_text(json.dumps({**config, "quantization_config": {"quant_method": "bitsandbytes"}}))
    with pytest.raises(UserError, match="merges only into the unquantized base"):
        merge.plan_merge(quantized, adapter)


def test_adapter_of_another_base_is_refused(tiny_model_dir, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    other = tmp_path / "other"
    LlamaForCausalLM(LlamaConfig(vocab_size=128, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                 num_attention_heads=2, num_key_value_heads=1)).save_pretrained(other)
    adapter = random_adapter(other, tmp_path / "lora")
    with pytest.raises(UserError, match="trained on another base"):
        merge.plan_merge(tiny_model_dir, adapter)


def test_refuses_with_the_figures_when_memory_or_disk_is_short(tiny_model_dir, tmp_path, monkeypatch):
    plan = merge.plan_merge(tiny_model_dir, random_adapter(tiny_model_dir, tmp_path / "lora"))
    assert plan.memory_bytes > merge.PROCESS_BYTES and plan.disk_bytes > plan.weight_bytes
    monkeypatch.setattr(merge, "available_memory", lambda: 100 * 2**20)
    with pytest.raises(UserError) as refused:
        merge.merge_adapter(plan, tmp_path / "merged")
    assert str(refused.value).startswith(f"Merging needs about {resources.gib(plan.memory_bytes)} of memory but "
                                         "only 100 MB is available")
    monkeypatch.setattr(merge, "available_memory", lambda: 64 * 2**30)
    monkeypatch.setattr(resources.shutil, "disk_usage", lambda path: type("U", (), {"free": 3 * 2**20})())
    with pytest.raises(UserError) as refused:
        merge.merge_adapter(plan, tmp_path / "merged")
    assert f"needs about {resources.gib(plan.disk_bytes)} of disk but only 3 MB is free" in str(refused.value)
    assert not (tmp_path / "merged").exists() and not list(tmp_path.glob(".merged*"))


def test_embedded_model_merged_answers_as_base_plus_adapter(embedded_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter = random_adapter(embedded_dir, tmp_path / "lora", seed=11, alpha=8, targets=ALL_LINEAR)
    plan = merge.plan_merge(embedded_dir, adapter)
    assert plan.dtype == "F32" and 0.13e9 < plan.parameters < 0.14e9
    out = merge.merge_adapter(plan, tmp_path / "merged")
    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    reference = base_plus_adapter(embedded_dir, adapter)
    for prompt in PROMPTS[:2]:
        assert greedy(model, tokenizer, prompt, 16) == greedy(reference, tokenizer, prompt, 16)
