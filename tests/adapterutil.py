"""A LoRA adapter with random non-zero weights, saved the way training saves one (tests never train for it).

    from adapterutil import random_adapter

    random_adapter(tiny_model_dir, adapters_dir / "pirate", seed=3)
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from llama_space import adapters


def random_adapter(base_dir: str | Path, directory: Path, seed: int = 1, r: int = 4, alpha: int = 32,
                   targets: Sequence[str] = ("q_proj", "v_proj"), base_model: str | None = None,
                   **options) -> Path:
    """Save a LoRA on the model in `base_dir` into `directory`, with metadata naming `base_model`
    (default: `base_dir`; "" writes no metadata file) and any other LoraConfig `options`; returns `directory`."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    config = LoraConfig(r=r, lora_alpha=alpha, target_modules=list(targets), init_lora_weights=False,
                        **options)
    get_peft_model(model, config).save_pretrained(directory)
    base = str(base_dir) if base_model is None else base_model
    if base:
        (Path(directory) / adapters.METADATA_FILE).write_text(json.dumps({"base_model": base}))
    return Path(directory)
