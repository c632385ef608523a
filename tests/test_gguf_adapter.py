"""Adapter-only GGUF: a llama.cpp LoRA adapter file that, applied to the base's GGUF, is the merged model's GGUF;
the base's GGUF written once and shared; the Modelfile; what llama.cpp cannot apply is refused saying what to do."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from llama_space import adapters
from llama_space.errors import UserError
from llama_space.export import gguf_base, merge, process
from llama_space.export.export_jobs import ExportJobConfig
from llama_space.export.gguf import write_gguf
from llama_space.export.gguf_adapter import write_adapter_gguf

from adapterutil import random_adapter

pytestmark = pytest.mark.slow  # export runs of several seconds: make test-fast leaves them out

LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
GGUF_NAMES = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


@pytest.fixture(scope="module")
def plain(tiny_model_dir, tmp_path_factory) -> Path:
    """A LoRA (r=4, alpha=32) on every linear layer of the tiny Llama."""
    return random_adapter(tiny_model_dir, tmp_path_factory.mktemp("lora") / "pirate", seed=5, targets=LINEAR)


@pytest.fixture(scope="module")
def scaled(tiny_model_dir, tmp_path_factory) -> Path:
    """rsLoRA with a per-module alpha and rank: scales other than alpha / r, which the writer folds into B."""
    return random_adapter(tiny_model_dir, tmp_path_factory.mktemp("lora") / "parrot", seed=6, r=8, alpha=16,
                          targets=LINEAR, use_rslora=True, alpha_pattern={"k_proj": 4}, rank_pattern={"v_proj": 2})


@pytest.fixture(scope="module")
def base_reader(tiny_model_dir, tmp_path_factory):
    from gguf import GGUFReader

    return GGUFReader(write_gguf(tiny_model_dir, tmp_path_factory.mktemp("base") / "base-f16.gguf", "f16"))


def _tensors(reader) -> dict:
    return {tensor.name: tensor for tensor in reader.tensors}


def test_adapter_gguf_has_llamacpp_keys_names_and_shapes(plain, tiny_model_dir, base_reader, tmp_path):
    from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType

    reader = GGUFReader(write_adapter_gguf(plain, tiny_model_dir, tmp_path / "pirate.gguf"))
    fields = reader.fields
    assert fields["general.type"].contents() == "adapter"
    assert fields["general.architecture"].contents() == "llama"
    assert fields["adapter.type"].contents() == "lora"
    assert fields["adapter.lora.alpha"].contents() == 32.0
    assert fields["adapter.lora.alpha"].types == [GGUFValueType.FLOAT32]
    tensors, base = _tensors(reader), _tensors(base_reader)
    assert set(tensors) == {f"blk.{block}.{name}.weight.lora_{ab}" for block in (0, 1) for name in GGUF_NAMES
                            for ab in "ab"}
    for name, tensor in tensors.items():
        assert tensor.tensor_type == GGMLQuantizationType.F16, name
    for weight in {name.rsplit(".", 1)[0] for name in tensors}:
        a, b, w = tensors[f"{weight}.lora_a"], tensors[f"{weight}.lora_b"], base[weight]
        # PEFT's shapes in numpy order: A [r, in], B [out, r]; GGUF's ne lists them reversed.
        assert a.data.shape == (4, w.data.shape[1]) and b.data.shape == (w.data.shape[0], 4), weight
        # llama.cpp's check in llama_adapter_lora_init: w.ne[0] == a.ne[0], w.ne[1] == b.ne[1], a.ne[1] == b.ne[0].
        assert (w.shape[0], w.shape[1], a.shape[1]) == (a.shape[0], b.shape[1], b.shape[0]), weight


@pytest.mark.parametrize("which", ["plain", "scaled"])
def test_base_plus_b_at_a_times_alpha_over_r_is_the_merged_gguf(which, request, tiny_model_dir, base_reader,
                                                                 tmp_path):
    """What llama.cpp computes, W + B @ A * alpha / r on the GGUF's own tensors, is the GGUF of the merged model."""
    from gguf import GGUFReader

    adapter = request.getfixturevalue(which)
    lora = GGUFReader(write_adapter_gguf(adapter, tiny_model_dir, tmp_path / "adapter.gguf", dtype="f32"))
    alpha = float(lora.fields["adapter.lora.alpha"].contents())
    merged_dir = merge.merge_adapter(merge.plan_merge(tiny_model_dir, adapter), tmp_path / "merged")
    merged = _tensors(GGUFReader(write_gguf(merged_dir, tmp_path / "merged-f16.gguf", "f16")))
    pairs, base = _tensors(lora), _tensors(base_reader)
    assert set(merged) == set(base)
    for name, tensor in merged.items():
        expected = tensor.data.astype(np.float32)
        if f"{name}.lora_a" not in pairs:
            assert np.array_equal(base[name].data, tensor.data), name
            continue
        a, b = pairs[f"{name}.lora_a"].data, pairs[f"{name}.lora_b"].data
        change = b @ a * (alpha / b.shape[1])
        got = base[name].data.astype(np.float32) + change
        # Both sides are the same numbers rounded to F16 at different points: a few F16 steps apart at most.
        assert np.abs(got - expected).max() <= 4e-3 * np.abs(expected).max(), name
        assert np.abs(change).max() > 0.1 * np.abs(expected).max(), name  # the adapter changes it noticeably
        if name.endswith(("attn_q.weight", "attn_k.weight")):
            # B's rows follow the base's rotary order: B unpermuted would not add up to the merged weight.
            heads = 4 if "attn_q" in name else 2
            unpermuted = _undo_rotary(b, heads) @ a * (alpha / b.shape[1])
            assert np.abs(base[name].data + unpermuted - expected).max() > 0.05 * np.abs(expected).max()


def _undo_rotary(rows: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's interleaved rotary row order back to transformers' half-split one."""
    return rows.reshape(heads, rows.shape[0] // heads // 2, 2, -1).swapaxes(1, 2).reshape(rows.shape)


def _job(tmp_path: Path, adapter: Path, cache_dir: Path, model: str, name: str) -> tuple[Path, ExportJobConfig]:
    job_dir = tmp_path / name
    (job_dir / "out").mkdir(parents=True)
    return job_dir, ExportJobConfig(export_id=name, kind="gguf_adapter", qtype="q8_0", adapter=adapter.name,
                                    adapter_dir=str(adapter), model=model, cache_dir=str(cache_dir))


def test_base_gguf_written_once_and_shared_by_every_adapter_export(plain, scaled, tiny_model_dir, tmp_path,
                                                                    monkeypatch):
    import llama_space.export.gguf as gguf_module

    writes = []
    real = gguf_module.write_gguf
    monkeypatch.setattr(gguf_module, "write_gguf", lambda *args, **kw: writes.append(args) or real(*args, **kw))
    cache, model = tmp_path / "cache", str(tiny_model_dir)
    outs, stats = [], []
    for adapter in (plain, scaled):
        job_dir, config = _job(tmp_path, adapter, cache, model, adapter.name)
        download = process.adapter_gguf(job_dir, config, tiny_model_dir, job_dir / "out")
        assert download == f"{adapter.name}-lora-f16.gguf"
        cached = gguf_base.cached_path(cache, model, tiny_model_dir, "q8_0")
        stats.append((cached.stat().st_ino, cached.stat().st_mtime_ns))
        outs.append(job_dir / "out")
    assert len(writes) == 1 and stats[0] == stats[1]
    base_file = cached.name
    assert re.fullmatch(rf"{re.escape(tiny_model_dir.name)}-[0-9a-f]{{12}}", cached.parent.name)
    for out in outs:
        # The export folder holds the base itself (a hard link to the cache's file), so downloads need nothing else.
        assert sorted(p.name for p in out.iterdir()) == sorted(
            ["Modelfile", "README.md", base_file, f"{out.parent.name}-lora-f16.gguf"])
        assert (out / base_file).stat().st_ino == cached.stat().st_ino
    assert not list(cached.parent.glob("*.partial"))
    # Another checkpoint of the same name (here: its config changed) gets its own file.
    changed = Path(shutil.copytree(tiny_model_dir, tmp_path / "changed"))
    config = json.loads((changed / "config.json").read_text())
    (changed / "config.json").write_text(json.dumps({**config, "rms_norm_eps": 1e-5}))
    assert gguf_base.cached_path(cache, model, changed, "q8_0").parent != cached.parent


def test_modelfile_applies_the_adapter_to_the_base(plain, tiny_model_dir, tmp_path):
    job_dir, config = _job(tmp_path, plain, tmp_path / "cache", str(tiny_model_dir), "job")
    process.adapter_gguf(job_dir, config, tiny_model_dir, job_dir / "out")
    base_file = gguf_base.cached_path(tmp_path / "cache", str(tiny_model_dir), tiny_model_dir, "q8_0").name
    text = (job_dir / "out" / "Modelfile").read_text()
    assert text.startswith(f"FROM ./{base_file}\nADAPTER ./pirate-lora-f16.gguf\n\n")
    assert 'TEMPLATE """' in text and 'PARAMETER stop "<|im_end|>"' in text
    readme = (job_dir / "out" / "README.md").read_text()
    assert f"llama-server -m {base_file} --lora pirate-lora-f16.gguf" in readme
    assert "ollama create pirate-lora-f16 -f Modelfile" in readme


def _with_config(adapter: Path, target: Path, **changes) -> Path:
    shutil.copytree(adapter, target)
    config = json.loads((target / adapters.CONFIG_FILE).read_text())
    (target / adapters.CONFIG_FILE).write_text(json.dumps({**config, **changes}))
    return target


@pytest.mark.parametrize("changes, message", [
    ({"use_dora": True}, "uses DoRA, which a llama.cpp LoRA adapter cannot carry; train it with DoRA off"),
    ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
    ({"lora_bias": True}, "train it without LoRA bias"),
    ({"fan_in_fan_out": True}, r"transposed .*export it as a merged GGUF instead \(kind gguf\)"),
])
def test_what_llamacpp_cannot_apply_is_refused(plain, tiny_model_dir, tmp_path, changes, message):
    adapter = _with_config(plain, tmp_path / "changed", **changes)
    with pytest.raises(UserError, match=message):
        write_adapter_gguf(adapter, tiny_model_dir, tmp_path / "out.gguf")
    assert not list(tmp_path.glob("out.gguf*"))


@pytest.mark.parametrize("target, message", [
    ("lm_head", r"output head, which this base ties to its embeddings.*export it as a merged GGUF instead"),
    ("embed_tokens", "trains the token embeddings"),
])
def test_head_and_embedding_loras_are_refused(tiny_model_dir, tmp_path, target, message):
    adapter = random_adapter(tiny_model_dir, tmp_path / "odd", targets=(target,))
    with pytest.raises(UserError, match=message):
        write_adapter_gguf(adapter, tiny_model_dir, tmp_path / "out.gguf")
