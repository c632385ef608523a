"""When a LoRA adapter fails to load: say why in words a user can act on, and leave the model as it was."""

from __future__ import annotations

from typing import Any


def adapter_load_failure(name: str, base: str, exc: BaseException) -> str:
    """What went wrong loading adapter `name` on `base` (no paths or traces: the log has those)."""
    text = str(exc).lower()
    if isinstance(exc, MemoryError) or "out of memory" in text:
        return (f"Adapter {name!r} could not be loaded: not enough memory. Unload or delete other adapters, "
                "or restart the app with a smaller max_new_tokens or concurrency.")
    if "size mismatch" in text or ("shape" in text and "mismatch" in text):
        return (f"Adapter {name!r} does not fit {base}: its weight shapes differ from the base model's, so it "
                "was trained on another base model. Start the app with that model, or train it again here.")
    if type(exc).__name__ in ("SafetensorError", "HeaderTooLarge", "JSONDecodeError", "UnicodeDecodeError") \
            or "header" in text or "deserializ" in text:
        return (f"Adapter {name!r} is damaged: its files cannot be read (cut short or corrupt). "
                "Delete it and train or upload it again.")
    return f"Adapter {name!r} could not be loaded on {base} ({type(exc).__name__}); the server log has the details."


def discard_failed_load(model: Any, peft: Any, name: str) -> None:
    """Undo what a failed load left behind: LoRA layers PEFT injected into the plain `model` in place (first
    adapter), or the half-added adapter `name` in `peft` (later ones), so other requests run as before."""
    if peft is not None:
        if name in getattr(peft, "peft_config", {}):
            peft.delete_adapter(name)
        return
    from peft.tuners.tuners_utils import BaseTunerLayer

    for key, module in list(model.named_modules()):
        if isinstance(module, BaseTunerLayer):
            parent_name, _, child = key.rpartition(".")
            setattr(model.get_submodule(parent_name), child, module.get_base_layer())
    if hasattr(model, "peft_config"):
        del model.peft_config
