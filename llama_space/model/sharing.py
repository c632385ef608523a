"""A second module tree over a model's own tensors, no weight copied: what a LoRA job trains on beside the
model chat serves (training/shared.py says why the served tree itself cannot be trained)."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedModel


def _unwrapped(module):
    """The plain layer a PEFT wrapper holds (a LoRA layer's base_layer, a modules_to_save wrapper's
    original), or None for a module that is no PEFT wrapper."""
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils.other import AuxiliaryTrainingWrapper

    if isinstance(module, BaseTunerLayer):
        return module.get_base_layer()
    return module.original_module if isinstance(module, AuxiliaryTrainingWrapper) else None


def plain_copy(model: PreTrainedModel) -> PreTrainedModel:
    """A new module tree of `model` without any PEFT layers whose parameters and buffers are `model`'s own
    tensors (no weight is copied), for training a LoRA beside the served model.

    PEFT injects served adapters into `model` in place (a LoRA layer wraps the original Linear as its
    base_layer): each wrapper is copied as the layer it wraps, so the copy is the plain base whatever
    adapters are loaded. Call it while nothing swaps adapters (the model lock held).
    """
    served = {id(t): t for t in (*model.parameters(), *model.buffers())}
    memo: dict[int, object] = dict(served)
    for module in model.modules():
        inner = _unwrapped(module)
        if inner is not None:
            memo[id(module)] = copy.deepcopy(inner, memo)
    compiled = getattr(model, "_compiled_call", None)  # generate's compiled decode step: not the copy's to use
    if compiled is not None:
        memo[id(compiled)] = None
    clone = copy.deepcopy(model, memo)
    clone.__dict__.pop("peft_config", None)  # PEFT's record of the served adapters, set on the injected model
    # A tensor reached some other way than as a parameter or buffer would have been copied: never train on one.
    copied = [name for name, t in (*clone.named_parameters(), *clone.named_buffers()) if id(t) not in served]
    if copied:
        raise RuntimeError(f"the training tree would copy {copied[:3]} instead of sharing them")
    return clone
