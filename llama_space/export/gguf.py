"""GGUF export of a merged Llama-architecture model folder (Llama 3.x, SmolLM2) for llama.cpp and Ollama."""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llama_space.errors import UserError
from llama_space.export.gguf_types import FILE_TYPES, QTYPES, tensor_type
from llama_space.export.gguf_vocab import read_vocab

if TYPE_CHECKING:
    import numpy as np
    import torch
    from gguf import GGUFWriter

log = logging.getLogger(__name__)

DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}  # safetensors' names -> torch's
QUANT_CHUNK_ROWS = 1024  # rows quantized at a time, so only that many rows are ever held as float32


@dataclass
class PlannedTensor:
    """One tensor of the output file: where it comes from and how it is stored."""

    name: str  # llama.cpp's name, e.g. blk.0.attn_q.weight
    source: str  # the checkpoint's name, or "" for a tensor computed here (rope_freqs)
    shape: tuple[int, ...]  # numpy order (rows, columns)
    ggml_type: Any  # gguf.GGMLQuantizationType
    heads: int = 0  # undo transformers' rotary layout for this many heads (attn_q, attn_k); 0: none
    values: Any = None  # the data of a computed tensor


def write_gguf(model_dir: Path, out_file: Path, qtype: str,
               progress: Callable[[float], None] | None = None) -> Path:
    """Write the model in `model_dir` as one GGUF file `out_file` in `qtype`, a tensor at a time."""
    if qtype not in QTYPES:
        raise UserError(f"Unknown GGUF type {qtype!r}; choose one of {', '.join(QTYPES)}.")
    model_dir, out_file = Path(model_dir), Path(out_file)
    config = read_config(model_dir)
    vocab = read_vocab(model_dir, config.vocab_size)
    sources = _tensor_files(model_dir)
    plan = _plan(config, sources, qtype)
    with gguf_file_writer(out_file, "the GGUF file") as writer:
        _add_hyperparameters(writer, config, qtype, model_dir.name)
        vocab.add_to(writer)
        for tensor in plan:
            writer.add_tensor_info(tensor.name, _byte_shape(tensor), _uint8(), _nbytes(tensor),
                                   raw_dtype=tensor.ggml_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        _write_tensors(writer, plan, sources, progress)
    return out_file


@contextmanager
def gguf_file_writer(out_file: Path, what: str) -> Iterator[GGUFWriter]:
    """A GGUFWriter (architecture llama) on `out_file`.partial, renamed to `out_file` when the block ends without
    an error: a reader never sees half a file. The partial file goes either way; an OSError (a full disk, mostly)
    becomes a UserError naming `what` was being written, without the path."""
    from gguf import GGUFWriter

    out_file.parent.mkdir(parents=True, exist_ok=True)
    partial = out_file.with_name(out_file.name + ".partial")
    writer = GGUFWriter(partial, "llama")
    try:
        yield writer
        writer.close()
        os.replace(partial, out_file)
    except OSError as exc:
        raise UserError(f"Writing {what} failed ({exc.strerror or type(exc).__name__}); "
                        "free disk space and export again.") from exc
    finally:
        writer.close()
        partial.unlink(missing_ok=True)


def read_config(model_dir: Path) -> Any:
    """The transformers config of a Llama model folder; UserError for any other architecture or biases."""
    from transformers import AutoConfig

    if not (model_dir / "config.json").is_file():
        raise UserError("The model folder has no config.json; export a merged model folder.")
    try:
        config = AutoConfig.from_pretrained(model_dir)
    except (OSError, ValueError) as exc:
        raise UserError("The model folder's config.json could not be read as a transformers config.") from exc
    if config.model_type != "llama":
        raise UserError(f"GGUF export supports Llama-architecture models (Llama 3.x, SmolLM2); this model is "
                        f"{config.model_type!r}.")
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        raise UserError("GGUF export supports Llama models without bias terms; this one has attention or MLP biases.")
    return config


@dataclass
class SourceTensor:
    """Where one checkpoint tensor's bytes lie in its safetensors file."""

    file: Path
    shape: tuple[int, ...]
    dtype: str  # safetensors' name: F32, F16 or BF16
    start: int  # byte offsets in the file
    end: int


def _tensor_files(model_dir: Path) -> dict[str, SourceTensor]:
    """Each checkpoint tensor's name -> where it lies, from the safetensors headers only."""
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise UserError("The model folder has no .safetensors weights; merge the adapter into a folder first.")
    sources: dict[str, SourceTensor] = {}
    for file in files:
        with open(file, "rb") as handle:
            size = int.from_bytes(handle.read(8), "little")
            header = json.loads(handle.read(size))
        for name, info in header.items():
            if name == "__metadata__":
                continue
            if info["dtype"] not in DTYPES:
                raise UserError(f"GGUF export reads float32, float16 and bfloat16 weights; {name} is {info['dtype']}.")
            start, end = info["data_offsets"]
            sources[name] = SourceTensor(file, tuple(info["shape"]), info["dtype"], 8 + size + start, 8 + size + end)
    return sources


def _read(source: SourceTensor) -> torch.Tensor:
    """One tensor, read into memory with a plain read: a memory map would keep every tensor already written
    resident (16 GB on an 8B model) until the kernel needs the pages back."""
    import torch

    data = bytearray(source.end - source.start)
    with open(source.file, "rb") as handle:
        handle.seek(source.start)
        handle.readinto(data)
    return torch.frombuffer(data, dtype=getattr(torch, DTYPES[source.dtype])).reshape(source.shape)


def _plan(config: Any, sources: dict[str, SourceTensor], qtype: str) -> list[PlannedTensor]:
    """The output tensors in file order, with their llama.cpp names, shapes and types."""
    from gguf import MODEL_ARCH, get_tensor_name_map

    names = get_tensor_name_map(MODEL_ARCH.LLAMA, config.num_hidden_layers)
    heads = {"attn_q": config.num_attention_heads, "attn_k": config.num_key_value_heads}
    plan: list[PlannedTensor] = []
    if (freqs := _rope_freqs(config)) is not None:
        plan.append(PlannedTensor("rope_freqs.weight", "", freqs.shape, _ggml("f32"), values=freqs))
    for source, info in sources.items():
        if source.endswith("rotary_emb.inv_freq"):
            continue  # a buffer older checkpoints saved; llama.cpp computes it
        if source == "lm_head.weight" and config.tie_word_embeddings:
            continue  # tied: llama.cpp reuses token_embd when the file has no output tensor
        base, _, suffix = source.rpartition(".")
        name = names.get_name(base)
        if name is None:
            raise UserError(f"The checkpoint holds a tensor a Llama GGUF has no place for ({source}); "
                            "export a merged model, not an adapter folder.")
        full = f"{name}.{suffix}"
        plan.append(PlannedTensor(full, source, info.shape,
                                  tensor_type(full, info.shape, qtype, config.num_hidden_layers,
                                              config.tie_word_embeddings),
                                  heads=heads.get(name.rsplit(".", 1)[-1], 0)))
    if not config.tie_word_embeddings and not any(t.name == "output.weight" for t in plan):
        raise UserError("The config says the output layer is not tied to the embeddings, but the checkpoint "
                        "has no lm_head.weight.")
    return plan


def _rope_freqs(config: Any) -> np.ndarray | None:
    """llama.cpp's per-frequency divisors for Llama 3.1's rope scaling, or None without scaling."""
    import torch
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    rope = getattr(config, "rope_parameters", None) or {}
    kind = rope.get("rope_type", "default")
    if kind == "default":
        return None
    if kind != "llama3":
        raise UserError(f"GGUF export supports the default and Llama 3 rope scaling; this model uses {kind!r}.")
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    base = rope["rope_theta"]
    plain = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    return (plain / scaled).to(torch.float32).numpy()


def _add_hyperparameters(writer: GGUFWriter, config: Any, qtype: str, name: str) -> None:
    from gguf import GGML_QUANT_VERSION, LlamaFileType

    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_type("model")
    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_freq_base(float(config.rope_parameters["rope_theta"]))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_file_type(LlamaFileType[FILE_TYPES[qtype]])
    writer.add_vocab_size(config.vocab_size)
    writer.add_rope_dimension_count(head_dim)
    if head_dim != config.hidden_size // config.num_attention_heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    if qtype not in ("f16", "bf16"):
        writer.add_quantization_version(GGML_QUANT_VERSION)


def _write_tensors(writer: GGUFWriter, plan: list[PlannedTensor], sources: dict[str, SourceTensor],
                   progress: Callable[[float], None] | None) -> None:
    total = sum(_elements(t) for t in plan) or 1
    done = 0
    for tensor in plan:
        data = _encode(_read(sources[tensor.source]), tensor) if tensor.source else tensor.values
        writer.write_tensor_data(data)
        del data  # the one tensor in memory at a time
        done += _elements(tensor)
        if progress is not None:
            progress(done / total)  # an exception raised here stops the export; the partial file goes


def _encode(weights: torch.Tensor, tensor: PlannedTensor) -> np.ndarray:
    """`weights` as the bytes of `tensor.ggml_type`, in llama.cpp's rotary layout for attn_q/attn_k."""
    import numpy as np
    import torch
    from gguf import GGMLQuantizationType as T
    from gguf.quants import quantize

    from llama_space.export import kquants

    if tensor.heads:
        weights = permute_rotary(weights, tensor.heads)
    kind = tensor.ggml_type
    if kind == T.F32:
        return weights.to(torch.float32).contiguous().numpy()
    if kind == T.F16:
        return weights.to(torch.float16).contiguous().numpy()
    if kind == T.BF16:
        return weights.to(torch.bfloat16).contiguous().view(torch.int16).numpy().view(np.uint8)
    encode = kquants.quantize if kind.name in kquants.TYPES else quantize
    out = np.empty(_byte_shape(tensor), dtype=np.uint8)
    for start in range(0, weights.shape[0], QUANT_CHUNK_ROWS):
        rows = weights[start:start + QUANT_CHUNK_ROWS].to(torch.float32).numpy()
        out[start:start + QUANT_CHUNK_ROWS] = encode(rows, kind)
    return out


def permute_rotary(weights: torch.Tensor, heads: int) -> torch.Tensor:
    """Each head's rows from transformers' half-split rotary order to llama.cpp's interleaved pairs.

    transformers rotates dimension i with i + head_dim/2; llama.cpp rotates 2i with 2i+1. Its GGUF
    loader undoes exactly this (LlamaTensorProcessor._reverse_permute_weights).
    """
    rows = weights.shape[0]
    return (weights.reshape(heads, 2, rows // heads // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def _ggml(qtype: str) -> Any:
    from gguf import GGMLQuantizationType

    return GGMLQuantizationType[qtype.upper()]


def _byte_shape(tensor: PlannedTensor) -> tuple[int, ...]:
    from gguf.quants import quant_shape_to_byte_shape

    return quant_shape_to_byte_shape(tensor.shape, tensor.ggml_type)


def _nbytes(tensor: PlannedTensor) -> int:
    return math.prod(_byte_shape(tensor))


def _elements(tensor: PlannedTensor) -> int:
    return math.prod(tensor.shape)


def _uint8() -> Any:
    import numpy as np

    return np.dtype(np.uint8)

