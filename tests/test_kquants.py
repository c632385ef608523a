"""K-quants: our Q4_K/Q5_K/Q6_K bytes decode with the gguf package's dequantizer within the format's error, and the
Q4_K_M, Q5_K_M and Q6_K mixes give each tensor the type llama.cpp's quantizer would."""

from __future__ import annotations

import math

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize
from gguf.quants import quantize as gguf_quantize

from llama_space.export import kquants
from llama_space.export.export_jobs import GGUF_BYTES_PER_WEIGHT
from llama_space.export.gguf_types import QTYPES, mix_bytes, more_bits, tensor_type

# (type, weights per sub-block, levels - 1, symmetric): Q4_K/Q5_K fit step*q - min per 32 weights, q in 0..15 or
# 0..31; Q6_K fits step*(q - 32) per 16 weights, q in 0..63.
FORMATS = [(T.Q4_K, 32, 15, False), (T.Q5_K, 32, 31, False), (T.Q6_K, 16, 63, True)]
# Llama-3.1-8B (DESIGN.md): hidden 4096, intermediate 14336, 32 layers, 8 KV heads of 128, vocab 128256, untied.
LLAMA_8B = {"token_embd.weight": (128256, 4096), "output.weight": (128256, 4096), "output_norm.weight": (4096,)}
for _i in range(32):
    LLAMA_8B |= {f"blk.{_i}.{part}.weight": shape for part, shape in (
        ("attn_q", (4096, 4096)), ("attn_k", (1024, 4096)), ("attn_v", (1024, 4096)), ("attn_output", (4096, 4096)),
        ("ffn_gate", (14336, 4096)), ("ffn_up", (14336, 4096)), ("ffn_down", (4096, 14336)),
        ("attn_norm", (4096,)), ("ffn_norm", (4096,)))}


def _samples(embedded_dir) -> dict[str, np.ndarray]:
    """Gaussian and heavy-tailed (Student t, 3 degrees) rows, and rows of the embedded model's embedding (stored
    at Q8_0 in the file it ships as, so finer than any of these formats)."""
    from safetensors import safe_open

    rng = np.random.default_rng(0)
    with safe_open(embedded_dir / "model.safetensors", "np") as handle:
        embedding = handle.get_slice("model.embed_tokens.weight")[:2048].reshape(-1, 1024)
    return {"gaussian": rng.standard_normal((512, 1024)).astype(np.float32) * 0.02,
            "heavy-tailed": rng.standard_t(3, (512, 1024)).astype(np.float32) * 0.02,
            "embedding": embedding.astype(np.float32)}


@pytest.mark.parametrize(("ggml_type", "sub", "top", "symmetric"), FORMATS, ids=lambda v: getattr(v, "name", None))
def test_round_trip_within_the_format_error(embedded_dir, ggml_type, sub, top, symmetric):
    for label, x in _samples(embedded_dir).items():
        encoded = kquants.quantize(x, ggml_type)
        block, size = GGML_QUANT_SIZES[ggml_type]
        assert encoded.dtype == np.uint8 and encoded.shape == (x.shape[0], x.shape[1] // block * size)
        error = dequantize(encoded, ggml_type) - x
        # Each weight within one step of its super-block's range / levels: rounding costs half a step, rounding
        # each sub-block's scale and min to 6 bits (int8 for Q6_K) against the super-block's largest at most
        # levels/126 of a step each (32/254 for Q6_K), and least squares trades a little of the largest error
        # for a smaller mean.
        blocks = x.reshape(-1, 256)
        span = 2 * np.abs(blocks).max(-1) if symmetric else blocks.max(-1) - np.minimum(blocks.min(-1), 0)
        worst = np.abs(error).reshape(-1, 256).max(-1) / (span / top)
        assert worst.max() <= 1.0, (label, float(worst.max()))
        # RMS no worse than a uniform quantizer spanning each sub-block with exact scales: step / sqrt(12).
        subs = x.reshape(-1, sub)
        steps = (2 * np.abs(subs).max(-1) if symmetric else subs.max(-1) - np.minimum(subs.min(-1), 0)) / top
        assert np.sqrt(np.mean(error**2)) <= np.sqrt(np.mean(steps**2 / 12)), label


@pytest.mark.parametrize(("ggml_type", "legacy"), [(T.Q4_K, T.Q4_1), (T.Q5_K, T.Q5_1)])
def test_k_quants_beat_the_32_weight_formats_they_replace_with_fewer_bits(embedded_dir, ggml_type, legacy):
    # Q4_1/Q5_1 spend an fp16 scale and min on every 32 weights (5 and 6 bits a weight); Q4_K/Q5_K 4.5 and 5.5.
    for label, x in _samples(embedded_dir).items():
        ours = np.sqrt(np.mean((dequantize(kquants.quantize(x, ggml_type), ggml_type) - x) ** 2))
        theirs = np.sqrt(np.mean((dequantize(gguf_quantize(x, legacy), legacy) - x) ** 2))
        assert ours < theirs, (label, ours, theirs)


@pytest.mark.parametrize("ggml_type", [f[0] for f in FORMATS], ids=lambda t: t.name)
def test_exact_and_degenerate_blocks(ggml_type):
    rows = np.zeros((4, 512), np.float32)
    rows[1, 3] = 0.5  # one weight in an otherwise empty super-block
    rows[2] = 7.0  # constant
    rows[3, :256] = np.tile(np.arange(16, dtype=np.float32) * 2.0**-6, 16)  # on a 16-level grid from zero
    rows[3, 256:] = np.linspace(-1e-3, 2e3, 256)  # a wide span in one super-block
    decoded = dequantize(kquants.quantize(rows, ggml_type), ggml_type)
    assert np.isfinite(decoded).all()
    assert np.array_equal(decoded[0], rows[0]) and np.array_equal(decoded[1, 256:], rows[1, 256:])  # zero stays zero
    np.testing.assert_allclose(decoded[1, 3], 0.5, rtol=2e-3)
    np.testing.assert_allclose(decoded[2], 7.0, rtol=2e-3)
    # Weights on a grid the format holds come back to the precision of its fp16 d.
    np.testing.assert_allclose(decoded[3, :256], rows[3, :256], rtol=2**-10, atol=0)
    assert np.abs(decoded[3, 256:] - rows[3, 256:]).max() <= 2e3 / 15


def test_refuses_other_types_and_partial_super_blocks():
    with pytest.raises(ValueError, match="not a K-quant"):
        kquants.quantize(np.zeros((1, 256), np.float32), T.Q8_0)
    with pytest.raises(ValueError, match="super-blocks of 256"):
        kquants.quantize(np.zeros((1, 576), np.float32), T.Q4_K)


def test_more_bits_layers():
    assert [i for i in range(32) if more_bits(i, 32)] == [0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31]
    assert [i for i in range(30) if more_bits(i, 30)] == [0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 26, 27, 28, 29]


@pytest.mark.parametrize(("qtype", "default"), [("q4_k_m", T.Q4_K), ("q5_k_m", T.Q5_K), ("q6_k", T.Q6_K)])
def test_mix_on_llama_8b(qtype, default):
    types = {name: tensor_type(name, shape, qtype, 32, tied=False) for name, shape in LLAMA_8B.items()}
    assert types["output.weight"] == T.Q6_K and types["token_embd.weight"] == default
    assert types["output_norm.weight"] == types["blk.0.attn_norm.weight"] == T.F32
    for i in range(32):
        high = T.Q6_K if more_bits(i, 32) and qtype != "q6_k" else default
        assert types[f"blk.{i}.attn_v.weight"] == types[f"blk.{i}.ffn_down.weight"] == high, i
        assert {types[f"blk.{i}.{part}.weight"] for part in ("attn_q", "attn_k", "attn_output", "ffn_gate",
                                                               "ffn_up")} == {default}
    assert tensor_type("token_embd.weight", (128256, 4096), qtype, 32, tied=True) == T.Q6_K


def test_fallbacks_for_rows_that_are_not_whole_super_blocks():
    # SmolLM2-135M: width 576 (2.25 super-blocks), ffn_down rows of 1536 (6), 30 layers, tied head.
    for qtype, fallback in (("q4_k_m", T.Q5_0), ("q5_k_m", T.Q5_1), ("q6_k", T.Q8_0)):
        assert tensor_type("blk.4.attn_q.weight", (576, 576), qtype, 30, tied=True) == fallback
        assert tensor_type("blk.0.attn_v.weight", (192, 576), qtype, 30, tied=True) == T.Q8_0  # Q6_K, then Q8_0
        assert tensor_type("token_embd.weight", (49152, 576), qtype, 30, tied=True) == T.Q8_0
    assert tensor_type("blk.4.ffn_down.weight", (576, 1536), "q4_k_m", 30, tied=True) == T.Q4_K
    assert tensor_type("blk.5.ffn_down.weight", (576, 1536), "q4_k_m", 30, tied=True) == T.Q6_K
    assert tensor_type("blk.0.attn_q.weight", (100, 100), "q4_k_m", 2, tied=True) == T.F16  # not even 32s
    assert tensor_type("token_embd.weight", (49152, 4096), "q4_0", 32, tied=False) == T.Q8_0


def test_bytes_per_weight_are_the_8b_averages():
    params = sum(math.prod(shape) for shape in LLAMA_8B.values())
    assert set(GGUF_BYTES_PER_WEIGHT) == set(QTYPES)
    for qtype in QTYPES:
        average = mix_bytes(LLAMA_8B, qtype, 32, tied=False) / params
        assert average == pytest.approx(GGUF_BYTES_PER_WEIGHT[qtype], rel=0.01 if qtype != "q4_0" else 0.15), qtype
