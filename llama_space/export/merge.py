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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from llama_space import adapters
from llama_space.errors import UserError
from llama_space.export.lora_weights import LoraDelta, adapter_deltas, json_file, read_header
from llama_space.export.resources import available_memory, gib, require_disk

INDEX_FILE = "model.safetensors.index.json"
PROVENANCE_FILE = "llama_space_export.json"  # which adapter and base the merged model came from
# Python, torch and safetensors themselves, plus the adapter (measured: see BENCHMARKS.md, "Export").
PROCESS_BYTES = 512 * 2**20
COPY_CHUNK = 8 * 2**20
# Weights and other formats of them are never copied into the merged folder; everything else at the top of the
# base folder (config, generation config, tokenizer files, chat template) is.
_NOT_COPIED = re.compile(r".*\.(safetensors|bin|pt|pth|gguf|msgpack|h5|ckpt)$|.*\.index\.json$|^README\.md$|^\..*")

HEAD, EMBEDDINGS = "lm_head.weight", "model.embed_tokens.weight"

Progress = Callable[[int, int], None]  # (bytes written, bytes in all) after each tensor; raising stops the merge


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
    # A LoRA on the output head of a model whose head is its embeddings (SmolLM2): (embeddings' shard, header
    # length, tensor info). The merged head gets a shard of its own and the embeddings stay as they were.
    tied_head: tuple[Path, int, dict] | None = None

    @property
    def memory_bytes(self) -> int:
        """Peak memory: the weight being merged and its delta in float32, its own copy, and the process."""
        return 3 * self.largest_merge_bytes + PROCESS_BYTES

    @property
    def disk_bytes(self) -> int:
        """Disk the merged folder takes (weights, plus a margin for tokenizer and config files)."""
        return self.weight_bytes + 64 * 2**20

    def describe(self, disk_bytes: int | None = None, memory_bytes: int | None = None) -> str:
        """One line for the UI: what it needs (`disk_bytes`, `memory_bytes` when an export needs other figures
        than the merge)."""
        disk = self.disk_bytes if disk_bytes is None else disk_bytes
        memory = self.memory_bytes if memory_bytes is None else memory_bytes
        size = f"{self.parameters / 1e9:.2f}B" if self.parameters >= 1e9 else f"{self.parameters / 1e6:.1f}M"
        return (f"About {gib(memory)} of memory and {gib(disk)} of disk "
                f"({size} parameters in {self.dtype}, {len(self.deltas)} LoRA weights).")


def base_shards(base_dir: Path) -> list[Path]:
    """The base's safetensors files; UserError for a quantized or non-safetensors checkpoint."""
    config = json_file(base_dir / "config.json")
    if config.get("quantization_config"):
        raise UserError("The base model's checkpoint is quantized; an adapter merges only into the unquantized "
                        "base (an adapter trained on an NF4 base too): point the model setting at the full-"
                        "precision checkpoint.")
    index = base_dir / INDEX_FILE
    if index.is_file():
        names = dict.fromkeys(json_file(index).get("weight_map", {}).values())
        shards = [base_dir / name for name in names]
    else:
        shards = sorted(base_dir.glob("*.safetensors"))
    if not shards or not all(path.is_file() for path in shards):
        raise UserError("The base model has no safetensors weights to merge into (a .bin checkpoint cannot be "
                        "streamed safely): use a model published as safetensors.")
    return shards


def plan_merge(base_dir: Path, adapter_dir: Path) -> MergePlan:
    """Check that the adapter fits the base (every target exists, shapes agree) and size the merge."""
    base_dir, adapter_dir = Path(base_dir), Path(adapter_dir)
    shards, deltas = base_shards(base_dir), adapter_deltas(adapter_dir)
    _, lora_header = read_header(adapter_dir / adapters.WEIGHTS_FILE)
    found, weight_bytes, parameters, dtypes, largest, embeddings = set(), 0, 0, {}, 0, None
    for shard in shards:
        length, header = read_header(shard)
        for name, info in header.items():
            if name == "__metadata__":
                continue
            if name == EMBEDDINGS:
                embeddings = (shard, length, info)
            start, end = info["data_offsets"]
            numel = math.prod(info["shape"])
            weight_bytes, parameters = weight_bytes + end - start, parameters + numel
            dtypes[info["dtype"]] = dtypes.get(info["dtype"], 0) + numel
            if name in deltas:
                _check_shapes(deltas[name], info["shape"], lora_header)
                found.add(name)
                largest = max(largest, numel * 4)
    tied = _tied_head(base_dir, deltas, found, embeddings, lora_header)
    if tied:
        start, end = tied[2]["data_offsets"]
        numel = math.prod(tied[2]["shape"])
        weight_bytes, parameters, largest = weight_bytes + end - start, parameters + numel, max(largest, numel * 4)
        found.add(HEAD)
    missing = sorted(set(deltas) - found)
    if missing:
        raise UserError(f"The adapter changes {missing[0]!r}, which the base model does not have: it was trained "
                        "on another base; start the app with that base model to merge it.")
    return MergePlan(base_dir, adapter_dir, shards, deltas, weight_bytes, parameters,
                     max(dtypes, key=dtypes.get), largest, adapters.read_metadata(adapter_dir), tied)


def _tied_head(base_dir: Path, deltas: dict, found: set, embeddings, lora_header: dict):
    """The embeddings' location when the adapter changes an output head that is tied to them, else None."""
    if HEAD not in deltas or HEAD in found or embeddings is None:
        return None
    if not json_file(base_dir / "config.json").get("tie_word_embeddings", False):
        return None
    _check_shapes(deltas[HEAD], embeddings[2]["shape"], lora_header)
    return embeddings


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

    count, weight_map, done = len(plan.shards) + bool(plan.tied_head), {}, 0
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
        if plan.tied_head:
            name = f"model-{count:05d}-of-{count:05d}.safetensors"
            _write_untied_head(plan, out / name, lora)
            weight_map[HEAD] = name
            progress(plan.weight_bytes, plan.weight_bytes)
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


def _merged(weight, delta: LoraDelta, lora):
    """W + (B @ A) * scale, computed in float32, in W's dtype."""
    a, b = lora.get_tensor(delta.a_key).float(), lora.get_tensor(delta.b_key).float()
    change = (b @ a) * delta.scale  # [out, r] @ [r, in] -> [out, in]
    return weight.float().add_(change.T if delta.transpose else change).to(weight.dtype).contiguous()


def _write_merged(dst, weight, delta: LoraDelta, lora, size: int) -> None:
    import torch

    data = _merged(weight, delta, lora).reshape(-1).view(torch.uint8).numpy()
    if data.nbytes != size:
        raise UserError(f"The base's {delta.weight} has an unexpected size on disk; the checkpoint is damaged.")
    dst.write(data.data)


def _write_untied_head(plan: MergePlan, target: Path, lora) -> None:
    """The merged output head (embeddings + B @ A) as a tensor of its own: PEFT's LoRA changed only the head."""
    from safetensors.torch import save_file

    shard, length, info = plan.tied_head
    start, end = info["data_offsets"]
    with open(shard, "rb") as src:
        src.seek(8 + length + start)
        weight = _read_tensor(src, info, end - start)
    save_file({HEAD: _merged(weight, plan.deltas[HEAD], lora)}, str(target), metadata={"format": "pt"})


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
    if plan.tied_head:  # the merged head is no longer the embeddings
        config = json_file(out / "config.json")
        (out / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": False}, indent=2))
    meta = plan.metadata
    (out / PROVENANCE_FILE).write_text(json.dumps({
        "adapter": plan.adapter_dir.name, "base_model": meta.get("base_model", ""),
        "base_quantization_in_training": meta.get("base_quantization"), "dtype": plan.dtype,
        "lora_weights": len(plan.deltas), "adapter_metadata": meta}, indent=1, sort_keys=True))
