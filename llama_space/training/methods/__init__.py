"""Training methods behind one interface (base.TrainingMethod), by name: TrainingParams.method picks one.

A method says what data it trains on and how it tokenizes, splits and collates it, builds its Trainer and loss,
and what memory a step needs beyond the core arithmetic's. Another method is a module here beside sft.py and
one entry in METHODS; the job process, the job registry, the memory planner, the Fine-tune tab and
/start_training take it from there.
"""

from __future__ import annotations

from llama_space.errors import UserError
from llama_space.training.methods.base import StepMemory, TrainingMethod
from llama_space.training.methods.preference import DPO, ORPO, PreferenceMethod
from llama_space.training.methods.sft import SFT

METHODS: dict[str, TrainingMethod] = {method.name: method for method in (SFT(), DPO(), ORPO())}

__all__ = ["METHODS", "PreferenceMethod", "StepMemory", "TrainingMethod", "get_method"]


def get_method(name: str) -> TrainingMethod:
    """The registered method called `name`; UserError naming the known ones otherwise."""
    if not isinstance(name, str) or name not in METHODS:
        raise UserError(f"Unknown training method {name!r}; the known methods are: {', '.join(METHODS)}.")
    return METHODS[name]
