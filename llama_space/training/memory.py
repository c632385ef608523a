"""What a LoRA job holds in memory, from the model's config alone: the model's shape (parameter counts, Linear
shapes), then bytes per part (base weights, LoRA state, saved activations, the loss's logits, KV cache, what the
job's training method adds) for one way of running the job. The module tree is built on the meta device (no
weights, no download); importing this module loads nothing heavy. Figures are bytes. The planner (planner.py)
picks the way that fits.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from llama_space.training.params import TrainingParams

GB = 1e9
LOGIT_BYTES = 12  # per (token x vocab) logit at the loss's peak: saved fp32 log-softmax, its gradient in and out
# A head running in a 16-bit dtype (CUDA autocast, bf16 weights) adds its own logits and their gradient in that dtype
# beside the fp32 copy the loss takes: the chunk recomputed in backward holds all of them at once.

# Llama-3.1-8B(-Instruct)'s config, for estimates without a download (tests, docs/fine-tuning.md's table, GPU checks).
LLAMA_31_8B = {
    "vocab_size": 128256, "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
    "num_attention_heads": 32, "num_key_value_heads": 8, "max_position_embeddings": 131072,
    "rope_theta": 500000.0, "tie_word_embeddings": False, "rms_norm_eps": 1e-5,
    "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192},
    "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009]}
NF4_BITS = 4.127  # NF4 with double quant: 4 bits, an 8-bit absmax per 64 weights, an fp32 absmax per 256 of those
ADAMW_LORA_BYTES = 16  # per LoRA parameter: fp32 weight, gradient and AdamW's two moments
KV_RESERVE_TOKENS = 4096  # KV cache kept free for chat beside a job: one long conversation
CUDA_CONTEXT = int(0.5 * GB)  # a CUDA process's context (kernels, libraries), which torch's allocator never sees
# cuBLAS and cuBLASLt workspaces of the stream a job trains on (32 MiB each on Hopper, less on older GPUs): torch's
# allocator hands them out, so they count in a job's measured peak.
CUBLAS_WORKSPACE = 2 * 32 * 2**20
ADAMW_TEMPORARY_BYTES = 4  # per LoRA parameter: the fp32 sqrt of the second moment AdamW's foreach step allocates
CPU_PROCESS = int(0.55 * GB)  # a job process's RSS before its weights: 0.50 GB of imports, data and tokenizer
SLACK = 0.10  # allocator fragmentation on what each step allocates and frees
# On CPU a process keeps more than its live tensors: glibc's heap holds on to freed blocks under its largest
# mmap threshold (32 MiB), which the temporaries of matmuls on weights that small reuse and fragment (dequantized
# NF4 weights too); larger blocks go back to the system. As multiples of those Linear weights' bytes, calibrated
# on SmolLM2-135M (bench/train_memory.py, BENCHMARKS.md); with MALLOC_MMAP_THRESHOLD_=131072 it disappears.
CPU_RETAINED = {"none": 2.5, "nf4": 3.9}
HEAP_BLOCK_LIMIT = 32 * 2**20
# (placement, quantization) -> (short name, what it is: "Training runs in ...")
WAYS = {("process", "none"): ("process", "its own process with its own copy of the base"),
        ("shared", "none"): ("shared", "the app process on the served weights (shared)"),
        ("process", "nf4"): ("QLoRA", "its own process with the base in NF4 (QLoRA)")}


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


def activation_bytes(shape: Shape, params: TrainingParams, tokens: int, act: int, lora_act: int, checkpointing: bool,
                     cuda: bool) -> int:
    """Saved activations of a packed micro-batch of `tokens` at the start of backward, plus what one layer's
    backward adds."""
    layer = layer_bytes(shape, params, act, lora_act, cuda)
    if checkpointing:  # each layer keeps its input; one layer at a time is recomputed in full
        saved = tokens * shape.layers * shape.hidden * act + tokens * layer
    else:
        saved = tokens * shape.layers * layer
    transient = tokens * (3 * shape.intermediate * act + 2 * 4 * shape.hidden)  # gradients inside one layer
    return saved + transient + tokens * tokens  # + the packed batch's (tokens x tokens) bool attention mask


def logits_bytes(shape: Shape, tokens: int, act: int, logits_budget: int | None) -> int:
    """The loss's peak: all tokens' logits at once, or one chunk of at most `logits_budget` logit elements (each
    chunk's logits recomputed in backward, with their gradients, in the head's `act`-byte dtype and in fp32)."""
    per_logit = LOGIT_BYTES + (2 * act if act < 4 else 0)
    if logits_budget is None:
        return per_logit * tokens * shape.vocab + 4 * tokens * shape.hidden
    rows = min(tokens, max(1, logits_budget // shape.vocab))
    # Beside the chunk: the trained positions' final hidden states, gathered, and their gradients.
    return per_logit * rows * shape.vocab + tokens * shape.hidden * (3 * act + 4)


def step_parts(shape: Shape, params: TrainingParams, *, cuda: bool, weight_bytes: int, checkpointing: bool,
               logits_budget: int | None | str = "method") -> dict[str, int]:
    """What a training step adds to the weights, by part: the LoRA state, the activations a forward saves for
    backward, the loss's logits (logits_budget "method": as the job's method's loss keeps them, None: all of a
    micro-batch at once), and whatever the job's training method adds under its own names."""
    # Imported here: method modules build on this module's arithmetic.
    from llama_space.training.methods import StepMemory, get_method

    method = get_method(params.method)
    if logits_budget == "method":
        logits_budget = method.logits_budget(shape)
    act = 2 if cuda else weight_bytes  # CUDA training runs under bf16 autocast
    lora_act = 2 if cuda else 4
    # A packed micro-batch at worst: every sequence of every example max_length long.
    tokens = params.batch_size * params.max_length * method.sequences_per_row
    lora = lora_parameters(shape, params)
    parts = {"lora_state": ADAMW_LORA_BYTES * lora,
             "activations": activation_bytes(shape, params, tokens, act, lora_act, checkpointing, cuda),
             "logits": logits_bytes(shape, tokens, act, logits_budget)}
    # The optimizer step runs after backward has freed the activations and logits: its temporaries raise the peak
    # only by what they exceed those by (an adapter large beside a short micro-batch).
    parts["optimizer_step"] = max(0, ADAMW_TEMPORARY_BYTES * lora - parts["activations"] - parts["logits"])
    if cuda:
        parts["cublas_workspace"] = CUBLAS_WORKSPACE
    added = method.memory_terms(StepMemory(shape, params, tokens, act, lora_act, checkpointing, cuda))
    if taken := sorted(added.keys() & parts.keys()):
        raise ValueError(f"training method {method.name!r} names its memory terms {taken} as the core's own")
    return parts | added


def step_slack(parts: dict[str, int]) -> int:
    """Allocator fragmentation on what a step allocates and frees: every step part but the LoRA state."""
    return int(SLACK * (sum(parts.values()) - parts["lora_state"]))


def _cpu_retained(shape: Shape, quantization: str, weight_bytes: int) -> int:
    """What glibc's heap keeps beside the live tensors of a CPU job (see CPU_RETAINED)."""
    small = sum(i * o * weight_bytes for _n, i, o in shape.linears if i * o * weight_bytes <= HEAP_BLOCK_LIMIT)
    return int(CPU_RETAINED[quantization] * small)


def step_bytes(config, params: TrainingParams, *, device: str, dtype, checkpointing: bool,
               logits_budget: int | None | str = "method") -> int:
    """Memory a training step needs beside weights already loaded in `dtype` (allocator slack included)."""
    shape, cuda = model_shape(config), device.startswith("cuda")
    parts = step_parts(shape, params, cuda=cuda, weight_bytes=dtype_bytes(dtype), checkpointing=checkpointing,
                       logits_budget=logits_budget)
    retained = 0 if cuda else _cpu_retained(shape, params.quantization, dtype_bytes(dtype))
    return sum(parts.values()) + step_slack(parts) + retained


@dataclass
class Estimate:
    """Estimated peak memory of one way to run a job, on top of what the device already holds."""

    placement: str  # process (own process and copy of the base) or shared (LoRA on the served weights)
    quantization: str  # none, or nf4 (the trainer's copy of the base in 4-bit NF4: QLoRA)
    total_bytes: int  # sum of parts: what must be free on the device
    parts: dict[str, int] = field(default_factory=dict)  # base_weights, lora_state, activations, logits, ...
    checkpointing: bool = False  # whether activation checkpointing is assumed (and should be used)

    @property
    def name(self) -> str:
        """process, shared or QLoRA."""
        return WAYS[(self.placement, self.quantization)][0]

    @property
    def label(self) -> str:
        """Where and how the job trains, in a few words."""
        return WAYS[(self.placement, self.quantization)][1]


def estimate(config, params: TrainingParams, *, placement: str, quantization: str, device: str, served_dtype,
             served_in_process: bool = True, checkpointing: bool | None = None,
             logits_budget: int | None | str = "method") -> Estimate:
    """Peak memory of running the job one way, on top of what the device already holds (checkpointing None: as
    params.gradient_checkpointing says, on for auto; logits_budget as step_parts takes it)."""
    shape = model_shape(config)
    cuda = device.startswith("cuda")
    if checkpointing is None:
        checkpointing = params.gradient_checkpointing != "off"
    trainer_bytes = 2 if cuda else 4  # lora.load_base: bf16 on CUDA, fp32 on CPU
    if placement == "shared":
        base = 0  # the served weights, already in memory
    elif quantization == "nf4":  # Linear weights in NF4; embeddings, head and norms stay in the compute dtype
        base = int(shape.quantizable * NF4_BITS / 8) + (shape.params - shape.quantizable) * trainer_bytes
    else:
        base = shape.params * trainer_bytes
    weight_bytes = dtype_bytes(served_dtype) if placement == "shared" else trainer_bytes
    step = step_parts(shape, params, cuda=cuda, weight_bytes=weight_bytes, checkpointing=checkpointing,
                      logits_budget=logits_budget)
    parts = {"base_weights": base, **step,
             "kv_reserve": KV_RESERVE_TOKENS * kv_bytes_per_token(shape, served_dtype) if served_in_process else 0}
    overhead = step_slack(step)
    if placement == "process":
        overhead += CUDA_CONTEXT if cuda else CPU_PROCESS
    if quantization == "nf4":  # each 4-bit matmul dequantizes its weight into a temporary
        overhead += shape.largest_quantizable * trainer_bytes
    if not cuda:
        overhead += _cpu_retained(shape, quantization, weight_bytes)
    parts["overhead"] = overhead
    return Estimate(placement, quantization, sum(parts.values()), parts, checkpointing)


def served_bytes(config, served_dtype, device: str) -> int:
    """Memory chat's model takes on a device before any request: its weights, and the CUDA context there."""
    weights = model_shape(config).params * dtype_bytes(served_dtype)
    return weights + (CUDA_CONTEXT if device.startswith("cuda") else 0)


def llama31_8b_config():
    """Llama-3.1-8B's LlamaConfig, built without a download."""
    from transformers import LlamaConfig

    return LlamaConfig(**LLAMA_31_8B)
