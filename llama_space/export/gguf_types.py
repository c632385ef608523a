"""Which GGML type each tensor of a GGUF export is stored in, for each export type (`qtype`).

- Vectors (the RMSNorm weights, rope_freqs) are F32 in every file.
- f16, bf16, q8_0: every matrix in that type.
- q4_0: Q4_0, with token_embd and output at Q8_0 (llama.cpp's quantizer gives output Q6_K and leaves token_embd
  at Q4_0; this export keeps both above 4 bits).
- q4_k_m, q5_k_m, q6_k: the mixes llama.cpp's quantizer makes from a float model (no importance matrix):
  * the default type is Q4_K (q4_k_m), Q5_K (q5_k_m) or Q6_K (q6_k);
  * output.weight is Q6_K, and so is token_embd.weight in a model whose head is tied to it (no output.weight);
    an untied token_embd keeps the default type;
  * in q4_k_m and q5_k_m, attn_v.weight and ffn_down.weight are Q6_K in the layers i of n where
    `more_bits(i, n)`: i < n // 8, i >= 7 * n // 8, or (i - n // 8) % 3 == 2 (Llama-3.1-8B: layers 0-3, 6, 9,
    ..., 27 and 28-31, half of them);
  * a tensor whose rows (the last dimension) do not split into 256-weight super-blocks falls back to a 32-weight
    type: Q4_K to Q5_0, Q5_K to Q5_1, Q6_K to Q8_0. SmolLM2's width of 576 sends every matrix but ffn_down there.
- Any matrix whose rows do not split into its type's blocks at all is F16.
"""

from __future__ import annotations

from typing import Any

QTYPES = ("f16", "bf16", "q8_0", "q4_0", "q4_k_m", "q5_k_m", "q6_k")
K_MIXES = {"q4_k_m": "Q4_K", "q5_k_m": "Q5_K", "q6_k": "Q6_K"}  # each mix's default type
FALLBACK = {"Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}  # for rows that are not whole super-blocks
FILE_TYPES = {"f16": "MOSTLY_F16", "bf16": "MOSTLY_BF16", "q8_0": "MOSTLY_Q8_0", "q4_0": "MOSTLY_Q4_0",
              "q4_k_m": "MOSTLY_Q4_K_M", "q5_k_m": "MOSTLY_Q5_K_M", "q6_k": "MOSTLY_Q6_K"}  # general.file_type


def more_bits(layer: int, layers: int) -> bool:
    """Whether layer `layer` of `layers` keeps attn_v and ffn_down at Q6_K in a _M mix: the first and last
    eighth of the layers and every third one between."""
    return layer < layers // 8 or layer >= 7 * layers // 8 or (layer - layers // 8) % 3 == 2


def tensor_type(name: str, shape: tuple[int, ...], qtype: str, layers: int, tied: bool) -> Any:
    """The gguf.GGMLQuantizationType of tensor `name` (llama.cpp's name, e.g. blk.3.attn_v.weight), of numpy
    `shape`, in a `qtype` file of a model with `layers` blocks whose head is `tied` to the embeddings or not."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    if len(shape) < 2:
        return GGMLQuantizationType.F32
    chosen = _chosen(name, qtype, layers, tied)
    if shape[-1] % GGML_QUANT_SIZES[GGMLQuantizationType[chosen]][0]:
        chosen = FALLBACK.get(chosen, chosen)
    ggml_type = GGMLQuantizationType[chosen]
    if shape[-1] % GGML_QUANT_SIZES[ggml_type][0]:
        return GGMLQuantizationType.F16
    return ggml_type


def _chosen(name: str, qtype: str, layers: int, tied: bool) -> str:
    """The type name the mix gives `name` before any fallback for its row size."""
    if qtype not in K_MIXES:
        if qtype == "q4_0" and name in ("token_embd.weight", "output.weight"):
            return "Q8_0"
        return qtype.upper()
    if name == "output.weight" or (tied and name == "token_embd.weight"):
        return "Q6_K"
    parts = name.split(".")
    if (qtype != "q6_k" and parts[0] == "blk" and len(parts) > 2 and parts[2] in ("attn_v", "ffn_down")
            and more_bits(int(parts[1]), layers)):
        return "Q6_K"
    return K_MIXES[qtype]


def mix_bytes(shapes: dict[str, tuple[int, ...]], qtype: str, layers: int, tied: bool) -> int:
    """The bytes the tensors `shapes` (name -> numpy shape) take in a `qtype` file."""
    import math

    from gguf import GGML_QUANT_SIZES

    total = 0
    for name, shape in shapes.items():
        block, size = GGML_QUANT_SIZES[tensor_type(name, shape, qtype, layers, tied)]
        total += math.prod(shape) // block * size
    return total
