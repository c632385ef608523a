"""Which base an adapter merges into: the app's own (model/source.py finds its files); any other is refused."""

from __future__ import annotations

from llama_space.errors import UserError
from llama_space.model.source import base_model_name, same_base


def check_same_base(metadata: dict, model: str, adapter: str) -> None:
    """Refuse an adapter trained on another base than the one the app runs (it would merge into the wrong one)."""
    trained_on, serving = metadata.get("base_model") or "", base_model_name(model)
    if trained_on and not same_base(trained_on, serving):
        raise UserError(f"Adapter {adapter!r} was trained on {trained_on}, but the app runs {serving}: start the "
                        f"app with --model {trained_on} to merge it.")
