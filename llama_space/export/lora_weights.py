"""What a LoRA adapter changes, read from its config and its safetensors header (no weights loaded)."""

from __future__ import annotations

import json
import math
import re
import struct
from dataclasses import dataclass
from pathlib import Path

from llama_space import adapters
from llama_space.errors import UserError

PREFIX = "base_model.model."  # PEFT's prefix on every adapter tensor name


@dataclass(frozen=True)
class LoraDelta:
    """One LoRA-targeted weight: where its A and B live in the adapter and the scale of B @ A."""

    weight: str  # the base tensor's name, e.g. model.layers.0.self_attn.q_proj.weight
    a_key: str
    b_key: str
    scale: float
    transpose: bool  # fan_in_fan_out: the base stores this weight transposed


def read_header(path: Path) -> tuple[int, dict]:
    """(header length, header) of a safetensors file: its tensors' dtypes, shapes and data offsets."""
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        return length, json.loads(f.read(length))


def adapter_deltas(adapter_dir: Path) -> dict[str, LoraDelta]:
    """Every weight the adapter changes, with its scale, from adapter_config.json and the safetensors header."""
    config = json_file(adapter_dir / adapters.CONFIG_FILE)
    for flag, what in (("use_dora", "DoRA"), ("lora_bias", "LoRA bias")):
        if config.get(flag):
            raise UserError(f"This adapter uses {what}, which merging here does not support.")
    if config.get("modules_to_save"):
        raise UserError("This adapter also trains whole modules (modules_to_save); merging here supports "
                        "LoRA weights only.")
    _, header = read_header(adapter_dir / adapters.WEIGHTS_FILE)
    # PEFT also saves the frozen base weight of a targeted embedding or output head (save_embedding_layers):
    # the base's own, unchanged by training, so the merge takes it from the base checkpoint.
    keys = [key for key in header if key != "__metadata__" and not key.endswith(".base_layer.weight")]
    stray = [key for key in keys if not re.search(r"\.lora_[AB]\.weight$", key)]
    if stray:
        raise UserError(f"The adapter holds tensors other than LoRA A/B weights (e.g. {stray[0]!r}); "
                        "merging here supports plain LoRA adapters only.")
    deltas = {}
    for a_key in (key for key in keys if key.endswith(".lora_A.weight")):
        module = a_key.removesuffix(".lora_A.weight").removeprefix(PREFIX)
        b_key = a_key.replace(".lora_A.weight", ".lora_B.weight")
        if b_key not in header:
            raise UserError(f"The adapter's weights are incomplete ({module} has no lora_B); train it again.")
        rank = header[a_key]["shape"][0]
        alpha = _pattern_value(config.get("alpha_pattern") or {}, module, config.get("lora_alpha", rank))
        scale = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
        deltas[module + ".weight"] = LoraDelta(module + ".weight", a_key, b_key, float(scale),
                                               bool(config.get("fan_in_fan_out")))
    if not deltas:
        raise UserError("The adapter holds no LoRA weights; there is nothing to merge.")
    return deltas


def _pattern_value(patterns: dict, module: str, default):
    """PEFT's per-module override (alpha_pattern keys match the end of a module's name)."""
    for pattern, value in patterns.items():
        if re.match(rf"(.*\.)?({pattern})$", module):
            return value
    return default


def json_file(path: Path) -> dict:
    """The JSON object in `path`; UserError saying which file is missing or damaged."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError as exc:
        raise UserError(f"{Path(path).name} is missing from {Path(path).parent.name}; it is not a complete "
                        "model or adapter folder.") from exc
    except ValueError as exc:
        raise UserError(f"{Path(path).name} in {Path(path).parent.name} is not valid JSON.") from exc
    return data if isinstance(data, dict) else {}
