"""Per-request generation parameters with range checks."""

from __future__ import annotations

from dataclasses import dataclass, field

from llama_space.errors import UserError


def _check_range(name: str, value: float, low: float, high: float) -> None:
    if not isinstance(value, (int, float)) or value != value or not low <= value <= high:
        raise UserError(f"{name} must be between {low} and {high}, got {value!r}")


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

    def __post_init__(self) -> None:
        if isinstance(self.max_new_tokens, float) and self.max_new_tokens.is_integer():
            self.max_new_tokens = int(self.max_new_tokens)
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise UserError(f"max_new_tokens must be a whole number of at least 1, got {self.max_new_tokens!r}")
        _check_range("temperature", self.temperature, 0.0, 5.0)
        _check_range("top_p", self.top_p, 0.0, 1.0)
        if self.top_p == 0:
            raise UserError("top_p must be greater than 0 (use temperature 0 for greedy decoding)")
        _check_range("top_k", self.top_k, 0, 100_000)
        _check_range("repetition_penalty", self.repetition_penalty, 0.5, 2.0)
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)
                                      or not -2**63 <= self.seed < 2**64):  # what torch.manual_seed takes
            raise UserError(f"seed must be a whole number between {-2**63} and {2**64 - 1}, got {self.seed!r}")
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        if len(self.stop) > 8 or any(not isinstance(s, str) or not s for s in self.stop):
            raise UserError("stop must be up to 8 non-empty strings")

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
