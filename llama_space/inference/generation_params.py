"""Per-request generation parameters with range checks."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field

from llama_space.errors import UserError

MAX_LOGIT_BIAS = 300  # entries in one logit_bias (OpenAI's limit)


def _number(name: str, value: object, low: float, high: float) -> float:
    """`value` as a float (JSON clients send 1 for 1.0, and the samplers refuse ints); UserError naming `name`
    unless it is a number from `low` to `high` (bools are no numbers here)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or math.isnan(value) or not low <= value <= high:
        raise UserError(f"{name} must be between {low} and {high}, got {value!r}")
    return float(value)


def _whole(name: str, value: object, low: int, high: int | None = None) -> int:
    """`value` as an int (JSON clients may send 40.0 for 40); UserError naming `name` for a fraction, a bool,
    anything not a number, or a number outside `low`..`high`."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    wanted = f"of at least {low}" if high is None else f"from {low} to {high}"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or (high is None and value < low):
        raise UserError(f"{name} must be a whole number {wanted}, got {value!r}")
    if high is not None and not low <= value <= high:
        raise UserError(f"{name} must be between {low} and {high}, got {value!r}")
    return int(value)


@dataclass
class GenerationParams:
    """Sampling settings for one reply; temperature 0 means greedy decoding."""

    max_new_tokens: int = 512  # longest reply, in tokens
    temperature: float = 0.7  # 0 = greedy; higher = more random
    top_p: float = 0.9  # nucleus sampling: keep the smallest token set with this much probability
    top_k: int = 50  # keep only the k most likely tokens (0 = no limit)
    repetition_penalty: float = 1.0  # >1 discourages repeating tokens
    stop: list[str] = field(default_factory=list)  # strings that end the reply (not included in it)
    seed: int | None = None  # fixes sampling for reproducible replies
    frequency_penalty: float = 0.0  # OpenAI's: subtracted once per earlier occurrence in the reply
    presence_penalty: float = 0.0  # OpenAI's: subtracted once from every token the reply already holds
    logit_bias: dict[int, float] = field(default_factory=dict)  # token id -> added to its score (-100..100)
    # OpenAI's response_format (json_object / json_schema) for a backend that can constrain output (a remote
    # vLLM); the in-process model refuses it.
    response_format: dict | None = None

    def __post_init__(self) -> None:
        """Check every field and convert it to its type, for every surface that builds these from a client's
        numbers (a whole float for an int, an int for a float): a wrong type would fail later, in the sampler."""
        self.max_new_tokens = _whole("max_new_tokens", self.max_new_tokens, 1)
        self.temperature = _number("temperature", self.temperature, 0.0, 5.0)
        self.top_p = _number("top_p", self.top_p, 0.0, 1.0)
        if self.top_p == 0:
            raise UserError("top_p must be greater than 0 (use temperature 0 for greedy decoding)")
        self.top_k = _whole("top_k", self.top_k, 0, 100_000)
        self.repetition_penalty = _number("repetition_penalty", self.repetition_penalty, 0.5, 2.0)
        if self.seed is not None:
            self.seed = _whole("seed", self.seed, -2**63, 2**64 - 1)  # what torch.manual_seed takes
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        if len(self.stop) > 8 or any(not isinstance(s, str) or not s for s in self.stop):
            raise UserError("stop must be up to 8 non-empty strings")
        self.frequency_penalty = _number("frequency_penalty", self.frequency_penalty, -2.0, 2.0)
        self.presence_penalty = _number("presence_penalty", self.presence_penalty, -2.0, 2.0)
        self._check_logit_bias()

    def _check_logit_bias(self) -> None:
        if not isinstance(self.logit_bias, dict) or len(self.logit_bias) > MAX_LOGIT_BIAS:
            raise UserError(f"logit_bias must map up to {MAX_LOGIT_BIAS} token ids to biases")
        for token in self.logit_bias:
            if isinstance(token, bool) or not isinstance(token, int) or token < 0:
                raise UserError(f"logit_bias keys must be token ids (whole numbers from 0), got {token!r}")
        self.logit_bias = {token: _number(f"logit_bias[{token}]", bias, -100.0, 100.0)
                           for token, bias in self.logit_bias.items()}

    @property
    def penalizes(self) -> bool:
        """Whether OpenAI's frequency/presence penalties or a logit bias change the scores."""
        return bool(self.frequency_penalty or self.presence_penalty or self.logit_bias)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def generate_kwargs(self) -> dict:
        """Keyword arguments for `model.generate` (sampling ones only when sampling)."""
        kwargs = {"max_new_tokens": self.max_new_tokens, "repetition_penalty": self.repetition_penalty}
        if self.greedy:
            return {**kwargs, "do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        return {**kwargs, "do_sample": True, "temperature": self.temperature, "top_p": self.top_p,
                "top_k": self.top_k or None}
