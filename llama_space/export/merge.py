"""Merging a LoRA adapter into its base: a folder of safetensors shards that from_pretrained, vLLM and TGI load.

Streamed on CPU, one tensor at a time: each output shard has exactly its base shard's header (names, dtypes,
shapes and offsets: a merge changes no tensor's size), untouched tensors are copied byte for byte, and each
LoRA-targeted weight is read alone, gets W += (B @ A) * scale in float32 and is written back in its own dtype.
So an 8B merge needs memory for about one tensor, not for the model.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from llama_space import adapters
from llama_space.errors import UserError
from llama_space.export.resources import available_memory, gib, require_disk

INDEX_FILE = "model.safetensors.index.json"
PROVENANCE_FILE = "llama_space_export.json"  # which adapter and base the merged model came from
PREFIX = "base_model.model."  # PEFT's prefix on every adapter tensor name
# Python, torch and safetensors themselves, plus the adapter (measured: see BENCHMARKS.md, "Export").
PROCESS_BYTES = 512 * 2**20
COPY_CHUNK = 8 * 2**20
# Weights and other formats of them are never copied into the merged folder; everything else at the top of the
# base folder (config, generation config, tokenizer files, chat template) is.
_NOT_COPIED = re.compile(r".*\.(safetensors|bin|pt|pth|gguf|msgpack|h5|ckpt)$|.*\.index\.json$|^README\.md$|^\..*")

Progress = Callable[[int, int], None]  # (bytes written, bytes in all) after each tensor; raising stops the merge


@dataclass(frozen=True)
class LoraDelta:
    """One LoRA-targeted weight: where its A and B live in the adapter and the scale of B @ A."""

    weight: str  # the base tensor's name, e.g. model.layers.0.self_attn.q_proj.weight
    a_key: str
    b_key: str
    scale: float
    transpose: bool  # fan_in_fan_out: the base stores this weight transposed


@dataclass
class MergePlan:
    """What a merge will read and write, and what it needs."""

    base_dir: Path
    adapter_dir: Path
    shards: list[Path]  # the base's safetensors files, in index order
    deltas: dict[str, LoraDelta]  # by base tensor name
    weight_bytes: int  # of the base tensors = of the merged ones
    parameters: int
    dtype: str  # the base's (and so the merged model's) dtype, e.g. BF16
    largest_merge_bytes: int  # float32 bytes of the largest targeted weight
    metadata: dict = field(default_factory=dict)  # the adapter's (adapters.read_metadata)

    @property
    def memory_bytes(self) -> int:
        """Peak memory: the weight being merged and its delta in float32, its own copy, and the process."""
        return 3 * self.largest_merge_bytes + PROCESS_BYTES

    @property
    def disk_bytes(self) -> int:
        """Disk the merged folder takes (weights, plus a margin for tokenizer and config files)."""
        return self.weight_bytes + 64 * 2**20

    def describe(self, disk_bytes: int | None = None) -> str:
        """One line for the UI: what it needs (`disk_bytes` when an export needs more disk than the merge)."""
        disk = self.disk_bytes if disk_bytes is None else disk_bytes
        size = f"{self.parameters / 1e9:.2f}B" if self.parameters >= 1e9 else f"{self.parameters / 1e6:.1f}M"
        return (f"About {gib(self.memory_bytes)} of memory and {gib(disk)} of disk "
                f"({size} parameters in {self.dtype}, {len(self.deltas)} LoRA weights).")


def read_header(path: Path) -> tuple[int, dict]:
    """(header length, header) of a safetensors file: its tensors' dtypes, shapes and data offsets."""
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        return length, json.loads(f.read(length))


def base_shards(base_dir: Path) -> list[Path]:
    """The base's safetensors files; UserError for a quantized or non-safetensors checkpoint."""
    config = _json(base_dir / "config.json")
    if config.get("quantization_config"):
        raise UserError("The base model's checkpoint is quantized; an adapter merges only into the unquantized "
                        "base (an adapter trained on an NF4 base too): point the model setting at the full-"
                        "precision checkpoint.")
    index = base_dir / INDEX_FILE
    if index.is_file():
        names = dict.fromkeys(_json(index).get("weight_map", {}).values())
        shards = [base_dir / name for name in names]
    else:
        shards = sorted(base_dir.glob("*.safetensors"))
    if not shards or not all(path.is_file() for path in shards):
        raise UserError("The base model has no safetensors weights to merge into (a .bin checkpoint cannot be "
                        "streamed safely): use a model published as safetensors.")
    return shards


def adapter_deltas(adapter_dir: Path) -> dict[str, LoraDelta]:
    """Every weight the adapter changes, with its scale, from adapter_config.json and the safetensors header."""
    config = _json(adapter_dir / adapters.CONFIG_FILE)
    for flag, what in (("use_dora", "DoRA"), ("lora_bias", "LoRA bias")):
        if config.get(flag):
            raise UserError(f"This adapter uses {what}, which merging here does not support.")
    if config.get("modules_to_save"):
        raise UserError("This adapter also trains whole modules (modules_to_save); merging here supports "
                        "LoRA weights only.")
    _, header = read_header(adapter_dir / adapters.WEIGHTS_FILE)
    keys = [key for key in header if key != "__metadata__"]
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


def plan_merge(base_dir: Path, adapter_dir: Path) -> MergePlan:
    """Check that the adapter fits the base (every target exists, shapes agree) and size the merge."""
    base_dir, adapter_dir = Path(base_dir), Path(adapter_dir)
    shards, deltas = base_shards(base_dir), adapter_deltas(adapter_dir)
    _, lora_header = read_header(adapter_dir / adapters.WEIGHTS_FILE)
    found, weight_bytes, parameters, dtypes, largest = set(), 0, 0, {}, 0
    for shard in shards:
        _, header = read_header(shard)
        for name, info in header.items():
            if name == "__metadata__":
                continue
            start, end = info["data_offsets"]
            numel = math.prod(info["shape"])
            weight_bytes, parameters = weight_bytes + end - start, parameters + numel
            dtypes[info["dtype"]] = dtypes.get(info["dtype"], 0) + numel
            if name in deltas:
                _check_shapes(deltas[name], info["shape"], lora_header)
                found.add(name)
                largest = max(largest, numel * 4)
    missing = sorted(set(deltas) - found)
    if missing:
        raise UserError(f"The adapter changes {missing[0]!r}, which the base model does not have: it was trained "
                        "on another base; start the app with that base model to merge it.")
    return MergePlan(base_dir, adapter_dir, shards, deltas, weight_bytes, parameters,
                     max(dtypes, key=dtypes.get), largest, adapters.read_metadata(adapter_dir))


def _check_shapes(delta: LoraDelta, shape: list[int], lora_header: dict) -> None:
    rows, cols = (shape[1], shape[0]) if delta.transpose else (shape[0], shape[1])
    b_rows, a_cols = lora_header[delta.b_key]["shape"][0], lora_header[delta.a_key]["shape"][1]
    if (b_rows, a_cols) != (rows, cols):
        raise UserError(f"The adapter's {delta.weight} is {b_rows}x{a_cols} but the base's is {rows}x{cols}: "
                        "it was trained on another base; start the app with that base model to merge it.")


def check_fits(plan: MergePlan, out_dir: Path, extra_disk: int = 0) -> None:
    """Refuse (UserError with the figures) when the merge would not fit in memory or on disk."""
    free_memory = available_memory()
    if free_memory is not None and plan.memory_bytes > free_memory:
        raise UserError(f"Merging needs about {gib(plan.memory_bytes)} of memory but only {gib(free_memory)} is "
                        "available; stop other work (a training job, the chat model on CPU) and try again.")
    require_disk(out_dir, plan.disk_bytes + extra_disk, "The merged model")


def merge_adapter(plan: MergePlan, out_dir: Path, progress: Progress | None = None) -> Path:
    """Write the merged model into `out_dir` (which must not exist) via a temp dir renamed at the end."""
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise UserError(f"{out_dir.name} exists already; remove it or choose another folder.")
    check_fits(plan, out_dir.parent)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        _write_weights(plan, tmp, progress or (lambda done, total: None))
        _copy_side_files(plan, tmp)
        tmp.rename(out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def _write_weights(plan: MergePlan, out: Path, progress: Progress) -> None:
    from safetensors import safe_open

    count, weight_map, done = len(plan.shards), {}, 0
    with safe_open(str(plan.adapter_dir / adapters.WEIGHTS_FILE), framework="pt") as lora:
        for number, shard in enumerate(plan.shards, 1):
            name = f"model-{number:05d}-of-{count:05d}.safetensors"
            length, header = read_header(shard)
            tensors = sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"])
            with open(shard, "rb") as src, open(out / name, "wb") as dst:
                dst.write(src.read(8 + length))  # the same header: a merge changes no tensor's size
                for key in tensors:
                    start, end = header[key]["data_offsets"]
                    src.seek(8 + length + start)
                    if key in plan.deltas:
                        weight = _read_tensor(src, header[key], end - start)
                        _write_merged(dst, weight, plan.deltas[key], lora, end - start)
                    else:
                        _copy_bytes(src, dst, end - start)
                    weight_map[key] = name
                    done += end - start
                    progress(done, plan.weight_bytes)
    index = {"metadata": {"total_size": plan.weight_bytes, "total_parameters": plan.parameters},
             "weight_map": dict(sorted(weight_map.items()))}
    (out / INDEX_FILE).write_text(json.dumps(index, indent=2))


def _read_tensor(src, info: dict, size: int):
    """One tensor read into memory of its own (safe_open would map the shard: every merged weight's pages would
    stay in the process's memory until the end)."""
    import torch

    dtype = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}.get(info["dtype"])
    if dtype is None:
        raise UserError(f"The base stores a LoRA-targeted weight as {info['dtype']}; only float weights merge.")
    data = bytearray(src.read(size))
    if len(data) != size:
        raise UserError("A base model shard ended early; the checkpoint is damaged: download it again.")
    return torch.frombuffer(data, dtype=dtype).reshape(info["shape"])


def _write_merged(dst, weight, delta: LoraDelta, lora, size: int) -> None:
    import torch

    a, b = lora.get_tensor(delta.a_key).float(), lora.get_tensor(delta.b_key).float()
    change = (b @ a) * delta.scale  # [out, r] @ [r, in] -> [out, in]
    merged = weight.float().add_(change.T if delta.transpose else change).to(weight.dtype).contiguous()
    data = merged.reshape(-1).view(torch.uint8).numpy()
    if data.nbytes != size:
        raise UserError(f"The base's {delta.weight} has an unexpected size on disk; the checkpoint is damaged.")
    dst.write(data.data)


def _copy_bytes(src, dst, size: int) -> None:
    while size:
        chunk = src.read(min(size, COPY_CHUNK))
        if not chunk:
            raise UserError("A base model shard ended early; the checkpoint is damaged: download it again.")
        dst.write(chunk)
        size -= len(chunk)


def _copy_side_files(plan: MergePlan, out: Path) -> None:
    """Config, generation config, tokenizer and chat template beside the weights, and where they came from."""
    for path in plan.base_dir.iterdir():
        if path.is_file() and not _NOT_COPIED.fullmatch(path.name):
            shutil.copyfile(path, out / path.name)
    meta = plan.metadata
    (out / PROVENANCE_FILE).write_text(json.dumps({
        "adapter": plan.adapter_dir.name, "base_model": meta.get("base_model", ""),
        "base_quantization_in_training": meta.get("base_quantization"), "dtype": plan.dtype,
        "lora_weights": len(plan.deltas), "adapter_metadata": meta}, indent=1, sort_keys=True))


def _json(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError as exc:
        raise UserError(f"{Path(path).name} is missing from {Path(path).parent.name}; it is not a complete "
                        "model or adapter folder.") from exc
    except ValueError as exc:
        raise UserError(f"{Path(path).name} in {Path(path).parent.name} is not valid JSON.") from exc
    return data if isinstance(data, dict) else {}
