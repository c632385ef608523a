"""Where a LoRA job runs: the ways its parameters allow (own process, shared weights, QLoRA), each way's peak
memory (memory.py) against the device's free memory, and the first way that fits, with the reason in a sentence.
Messages print decimal GB (1e9) as model cards do. Importing this module loads nothing heavy.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from llama_space.errors import UserError
from llama_space.training.memory import GB, Estimate, estimate
from llama_space.training.params import TrainingParams


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
         served_in_process: bool = True, logits_budget: int | None | str = "method") -> Plan:
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


