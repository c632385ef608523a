"""Where a LoRA job can run: its peak memory estimated for each placement, and the first that fits.

Sizes come from the model's config alone: its module tree is built on the meta device (no weights, no
download) for exact parameter counts and Linear shapes, and activations follow from a Llama-style decoder
layer's arithmetic (memory.py). Figures are bytes; messages print decimal GB (1e9) as model cards do.
Importing this module loads nothing heavy.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from llama_space.errors import UserError
from llama_space.training.memory import (
    LLAMA_31_8B,
    Shape,
    activation_bytes,
    dtype_bytes,
    kv_bytes_per_token,
    llama31_8b_config,
    logits_bytes,
    lora_parameters,
    model_shape,
)
from llama_space.training.params import TrainingParams

__all__ = ["LLAMA_31_8B", "Estimate", "Plan", "estimate", "free_memory", "kv_bytes_per_token", "llama31_8b_config",
           "lora_parameters", "model_shape", "plan", "served_bytes", "step_bytes"]

GB = 1e9
NF4_BITS = 4.127  # NF4 with double quant: 4 bits, an 8-bit absmax per 64 weights, an fp32 absmax per 256 of those
ADAMW_LORA_BYTES = 16  # per LoRA parameter: fp32 weight, gradient and AdamW's two moments
KV_RESERVE_TOKENS = 4096  # KV cache kept free for chat beside a job: one long conversation
CUDA_CONTEXT = int(0.5 * GB)  # a CUDA process's context and cuBLAS workspace, which torch's allocator never sees
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


def default_logits_budget(shape: Shape) -> int | None:
    """What the trainer does: a chunked loss for plain-head architectures, full logits otherwise."""
    from llama_space.training import loss

    return loss.LOGITS_BUDGET if shape.model_type in loss.PLAIN_HEAD_MODEL_TYPES else None


def _step_parts(shape: Shape, params: TrainingParams, cuda: bool, weight_bytes: int, checkpointing: bool,
                logits_budget: int | None | str) -> dict[str, int]:
    """What a training step adds to the weights: LoRA state, saved activations, the loss's logits."""
    if logits_budget == "trainer":
        logits_budget = default_logits_budget(shape)
    act = 2 if cuda else weight_bytes  # CUDA training runs under bf16 autocast
    lora_act = 2 if cuda else 4
    tokens = params.batch_size * params.max_length
    return {"lora_state": ADAMW_LORA_BYTES * lora_parameters(shape, params),
            "activations": activation_bytes(shape, params, act, lora_act, checkpointing, cuda),
            "logits": logits_bytes(shape, tokens, act, logits_budget)}


def _cpu_retained(shape: Shape, quantization: str, weight_bytes: int) -> int:
    """What glibc's heap keeps beside the live tensors of a CPU job (see CPU_RETAINED)."""
    small = sum(i * o * weight_bytes for _n, i, o in shape.linears if i * o * weight_bytes <= HEAP_BLOCK_LIMIT)
    return int(CPU_RETAINED[quantization] * small)


def step_bytes(config, params: TrainingParams, *, device: str, dtype, checkpointing: bool,
               logits_budget: int | None | str = "trainer") -> int:
    """Memory a training step needs beside weights already loaded in `dtype` (allocator slack included)."""
    shape, cuda = model_shape(config), device.startswith("cuda")
    parts = _step_parts(shape, params, cuda, dtype_bytes(dtype), checkpointing, logits_budget)
    retained = 0 if cuda else _cpu_retained(shape, params.quantization, dtype_bytes(dtype))
    return sum(parts.values()) + int(SLACK * (parts["activations"] + parts["logits"])) + retained


def estimate(config, params: TrainingParams, *, placement: str, quantization: str, device: str, served_dtype,
             served_in_process: bool = True, checkpointing: bool | None = None,
             logits_budget: int | None | str = "trainer") -> Estimate:
    """Peak memory of running the job one way (checkpointing None: as params.gradient_checkpointing says,
    on for auto; logits_budget "trainer": what the trainer's loss does, None: full logits)."""
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
    parts = {"base_weights": base,
             **_step_parts(shape, params, cuda, weight_bytes, checkpointing, logits_budget),
             "kv_reserve": KV_RESERVE_TOKENS * kv_bytes_per_token(shape, served_dtype) if served_in_process else 0}
    overhead = int(SLACK * (parts["activations"] + parts["logits"]))
    if placement == "process":
        overhead += CUDA_CONTEXT if cuda else CPU_PROCESS
    if quantization == "nf4":  # each 4-bit matmul dequantizes its weight into a temporary
        overhead += shape.largest_quantizable * trainer_bytes
    if not cuda:
        overhead += _cpu_retained(shape, quantization, weight_bytes)
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
