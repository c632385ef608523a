"""A LoRA adapter as a llama.cpp adapter GGUF, applied at run time on top of the base model's own GGUF.

What llama.cpp's loader (llama_adapter_lora_init) reads:
- `general.type` = "adapter", `adapter.type` = "lora", `general.architecture` the base's ("llama"), and
  `adapter.lora.alpha` (float32): each pair is scaled by alpha / r, r being the rank of that pair's B;
- for each targeted weight, `<base tensor name>.lora_a` of numpy shape [r, in] and `.lora_b` of [out, r] (PEFT's own
  shapes: GGUF lists the dimensions reversed), F16 or F32;
- B of attn_q and attn_k with its rows in llama.cpp's rotary order, exactly as the base GGUF's attn_q/attn_k rows
  (gguf.permute_rotary): a row permutation P of the weight makes the change P(B @ A) = (P B) @ A.

The file's alpha is the adapter's lora_alpha; a pair whose PEFT scale is not alpha / r (rsLoRA's alpha / sqrt(r),
a per-module alpha_pattern) has the difference folded into its B, so llama.cpp applies exactly PEFT's change.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llama_space import adapters
from llama_space.errors import UserError
from llama_space.export.gguf import gguf_file_writer, permute_rotary, read_config
from llama_space.export.lora_weights import adapter_deltas, json_file, read_header

ADAPTER_DTYPES = ("f16", "f32")
MERGED_INSTEAD = "export it as a merged GGUF instead (kind gguf)"


@dataclass(frozen=True)
class AdapterPair:
    """One targeted weight of the adapter GGUF: its llama.cpp name and how its A and B are written."""

    name: str  # the base tensor's llama.cpp name, e.g. blk.0.attn_q.weight
    a_key: str  # PEFT's names in adapter_model.safetensors
    b_key: str
    heads: int  # put B's rows in llama.cpp's rotary order for this many heads (attn_q, attn_k); 0: none
    factor: float  # B is multiplied by this so that alpha / r times B @ A is PEFT's change


def check_adapter(adapter_dir: Path) -> dict:
    """The adapter's config; UserError saying what to do when llama.cpp cannot apply it as an adapter."""
    config = json_file(Path(adapter_dir) / adapters.CONFIG_FILE)
    for flag, what, fix in (("use_dora", "DoRA", "train it with DoRA off"),
                            ("lora_bias", "LoRA bias terms", "train it without LoRA bias"),
                            ("modules_to_save", "whole trained modules (modules_to_save)",
                             "train LoRA weights only")):
        if config.get(flag):
            raise UserError(f"This adapter uses {what}, which a llama.cpp LoRA adapter cannot carry; {fix} to "
                            "export it as an adapter GGUF.")
    _, header = read_header(Path(adapter_dir) / adapters.WEIGHTS_FILE)
    if any("lora_embedding_" in key for key in header):
        raise UserError("This adapter trains the token embeddings (embed_tokens), which the adapter GGUF export "
                        "does not write; train it without embed_tokens in its target modules.")
    return config


def plan_pairs(adapter_dir: Path, base_dir: Path) -> tuple[float, list[AdapterPair]]:
    """(the file's alpha, its tensor pairs in file order) for the adapter on the base in `base_dir`."""
    from gguf import MODEL_ARCH, get_tensor_name_map

    config, base = check_adapter(adapter_dir), read_config(Path(base_dir))
    alpha = float(config.get("lora_alpha") or 0.0)
    _, header = read_header(Path(adapter_dir) / adapters.WEIGHTS_FILE)
    names = get_tensor_name_map(MODEL_ARCH.LLAMA, base.num_hidden_layers)
    heads = {"attn_q": base.num_attention_heads, "attn_k": base.num_key_value_heads}
    pairs = []
    for weight, delta in adapter_deltas(Path(adapter_dir)).items():
        if delta.transpose:
            raise UserError(f"The adapter stores {weight} transposed (fan_in_fan_out), which llama.cpp does not "
                            f"apply; {MERGED_INSTEAD}.")
        if weight == "lm_head.weight" and base.tie_word_embeddings:
            raise UserError("This adapter trains the output head, which this base ties to its embeddings: its "
                            f"GGUF has no output tensor for llama.cpp to apply it to; {MERGED_INSTEAD}.")
        module = names.get_name(weight.removesuffix(".weight"))
        if module is None:
            raise UserError(f"The adapter changes {weight}, which has no place in a Llama GGUF; {MERGED_INSTEAD}.")
        rank = header[delta.a_key]["shape"][0]
        applied = alpha / rank if alpha else 1.0  # llama.cpp takes alpha 0 as "no scaling"
        pairs.append(AdapterPair(f"{module}.weight", delta.a_key, delta.b_key,
                                 heads.get(module.rsplit(".", 1)[-1], 0), delta.scale / applied))
    return alpha, sorted(pairs, key=lambda pair: _file_order(pair.name))


def write_adapter_gguf(adapter_dir: Path, base_dir: Path, out_file: Path, dtype: str = "f16") -> Path:
    """Write the adapter in `adapter_dir` (trained on the base in `base_dir`) as llama.cpp LoRA GGUF `out_file`."""
    from gguf import LlamaFileType
    from safetensors import safe_open

    if dtype not in ADAPTER_DTYPES:
        raise UserError(f"Unknown adapter GGUF type {dtype!r}; choose one of {', '.join(ADAPTER_DTYPES)}.")
    adapter_dir, out_file = Path(adapter_dir), Path(out_file)
    alpha, pairs = plan_pairs(adapter_dir, base_dir)
    with gguf_file_writer(out_file, "the adapter GGUF") as writer:
        writer.add_type("adapter")
        writer.add_string("adapter.type", "lora")
        writer.add_float32("adapter.lora.alpha", alpha)
        writer.add_name(adapter_dir.name)
        writer.add_file_type(LlamaFileType.MOSTLY_F16 if dtype == "f16" else LlamaFileType.ALL_F32)
        with safe_open(str(adapter_dir / adapters.WEIGHTS_FILE), framework="pt") as lora:
            for pair in pairs:
                a, b = _pair_tensors(lora, pair)
                writer.add_tensor(f"{pair.name}.lora_a", _as(a, dtype))
                writer.add_tensor(f"{pair.name}.lora_b", _as(b, dtype))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    return out_file


def adapter_gguf_bytes(adapter_dir: Path, dtype: str = "f16") -> int:
    """About the size of the adapter GGUF: every A and B at 2 (f16) or 4 bytes a number, plus the header."""
    _, header = read_header(Path(adapter_dir) / adapters.WEIGHTS_FILE)
    numbers = sum(math.prod(info["shape"]) for key, info in header.items() if ".lora_" in key)
    return numbers * (2 if dtype == "f16" else 4) + 2**20


def _pair_tensors(lora: Any, pair: AdapterPair) -> tuple[Any, Any]:
    """A [r, in] and B [out, r] in float32, B scaled and in llama.cpp's rotary row order where needed."""
    a, b = lora.get_tensor(pair.a_key).float(), lora.get_tensor(pair.b_key).float()
    if pair.factor != 1.0:
        b = b * pair.factor
    if pair.heads:
        b = permute_rotary(b, pair.heads)
    return a, b


def _as(tensor: Any, dtype: str) -> Any:
    import torch

    return tensor.to(torch.float16 if dtype == "f16" else torch.float32).contiguous().numpy()


def _file_order(name: str) -> tuple[int, str]:
    """Blocks in number order, then the rest (output.weight) last."""
    parts = name.split(".")
    return (int(parts[1]), name) if parts[0] == "blk" else (1 << 30, name)
