"""Where a LoRA job can run: its peak memory estimated for each placement, and the first that fits.

Sizes come from the model's config alone: its module tree is built on the meta device (no weights, no
download) for exact parameter counts and Linear shapes, and activations follow from a Llama-style decoder
layer's arithmetic (see `_layer_bytes`). Figures are bytes; messages print decimal GB (1e9) as model cards do.
Importing this module loads nothing heavy.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from llama_space.errors import UserError
from llama_space.training.params import TrainingParams

GB = 1e9
NF4_BITS = 4.127  # NF4 with double quant: 4 bits, an 8-bit absmax per 64 weights, an fp32 absmax per 256 of those
ADAMW_LORA_BYTES = 16  # per LoRA parameter: fp32 weight, gradient and AdamW's two moments
LOGIT_BYTES = 12  # per (token x vocab) logit at the loss's peak: saved fp32 log-softmax, its gradient in and out
KV_RESERVE_TOKENS = 4096  # KV cache kept free for chat beside a job: one long conversation
CUDA_CONTEXT = int(0.5 * GB)  # a CUDA process's context and cuBLAS workspace, which torch's allocator never sees
CPU_PROCESS = int(0.5 * GB)  # a job process's RSS before it loads weights (Python, torch, transformers: 475 MiB)
SLACK = 0.10  # allocator fragmentation on what each step allocates and frees
# (placement, quantization) -> (short name, what it is: "Training runs in ...")
WAYS = {("process", "none"): ("process", "its own process with its own copy of the base"),
        ("shared", "none"): ("shared", "the app process on the served weights (shared)"),
        ("process", "nf4"): ("QLoRA", "its own process with the base in NF4 (QLoRA)")}

# Llama-3.1-8B(-Instruct)'s config, for estimates without a download (tests, the README's table, GPU checks).
LLAMA_31_8B = {
    "vocab_size": 128256, "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
    "num_attention_heads": 32, "num_key_value_heads": 8, "max_position_embeddings": 131072,
    "rope_theta": 500000.0, "tie_word_embeddings": False, "rms_norm_eps": 1e-5,
    "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192},
    "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009]}


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


@dataclass
class Plan:
    """The way a job will run, chosen by `plan`, and why."""

    placement: str
    quantization: str
    estimate: Estimate
    free_bytes: int  # free device memory the choice was made against
    device: str  # cuda or cpu
    reason: str  # one sentence for the UI: what was chosen and why, with GB figures
    candidates: list[Estimate] = field(default_factory=list)  # every way considered, in order of preference


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


def _targeted(shape: Shape, targets: list[str]) -> list[tuple[str, int, int]]:
    """The Linear layers LoRA adapts: names equal to a target or ending in '.target', as PEFT matches them."""
    return [(n, i, o) for n, i, o in shape.linears if any(n == t or n.endswith("." + t) for t in targets)]


def lora_parameters(shape: Shape, params: TrainingParams) -> int:
    """Parameters of the LoRA adapter: r x (in + out) for every adapted Linear."""
    return sum(params.lora_r * (i + o) for _n, i, o in _targeted(shape, params.target_modules))


def kv_bytes_per_token(shape: Shape, dtype) -> int:
    """KV cache bytes per token: keys and values of every layer."""
    return 2 * shape.layers * shape.kv_heads * shape.head_dim * dtype_bytes(dtype)


def _layer_bytes(shape: Shape, params: TrainingParams, act: int, lora_act: int) -> int:
    """Bytes one decoder layer keeps for its backward pass, per token (`act`/`lora_act`: activation bytes)."""
    width = shape.heads * shape.head_dim
    norms = 2 * 4 * shape.hidden  # each RMSNorm keeps an fp32 copy of its input
    # q, then k and v repeated to every head (a packed batch's mask rules out the GQA kernels), the output,
    # and the kernel's fp32 logsumexp per head: flash/efficient SDPA never stores (tokens x tokens) scores.
    attention = 4 * width * act + 4 * shape.heads
    mlp = 3 * shape.intermediate * act  # gate output (SiLU's input), SiLU output, up output
    # Each LoRA branch keeps its own input, cast for its fp32 weights (bf16 again under CUDA autocast),
    # plus a 1-byte dropout mask, and its r-wide middle; frozen base layers keep nothing.
    adapted = _targeted(shape, params.target_modules)
    per_input = lora_act + (1 if params.lora_dropout > 0 else 0)
    lora = sum(i * per_input + params.lora_r * lora_act for _n, i, _o in adapted) // max(1, shape.layers)
    return norms + attention + mlp + lora


def _activation_bytes(shape: Shape, params: TrainingParams, act: int, lora_act: int, checkpointing: bool) -> int:
    """Saved activations of a micro-batch at the start of backward, plus what one layer's backward adds."""
    tokens = params.batch_size * params.max_length  # a packed micro-batch, worst case: every row full
    layer = _layer_bytes(shape, params, act, lora_act)
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


def default_logits_budget(shape: Shape) -> int | None:
    """What the trainer does: a chunked loss for plain-head architectures, full logits otherwise."""
    from llama_space.training import loss

    return loss.LOGITS_BUDGET if shape.model_type in loss.PLAIN_HEAD_MODEL_TYPES else None


def estimate(config, params: TrainingParams, *, placement: str, quantization: str, device: str, served_dtype,
             served_in_process: bool = True, checkpointing: bool | None = None,
             logits_budget: int | None | str = "trainer") -> Estimate:
    """Peak memory of running the job one way (checkpointing None: as params.gradient_checkpointing says,
    on for auto; logits_budget "trainer": what the trainer's loss does, None: full logits)."""
    shape = model_shape(config)
    cuda = device.startswith("cuda")
    if checkpointing is None:
        checkpointing = params.gradient_checkpointing != "off"
    if logits_budget == "trainer":
        logits_budget = default_logits_budget(shape)
    trainer_bytes = 2 if cuda else 4  # lora.load_base: bf16 on CUDA, fp32 on CPU
    own_bytes = dtype_bytes(served_dtype) if placement == "shared" else trainer_bytes
    act = 2 if cuda else own_bytes  # CUDA training runs under bf16 autocast
    lora_act = 2 if cuda else 4
    if placement == "shared":
        base = 0  # the served weights, already in memory
    elif quantization == "nf4":  # Linear weights in NF4; embeddings, head and norms stay in the compute dtype
        base = int(shape.quantizable * NF4_BITS / 8) + (shape.params - shape.quantizable) * trainer_bytes
    else:
        base = shape.params * trainer_bytes
    tokens = params.batch_size * params.max_length
    parts = {"base_weights": base,
             "lora_state": ADAMW_LORA_BYTES * lora_parameters(shape, params),
             "activations": _activation_bytes(shape, params, act, lora_act, checkpointing),
             "logits": logits_bytes(shape, tokens, act, logits_budget),
             "kv_reserve": KV_RESERVE_TOKENS * kv_bytes_per_token(shape, served_dtype) if served_in_process else 0}
    overhead = int(SLACK * (parts["activations"] + parts["logits"]))
    if placement == "process":
        overhead += CUDA_CONTEXT if cuda else CPU_PROCESS
    if quantization == "nf4":  # each 4-bit matmul dequantizes its weight into a temporary
        overhead += shape.largest_quantizable * trainer_bytes
    parts["overhead"] = overhead
    return Estimate(placement, quantization, sum(parts.values()), parts, checkpointing)


def _ways(params: TrainingParams, served_in_process: bool) -> list[tuple[str, str]]:
    """The (placement, quantization) pairs params allow, in order of preference."""
    if params.placement == "shared" and params.quantization == "nf4":
        raise UserError("QLoRA trains the job's own 4-bit copy of the base, so it cannot share the served "
                        "weights: set placement to auto or process with quantization nf4, or quantization "
                        "to none with placement shared.")
    if params.placement == "shared" and not served_in_process:
        raise UserError("placement shared trains on the model this app serves, but chat goes to a remote "
                        "backend here: set placement to auto or process.")
    if params.quantization == "nf4":
        return [("process", "nf4")]
    if params.placement == "process":
        return [("process", "none")]
    if params.placement == "shared":
        return [("shared", "none")]
    ways = [("process", "none"), ("shared", "none"), ("process", "nf4")]
    return [w for w in ways if served_in_process or w[0] != "shared"]


def _fitting(config, params: TrainingParams, way: tuple[str, str], free_bytes: int, **kwargs) -> Estimate:
    """The estimate of one way; with gradient_checkpointing auto, without checkpointing when that fits."""
    placement, quantization = way
    if params.gradient_checkpointing == "auto":
        fast = estimate(config, params, placement=placement, quantization=quantization, checkpointing=False,
                        **kwargs)
        if fast.total_bytes <= free_bytes:
            return fast
    return estimate(config, params, placement=placement, quantization=quantization, **kwargs)


def _gb(value: float) -> str:
    return f"{value / GB:.1f} GB"


def plan(config, params: TrainingParams, *, free_bytes: int, device: str, served_dtype,
         served_in_process: bool = True, logits_budget: int | None | str = "trainer") -> Plan:
    """The first way to run the job that fits in `free_bytes`; a UserError with the numbers when none does.

    `served_dtype` is the dtype of the weights chat serves in this process; `served_in_process` False (a
    remote chat backend) leaves only placements with their own copy of the base.
    """
    ways = _ways(params, served_in_process)
    kwargs = {"device": device, "served_dtype": served_dtype, "served_in_process": served_in_process,
              "logits_budget": logits_budget}
    candidates = [_fitting(config, params, way, free_bytes, **kwargs) for way in ways]
    for index, chosen in enumerate(candidates):
        if chosen.total_bytes <= free_bytes:
            return Plan(chosen.placement, chosen.quantization, chosen, free_bytes, device,
                        _reason(chosen, candidates[:index], free_bytes, params), candidates)
    raise UserError(_refusal(candidates, free_bytes, params))


def _reason(chosen: Estimate, passed: list[Estimate], free_bytes: int, params: TrainingParams) -> str:
    """Why `chosen` was taken: its estimate against the free memory, and what the preferred ways needed."""
    how = " with activation checkpointing" if chosen.checkpointing else ""
    text = f"Training runs in {chosen.label}{how}: about {_gb(chosen.total_bytes)} needed, {_gb(free_bytes)} free"
    if passed:
        text += "; " + ", ".join(f"{e.label} would need {_gb(e.total_bytes)}" for e in passed)
    elif params.placement != "auto" or params.quantization != "none":
        text += f" (placement {params.placement}, quantization {params.quantization} as asked)"
    return text + "."


def _refusal(candidates: list[Estimate], free_bytes: int, params: TrainingParams) -> str:
    """What the user reads when nothing fits: the numbers and what to change."""
    smallest = min(candidates, key=lambda e: e.total_bytes)
    tried = ", ".join(f"{e.name} {_gb(e.total_bytes)}" for e in candidates)
    fixes = ["lower max_length or batch_size"]
    if params.gradient_checkpointing == "off":
        fixes.append("set gradient_checkpointing to auto or on")
    if all(e.quantization == "none" for e in candidates):
        fixes.append("choose QLoRA (quantization nf4)")
    advice = fixes[0] if len(fixes) == 1 else f"{', '.join(fixes[:-1])} or {fixes[-1]}"
    return (f"This training job needs about {_gb(smallest.total_bytes)}, {_gb(max(0, free_bytes))} free "
            f"({tried}): {advice}.")


def free_memory(device: str) -> int:
    """Bytes free for a job: torch.cuda.mem_get_info on CUDA, the kernel's MemAvailable RAM on CPU."""
    if device.startswith("cuda"):
        import torch

        free, _total = torch.cuda.mem_get_info(torch.device(device))
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import psutil  # not Linux: no /proc

    return int(psutil.virtual_memory().available)


def served_bytes(config, served_dtype, device: str) -> int:
    """Memory chat's model takes on a device before any request: its weights, and the CUDA context there."""
    weights = model_shape(config).params * dtype_bytes(served_dtype)
    return weights + (CUDA_CONTEXT if device.startswith("cuda") else 0)


def llama31_8b_config():
    """Llama-3.1-8B's LlamaConfig, built without a download."""
    from transformers import LlamaConfig

    return LlamaConfig(**LLAMA_31_8B)
