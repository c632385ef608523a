"""Q4_K, Q5_K and Q6_K encoders: super-blocks of 256 weights in ggml's byte layout, vectorised in numpy.

One super-block per 256 consecutive weights of a row; `gguf.quants.dequantize` and llama.cpp decode these bytes:

- Q4_K, 144 bytes: d and dmin (fp16), 12 bytes holding eight 6-bit scales and eight 6-bit mins, then 128 bytes of
  4-bit quants. Sub-block j (weights 32j..32j+31) decodes as d*scale_j*q - dmin*min_j with q in 0..15. Byte e of
  each 32-byte group g holds sub-block 2g's weight e in its low nibble and sub-block 2g+1's in its high nibble.
  The 12 scale bytes: bytes 0-3 are scales 0-3 with the top two bits of scales 4-7 above them, bytes 4-7 the
  same for the mins, bytes 8-11 the low four bits of scales 4-7 (low nibble) and of mins 4-7 (high nibble).
- Q5_K, 176 bytes: Q4_K's d, dmin and 12 scale bytes, then 32 bytes of fifth bits (bit j of byte e: sub-block
  j's weight e) and 128 bytes of low nibbles as in Q4_K; q in 0..31.
- Q6_K, 210 bytes: 128 bytes of low four bits, 64 bytes of high two bits, sixteen int8 scales, then d (fp16).
  Sub-block j (16 weights) decodes as d*scale_j*(q - 32) with q in 0..63. Weight i of half h = i // 128 (r = i %
  128) has its low bits in byte 64h + r % 64 (low nibble when r < 64) and its high bits in byte 32h + r % 32, at
  bit 2*(r // 32).

Scales are chosen for the least squared error, in three steps:
1. each sub-block alone: a few trial step sizes around its range / levels (`AFFINE_TRIALS`, `SYMMETRIC_TRIALS`),
   the quants each gives, then the scale (and offset) that fit those quants best by least squares; the best trial
   is kept, and for Q4_K/Q5_K its quants are redone once with the fitted scale and offset and fitted again;
2. the super-block's scales (and mins) rounded to 6 bits (int8 for Q6_K) against the largest, and the quants
   redone with the rounded scales;
3. d (and dmin) fitted again by least squares over all 256 weights, given those integer quants and scales, and
   the quants redone with them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

QK_K = 256  # weights per super-block
TYPES = ("Q4_K", "Q5_K", "Q6_K")  # the gguf.GGMLQuantizationType names encoded here
SLICE_BLOCKS = 2048  # super-blocks encoded at once: a few MB of temporaries, whatever the tensor's size
# Trial steps, as the number of steps (levels - 1 + delta) the sub-block's span is cut into: Q4_K/Q5_K span
# min..max (min at most 0), Q6_K maps the weight of largest magnitude to -(32 + delta). Fewer steps round the
# extremes in; more give the bulk of the weights finer steps and clip the extremes. Least squares then moves
# each trial to its own optimum. Measured on real and Gaussian weights: 21 or 29 trials lower the error by at
# most 1% for 3-4x the time (BENCHMARKS.md, GGUF K-quants).
AFFINE_TRIALS = (-0.9, -0.6, -0.3, 0.0, 0.3)
SYMMETRIC_TRIALS = (-4.0, -3.0, -2.0, -1.0, 0.0)


def quantize(rows: np.ndarray, ggml_type: Any) -> np.ndarray:
    """`rows` (..., columns), columns a multiple of 256, as uint8 bytes of Q4_K, Q5_K or Q6_K (..., bytes)."""
    from gguf import GGML_QUANT_SIZES

    encoders = {"Q4_K": lambda blocks: _encode_affine(blocks, 4), "Q5_K": lambda blocks: _encode_affine(blocks, 5),
                "Q6_K": _encode_q6_k}
    if getattr(ggml_type, "name", None) not in encoders:
        raise ValueError(f"not a K-quant this module writes: {ggml_type!r}")
    if rows.shape[-1] % QK_K:
        raise ValueError(f"rows of {rows.shape[-1]} weights do not split into super-blocks of {QK_K}")
    blocks = np.ascontiguousarray(rows, dtype=np.float32).reshape(-1, QK_K)
    out = np.empty((blocks.shape[0], GGML_QUANT_SIZES[ggml_type][1]), dtype=np.uint8)
    for start in range(0, blocks.shape[0], SLICE_BLOCKS):
        out[start:start + SLICE_BLOCKS] = encoders[ggml_type.name](blocks[start:start + SLICE_BLOCKS])
    return out.reshape(*rows.shape[:-1], -1)


def _fp16(values: np.ndarray) -> np.ndarray:
    """`values` rounded to fp16 and back: the d and dmin the decoder will see."""
    return values.astype(np.float16).astype(np.float32)


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, 0 where den is 0."""
    return np.divide(num, den, out=np.zeros(np.broadcast(num, den).shape, np.float32), where=den != 0)


def _fit_affine(x: np.ndarray, q: np.ndarray, sums: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, ...]:
    """Least-squares (step, offset <= 0) for x ~ step*q + offset per row of x (S, n); with its squared error."""
    n = x.shape[-1]
    sum_x, sum_xx = sums
    sum_q, sum_qq, sum_xq = q.sum(-1), np.einsum("ij,ij->i", q, q), np.einsum("ij,ij->i", x, q)
    det = n * sum_qq - sum_q * sum_q
    step = _safe_div(n * sum_xq - sum_q * sum_x, det)
    offset = np.where(det != 0, (sum_x - step * sum_q) / n, np.minimum(sum_x / n, 0))
    # The format subtracts a non-negative min: a positive offset, or equal quants other than zero (a constant
    # sub-block), get the step alone fitted through zero.
    through_zero = (offset > 0) | ((det == 0) & (sum_qq > 0))
    step = np.where(through_zero, _safe_div(sum_xq, sum_qq), step)
    offset = np.where(through_zero, 0, offset)
    error = (step * step * sum_qq + 2 * step * offset * sum_q + n * offset * offset
             - 2 * step * sum_xq - 2 * offset * sum_x + sum_xx)
    return step, offset, error


def _affine_quants(x: np.ndarray, step: np.ndarray, offset: np.ndarray, top: int) -> np.ndarray:
    """Integer levels 0..top (as float32) of x (..., n) for x ~ step*q + offset, step and offset (..., 1)."""
    q = np.subtract(x, offset)
    q *= _safe_div(np.float32(1), step)  # a reciprocal per sub-block: a division per weight costs 4x a product
    np.rint(q, out=q)
    return np.clip(q, 0, top, out=q)


def _sub_blocks_affine(x: np.ndarray, top: int) -> tuple[np.ndarray, np.ndarray]:
    """Each sub-block's (step, offset) of the best trial, then refined once (step 1 of the module docstring)."""
    sums = (x.sum(-1), np.einsum("ij,ij->i", x, x))
    low = np.minimum(x.min(-1), 0)[:, None]
    span = x.max(-1)[:, None] - low
    best = None
    shifted = x - low
    q = np.empty_like(x)
    for delta in AFFINE_TRIALS:
        np.multiply(shifted, _safe_div(np.float32(top + delta), span), out=q)
        np.rint(q, out=q)
        np.minimum(q, top, out=q)
        fit = _fit_affine(x, q, sums)
        if best is None:
            best = fit
        else:
            better = fit[2] < best[2]
            best = tuple(np.where(better, new, old) for new, old in zip(fit, best, strict=True))
    step, offset, _ = best
    q = _affine_quants(x, step[:, None], offset[:, None], top)
    step, offset, _ = _fit_affine(x, q, sums)
    return step, offset


def _encode_affine(blocks: np.ndarray, bits: int) -> np.ndarray:
    """Super-blocks (B, 256) as Q4_K (bits 4) or Q5_K (bits 5) bytes (B, 144 or 176)."""
    top = (1 << bits) - 1
    count = blocks.shape[0]
    x = blocks.reshape(count, 8, 32)
    step, offset = (v.reshape(count, 8) for v in _sub_blocks_affine(x.reshape(-1, 32), top))
    mins = -offset
    d = _fp16(step.max(-1, keepdims=True) / 63)
    dmin = _fp16(mins.max(-1, keepdims=True) / 63)
    scales = np.clip(np.rint(_safe_div(step, d)), 0, 63)
    levels = np.clip(np.rint(_safe_div(mins, dmin)), 0, 63)
    q = _affine_quants(x, (d * scales)[..., None], -(dmin * levels)[..., None], top)
    d, dmin = _refit_d_dmin(x, q, scales, levels, d, dmin)
    q = _affine_quants(x, (d * scales)[..., None], -(dmin * levels)[..., None], top).astype(np.uint8)
    head = np.concatenate([d.astype(np.float16).view(np.uint8), dmin.astype(np.float16).view(np.uint8),
                           _pack_scales(scales.astype(np.uint8), levels.astype(np.uint8))], axis=-1)
    nibbles = q & 0x0F
    pairs = nibbles.reshape(count, 4, 2, 32)
    low = pairs[:, :, 0] | (pairs[:, :, 1] << 4)
    if bits == 4:
        return np.concatenate([head, low.reshape(count, 128)], axis=-1)
    fifth = (q >> 4).reshape(count, 8, 32) << np.arange(8, dtype=np.uint8)[None, :, None]
    high = np.bitwise_or.reduce(fifth, axis=1)
    return np.concatenate([head, high, low.reshape(count, 128)], axis=-1)


def _refit_d_dmin(x: np.ndarray, q: np.ndarray, scales: np.ndarray, levels: np.ndarray,
                  d: np.ndarray, dmin: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares d, dmin of x (B, 8, 32) ~ d*scale*q - dmin*min with the integers fixed (step 3)."""
    count = x.shape[0]
    u = (q * scales[..., None]).reshape(count, -1)
    v = np.repeat(levels, 32, axis=-1)
    flat = x.reshape(count, -1)
    uu, uv, vv = (np.einsum("ij,ij->i", a, b) for a, b in ((u, u), (u, v), (v, v)))
    xu, xv = np.einsum("ij,ij->i", flat, u), np.einsum("ij,ij->i", flat, v)
    det = uu * vv - uv * uv
    solvable = det > 1e-6 * np.maximum(uu * vv, 1e-30)
    new_d = np.where(solvable, _safe_div(xu * vv - xv * uv, det), _safe_div(xu, uu))
    new_dmin = np.where(solvable, -_safe_div(uu * xv - uv * xu, det), dmin[:, 0])
    keep = ~np.isfinite(new_d) | ~np.isfinite(new_dmin) | (uu == 0)
    return (_fp16(np.where(keep, d[:, 0], new_d))[:, None], _fp16(np.where(keep, dmin[:, 0], new_dmin))[:, None])


def _pack_scales(scales: np.ndarray, mins: np.ndarray) -> np.ndarray:
    """Eight 6-bit scales and eight 6-bit mins per super-block (B, 8) as its 12 scale bytes (B, 12)."""
    first = scales[:, :4] | ((scales[:, 4:] >> 4) << 6)
    second = mins[:, :4] | ((mins[:, 4:] >> 4) << 6)
    third = (scales[:, 4:] & 0x0F) | ((mins[:, 4:] & 0x0F) << 4)
    return np.concatenate([first, second, third], axis=-1)


def _sub_blocks_symmetric(x: np.ndarray) -> np.ndarray:
    """Each 16-weight sub-block's signed step for x ~ step*q, q in -32..31 (step 1 for Q6_K)."""
    rows = np.arange(x.shape[0])
    extreme = x[rows, np.abs(x).argmax(-1)][:, None]  # the weight of largest magnitude, with its sign
    best_step = np.zeros(x.shape[0], np.float32)
    best_gain = np.full(x.shape[0], -1.0, np.float32)
    q = np.empty_like(x)
    for delta in SYMMETRIC_TRIALS:
        # The extreme goes to the -32 end, the one with a level more; least squares then sets the step.
        np.multiply(x, _safe_div(np.float32(-(32 + delta)), extreme), out=q)
        np.rint(q, out=q)
        np.clip(q, -32, 31, out=q)
        sum_xq, sum_qq = np.einsum("ij,ij->i", x, q), np.einsum("ij,ij->i", q, q)
        gain = _safe_div(sum_xq * sum_xq, sum_qq)  # the squared error falls by this much
        better = gain > best_gain
        best_step = np.where(better, _safe_div(sum_xq, sum_qq), best_step)
        best_gain = np.where(better, gain, best_gain)
    return best_step


def _symmetric_quants(x: np.ndarray, step: np.ndarray) -> np.ndarray:
    """Integer levels -32..31 (as float32) of x (..., n) for x ~ step*q, step (..., 1)."""
    q = x * _safe_div(np.float32(1), step)
    np.rint(q, out=q)
    return np.clip(q, -32, 31, out=q)


def _encode_q6_k(blocks: np.ndarray) -> np.ndarray:
    """Super-blocks (B, 256) as Q6_K bytes (B, 210)."""
    count = blocks.shape[0]
    x = blocks.reshape(count, 16, 16)
    step = _sub_blocks_symmetric(x.reshape(-1, 16)).reshape(count, 16)
    d = _fp16(np.abs(step).max(-1, keepdims=True) / 127)
    scales = np.clip(np.rint(_safe_div(step, d)), -127, 127)
    q = _symmetric_quants(x, (d * scales)[..., None])
    u = (q * scales[..., None]).reshape(count, -1)
    d_fit = _safe_div(np.einsum("ij,ij->i", blocks, u), np.einsum("ij,ij->i", u, u))[:, None]
    d = _fp16(np.where(np.any(u != 0, axis=-1, keepdims=True), d_fit, d))
    q = (_symmetric_quants(x, (d * scales)[..., None]) + 32).astype(np.uint8)
    halves = q.reshape(count, 2, 128)
    low = (halves[:, :, :64] & 0x0F) | ((halves[:, :, 64:] & 0x0F) << 4)  # (B, 2, 64)
    high = (halves >> 4).reshape(count, 2, 4, 32) << (2 * np.arange(4, dtype=np.uint8))[None, None, :, None]
    high = np.bitwise_or.reduce(high, axis=2)  # (B, 2, 32)
    return np.concatenate([low.reshape(count, 128), high.reshape(count, 64), scales.astype(np.int8).view(np.uint8),
                           d.astype(np.float16).view(np.uint8)], axis=-1)
