"""LoRA fine-tuning hyperparameters with range checks, and named presets."""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field, fields

from llama_space.adapters import BASE_NAMES, validate_name
from llama_space.errors import UserError

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_MODULE_NAME = re.compile(r"^[A-Za-z0-9_.]{1,64}$")


def _whole(name: str, value, low: int, high: int) -> int:
    """`value` as an int in [low, high]; UI number fields send whole floats such as 4.0."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise UserError(f"{name} must be a whole number between {low} and {high}, got {value!r}")
    return value


def _real(name: str, value, low: float, high: float, low_open: bool = False) -> float:
    """`value` as a float in [low, high] (or (low, high] when low_open)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UserError(f"{name} must be a number, got {value!r}")
    if value > high or value < low or (low_open and value == low):
        bracket = "(" if low_open else "["
        raise UserError(f"{name} must be in {bracket}{low}, {high}], got {value!r}")
    return float(value)


MAX_SYSTEM_PROMPT = 8192  # characters of a job's system prompt
PLACEMENTS = ("auto", "process", "shared")
QUANTIZATIONS = ("none", "nf4")
TRACKERS = ("none", "tensorboard", "trackio", "wandb", "mlflow")


def method_names() -> tuple[str, ...]:
    """The registered training methods' names (training/methods), the choices of TrainingParams.method."""
    # Imported here: method modules build on TrainingParams, so this module cannot import them as it loads.
    from llama_space.training.methods import METHODS

    return tuple(METHODS)


def _choice(name: str, value, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise UserError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")


@dataclass
class TrainingParams:
    """Everything that shapes one LoRA fine-tuning run.

    Declared in the order /start_training lists its parameters (clients may pass them by position) and the
    Fine-tune form shows its fields: both are built from this class.
    """

    learning_rate: float = 1e-4  # peak AdamW learning rate (linear decay to 0)
    num_epochs: float = 3  # passes over the training examples (ignored when max_steps is set)
    max_steps: int | None = None  # optimizer steps to run; overrides num_epochs when set
    batch_size: int = 4  # examples per forward pass (packed into one row without padding)
    grad_accum: int = 4  # forward passes accumulated per optimizer step
    max_length: int = 384  # longest example in tokens; longer ones are truncated by the data loader
    lora_r: int = 8  # LoRA rank: size of the low-rank update per weight matrix
    lora_alpha: float = 32  # LoRA scaling numerator (update is scaled by alpha / r)
    lora_dropout: float = 0.1  # dropout on the LoRA branch's input during training
    eval_fraction: float = 0.0  # share of examples held out to report eval_loss (0 = no evaluation)
    seed: int = 42  # seeds the data split, shuffling and LoRA initialisation
    target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))  # linear layers to adapt
    save_steps: int = 50  # write a resumable checkpoint (and evaluate) every this many optimizer steps
    gradient_checkpointing: str = "auto"  # auto (only when GPU memory needs it), on or off
    placement: str = "auto"  # auto (the memory planner picks), process (own process and base copy) or shared
    quantization: str = "none"  # none, or nf4: the trainer's base in 4-bit NF4 with double quant (QLoRA)
    report_to: str = "none"  # experiment tracker: none, tensorboard, trackio, wandb or mlflow
    method: str = "sft"  # training method, one of those in training/methods: sft, dpo or orpo
    beta: float = 0.1  # preference strength: DPO's beta (how far from the reference), ORPO's odds-ratio weight
    system_prompt: str = ""  # system prompt given to rows that have none; chat with the adapter uses it by default
    from_adapter: str = ""  # an existing adapter to continue training from ("" = a fresh LoRA)

    def __post_init__(self) -> None:
        self.lora_r = _whole("lora_r", self.lora_r, 1, 256)
        self.lora_alpha = _real("lora_alpha", self.lora_alpha, 0, 1024, low_open=True)
        self.lora_dropout = _real("lora_dropout", self.lora_dropout, 0, 0.9)
        self._check_targets()
        self.learning_rate = _real("learning_rate", self.learning_rate, 0, 1.0, low_open=True)
        self.num_epochs = _real("num_epochs", self.num_epochs, 0, 100, low_open=True)
        if self.max_steps in (None, 0):  # 0 from a UI number field means "not set"
            self.max_steps = None
        else:
            self.max_steps = _whole("max_steps", self.max_steps, 1, 1_000_000)
        self.batch_size = _whole("batch_size", self.batch_size, 1, 256)
        self.grad_accum = _whole("grad_accum", self.grad_accum, 1, 256)
        self.max_length = _whole("max_length", self.max_length, 16, 131_072)
        self.eval_fraction = _real("eval_fraction", self.eval_fraction, 0, 0.5)
        self.seed = _whole("seed", self.seed, 0, 2**31 - 1)
        self.save_steps = _whole("save_steps", self.save_steps, 1, 1_000_000)
        if self.gradient_checkpointing not in ("auto", "on", "off"):
            raise UserError(f"gradient_checkpointing must be auto, on or off, got {self.gradient_checkpointing!r}")
        _choice("placement", self.placement, PLACEMENTS)
        _choice("quantization", self.quantization, QUANTIZATIONS)
        _choice("report_to", self.report_to, TRACKERS)
        _choice("method", self.method, method_names())
        self.beta = _real("beta", self.beta, 0, 10, low_open=True)
        self._check_texts()

    def _check_targets(self) -> None:
        if isinstance(self.target_modules, str):
            self.target_modules = [t.strip() for t in self.target_modules.split(",") if t.strip()]
        targets = list(self.target_modules)
        if not targets or len(targets) > 32 or any(not isinstance(t, str) or not _MODULE_NAME.match(t)
                                                   for t in targets):
            raise UserError("target_modules must be 1-32 module names such as q_proj, v_proj "
                            "(letters, digits, '_' or '.')")
        self.target_modules = targets

    def _check_texts(self) -> None:
        if self.system_prompt is None:
            self.system_prompt = ""
        if not isinstance(self.system_prompt, str) or len(self.system_prompt) > MAX_SYSTEM_PROMPT:
            raise UserError(f"system_prompt must be text of at most {MAX_SYSTEM_PROMPT} characters")
        if self.from_adapter in (None, *BASE_NAMES):
            self.from_adapter = ""
        else:
            validate_name(self.from_adapter)

    def to_dict(self) -> dict:
        """Plain JSON-ready dict of every field."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainingParams:
        """Build from a dict such as to_dict() wrote; unknown keys are refused so typos do not pass silently."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UserError(f"unknown training parameter(s): {', '.join(unknown)}")
        return cls(**data)

    @classmethod
    def preset(cls, name: str, **overrides) -> TrainingParams:
        """A named preset (see PRESETS) with some fields overridden."""
        if name not in PRESETS:
            raise UserError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
        return cls.from_dict({**PRESETS[name], **overrides})


PRESETS: dict[str, dict] = {
    # The defaults: a careful run for real datasets.
    "standard": {},
    # A visible change on the embedded 135M model within a few minutes on 2 CPU cores: a high learning rate, no
    # accumulation, a fixed small number of steps and short rows. examples/persona.jsonl's loss falls from 4.3 to
    # about 1.6 by step 15; a step took 3-4.5 s on a 2-core AMD EPYC (4.5 with another process busy beside it).
    "quick": {"learning_rate": 2e-3, "grad_accum": 1, "max_steps": 30, "max_length": 256, "save_steps": 10},
}
