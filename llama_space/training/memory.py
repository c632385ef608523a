"""A model's memory arithmetic from its config alone: parameter counts, Linear shapes, LoRA size, KV cache and the
activations a Llama-style decoder keeps for backward. The module tree is built on the meta device (no weights,
no download); importing this module loads nothing heavy. The planner (planner.py) adds these up per placement.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from llama_space.training.params import TrainingParams

LOGIT_BYTES = 12  # per (token x vocab) logit at the loss's peak: saved fp32 log-softmax, its gradient in and out

# Llama-3.1-8B(-Instruct)'s config, for estimates without a download (tests, docs/fine-tuning.md's table, GPU checks).
LLAMA_31_8B = {
    "vocab_size": 128256, "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
    "num_attention_heads": 32, "num_key_value_heads": 8, "max_position_embeddings": 131072,
    "rope_theta": 500000.0, "tie_word_embeddings": False, "rms_norm_eps": 1e-5,
    "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192},
    "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009]}


@dataclass(frozen=True)
class Shape:
    """What the memory arithmetic needs from a model config."""

    params: int  # every parameter, tied ones once
    quantizable: int  # parameters of the Linear layers bitsandbytes quantizes (all but the output head)
    largest_quantizable: int  # parameters of the largest of those
    linears: tuple[tuple[str, int, int], ...]  # (module name, in_features, out_features) of every Linear
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    model_type: str


_SHAPES: dict[str, Shape] = {}


def model_shape(config) -> Shape:
    """The Shape of a transformers config (cached: building the meta tree of an 8B model takes ~2 s)."""
    key = config.to_json_string()
    if key not in _SHAPES:
        _SHAPES[key] = _build_shape(config)
    return _SHAPES[key]


def _build_shape(config) -> Shape:
    import torch
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(config)
    if hasattr(config, "quantization_config"):  # a pre-quantized checkpoint's: counts only, no quantizer
        del config.quantization_config
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    head = model.get_output_embeddings()
    linears = tuple((name, m.in_features, m.out_features) for name, m in model.named_modules()
                    if isinstance(m, torch.nn.Linear))
    quantized = [i * o for name, i, o in linears if model.get_submodule(name) is not head]
    text = config.get_text_config()
    heads = text.num_attention_heads
    return Shape(params=sum(p.numel() for p in model.parameters()), quantizable=sum(quantized),
                 largest_quantizable=max(quantized, default=0), linears=linears,
                 hidden=text.hidden_size, intermediate=text.intermediate_size, layers=text.num_hidden_layers,
                 heads=heads, kv_heads=getattr(text, "num_key_value_heads", None) or heads,
                 head_dim=getattr(text, "head_dim", None) or text.hidden_size // heads,
                 vocab=text.vocab_size, model_type=getattr(text, "model_type", ""))


def dtype_bytes(dtype) -> int:
    """Bytes per element of a torch dtype or its name (float32, bfloat16, float16)."""
    size = getattr(dtype, "itemsize", None)
    if size:
        return size
    name = str(dtype).removeprefix("torch.")
    sizes = {"float32": 4, "fp32": 4, "float": 4, "bfloat16": 2, "bf16": 2, "float16": 2, "fp16": 2, "half": 2}
    if name not in sizes:
        raise ValueError(f"unknown dtype {dtype!r}")
    return sizes[name]


def targeted(shape: Shape, targets: list[str]) -> list[tuple[str, int, int]]:
    """The Linear layers LoRA adapts: names equal to a target or ending in '.target', as PEFT matches them."""
    return [(n, i, o) for n, i, o in shape.linears if any(n == t or n.endswith("." + t) for t in targets)]


def lora_parameters(shape: Shape, params: TrainingParams) -> int:
    """Parameters of the LoRA adapter: r x (in + out) for every adapted Linear."""
    return sum(params.lora_r * (i + o) for _n, i, o in targeted(shape, params.target_modules))


def kv_bytes_per_token(shape: Shape, dtype) -> int:
    """KV cache bytes per token: keys and values of every layer."""
    return 2 * shape.layers * shape.kv_heads * shape.head_dim * dtype_bytes(dtype)


def layer_bytes(shape: Shape, params: TrainingParams, act: int, lora_act: int, cuda: bool) -> int:
    """Bytes one decoder layer keeps for its backward pass, per token (`act`/`lora_act`: activation bytes)."""
    width = shape.heads * shape.head_dim
    norms = 2 * 4 * shape.hidden  # each RMSNorm keeps an fp32 copy of its input
    # q, then k and v repeated to every head (a packed batch's mask rules out the GQA kernels), the output,
    # and the kernel's fp32 logsumexp per head: flash/efficient SDPA never stores (tokens x tokens) scores.
    attention = 4 * width * act + 4 * shape.heads
    mlp = 3 * shape.intermediate * act  # gate output (SiLU's input), SiLU output, up output
    # Each LoRA branch keeps its own input, cast for its fp32 weights (bf16 again under CUDA autocast), its
    # dropout mask (1 byte on CUDA; on CPU dropout multiplies by a mask in the input's dtype) and its r-wide
    # middle; frozen base layers keep nothing.
    adapted = targeted(shape, params.target_modules)
    per_input = lora_act + ((1 if cuda else lora_act) if params.lora_dropout > 0 else 0)
    lora = sum(i * per_input + params.lora_r * lora_act for _n, i, _o in adapted) // max(1, shape.layers)
    return norms + attention + mlp + lora


def activation_bytes(shape: Shape, params: TrainingParams, act: int, lora_act: int, checkpointing: bool,
                      cuda: bool) -> int:
    """Saved activations of a micro-batch at the start of backward, plus what one layer's backward adds."""
    tokens = params.batch_size * params.max_length  # a packed micro-batch, worst case: every row full
    layer = layer_bytes(shape, params, act, lora_act, cuda)
    if checkpointing:  # each layer keeps its input; one layer at a time is recomputed in full
        saved = tokens * shape.layers * shape.hidden * act + tokens * layer
    else:
        saved = tokens * shape.layers * layer
    transient = tokens * (3 * shape.intermediate * act + 2 * 4 * shape.hidden)  # gradients inside one layer
    return saved + transient + tokens * tokens  # + the packed batch's (tokens x tokens) bool attention mask


def logits_bytes(shape: Shape, tokens: int, act: int, logits_budget: int | None) -> int:
    """The loss's peak: all tokens' logits at once, or one chunk of at most `logits_budget` logit elements."""
    if logits_budget is None:
        return LOGIT_BYTES * tokens * shape.vocab + 4 * tokens * shape.hidden
    rows = min(tokens, max(1, logits_budget // shape.vocab))
    # Beside the chunk: the trained positions' final hidden states, gathered, and their gradients.
    return LOGIT_BYTES * rows * shape.vocab + tokens * shape.hidden * (3 * act + 4)


def llama31_8b_config():
    """Llama-3.1-8B's LlamaConfig, built without a download."""
    from transformers import LlamaConfig

    return LlamaConfig(**LLAMA_31_8B)
