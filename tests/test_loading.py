"""Loading on CPU with dtype="auto": the dtype is chosen by timing, and the served weights stay exact."""

import pytest
import torch
from safetensors.torch import load_file

from llama_space.inference import loading


def fake_step_seconds(fp32: float, bf16: float):
    """A stand-in for loading._measure_decode: seconds per step by the model's dtype."""
    return lambda model, steps=4: fp32 if model.dtype == torch.float32 else bf16


def checkpoint_weights(directory) -> dict[str, torch.Tensor]:
    return load_file(directory / "model.safetensors")


def test_fp32_choice_serves_the_checkpoint_weights_bit_for_bit(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(loading, "_measure_decode", fake_step_seconds(fp32=0.010, bf16=0.020))
    model, _, _ = loading.load_model(str(tiny_model_dir), "cpu", "auto", tmp_path, compile="off")
    expected = checkpoint_weights(tiny_model_dir)
    served = model.state_dict()
    assert model.dtype == torch.float32 and set(expected) <= set(served)
    for name, weight in expected.items():
        assert served[name].dtype == torch.float32 and torch.equal(served[name], weight), name


def test_bf16_choice_serves_bf16(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(loading, "_measure_decode", fake_step_seconds(fp32=0.020, bf16=0.010))
    model, _, _ = loading.load_model(str(tiny_model_dir), "cpu", "auto", tmp_path, compile="off")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    expected = checkpoint_weights(tiny_model_dir)["model.embed_tokens.weight"]
    assert torch.equal(model.get_input_embeddings().weight, expected.to(torch.bfloat16))


@pytest.mark.parametrize(("fp32", "bf16", "chosen"), [
    (0.0100, 0.0098, torch.float32),  # bf16 2% faster: within the margin, fp32 is exact
    (0.0100, 0.0100, torch.float32),
    (0.0100, 0.0120, torch.float32),
    (0.0100, 0.0090, torch.bfloat16),  # 10% faster
])
def test_bf16_must_be_clearly_faster(tiny_model_dir, monkeypatch, fp32, bf16, chosen):
    from transformers import AutoModelForCausalLM

    monkeypatch.setattr(loading, "_measure_decode", fake_step_seconds(fp32, bf16))
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    assert loading.choose_cpu_dtype(model) == chosen
    assert model.dtype == torch.float32  # choosing never changes the model it times


def test_timings_alternate_between_the_dtypes(tiny_model_dir, monkeypatch):
    from transformers import AutoModelForCausalLM

    order = []
    monkeypatch.setattr(loading, "_measure_decode", lambda model, steps=4: order.append(model.dtype) or 0.01)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    loading.choose_cpu_dtype(model, rounds=3)
    assert order == [torch.float32, torch.bfloat16] * 4  # one warm-up each, then 3 alternating rounds


def test_timing_copy_decodes_like_a_cast_model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    copy = loading._copy_in(model, torch.bfloat16)
    cast = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval().to(torch.bfloat16)
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.inference_mode():
        assert torch.equal(copy(ids).logits, cast(ids).logits)
    assert model.dtype == torch.float32
    assert copy.lm_head.weight.data_ptr() == copy.get_input_embeddings().weight.data_ptr()  # ties kept
