"""The model a job trains: base weights frozen in the right dtype, a PEFT LoRA adapter on top."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from llama_space.adapters import CONFIG_FILE, WEIGHTS_FILE
from llama_space.errors import UserError
from llama_space.inference.loading import resolve_model
from llama_space.training.params import TrainingParams

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)


def load_base(model_setting: str, cache_dir: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Base model and tokenizer for training: fp32 on CPU, bf16 on CUDA (LoRA weights stay fp32 either way)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = resolve_model(model_setting, cache_dir)
    token = os.environ.get("HF_TOKEN") or None
    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    tokenizer = AutoTokenizer.from_pretrained(source, token=token)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, token=token)
    # With a KV cache in play transformers skips packed-sequence detection and rows attend to each other.
    model.config.use_cache = False
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def add_lora(model: PreTrainedModel, params: TrainingParams) -> PeftModel:
    """Wrap `model` with a fresh trainable LoRA adapter named "default"."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=params.lora_r, lora_alpha=params.lora_alpha, lora_dropout=params.lora_dropout,
                        target_modules=params.target_modules, task_type="CAUSAL_LM", bias="none")
    try:
        return get_peft_model(model, config)
    except ValueError as exc:
        if "target modules" not in str(exc).lower():
            raise
        raise UserError(f"None of the LoRA target modules {params.target_modules} exist in this model; "
                        f"its linear layers are: {', '.join(linear_layer_names(model))}") from exc


def linear_layer_names(model: PreTrainedModel) -> list[str]:
    """Distinct last name parts of the model's Linear layers (what target_modules may name)."""
    import torch

    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                   if isinstance(module, torch.nn.Linear) and name})


def wants_checkpointing(model: PreTrainedModel, params: TrainingParams) -> bool:
    """Whether to recompute activations: only when asked, or on CUDA when they would not fit.

    Activation memory of one micro-batch is estimated as ~34 bytes x hidden per token and layer in bf16
    (Korthikanti et al. 2022); checkpointing costs ~30% speed, so it is used only when needed.
    """
    import torch

    if params.gradient_checkpointing != "auto":
        return params.gradient_checkpointing == "on"
    if not torch.cuda.is_available():
        return False
    config = model.config
    tokens = params.batch_size * params.max_length
    activations = 34 * config.hidden_size * config.num_hidden_layers * tokens
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    free, _total = torch.cuda.mem_get_info()
    need = activations + weights
    log.info("activation checkpointing check: need ~%.1f GiB, free %.1f GiB", need / 2**30, free / 2**30)
    return need > 0.8 * free


def save_adapter(model: PeftModel, directory: Path, base_model: str, state_dict: dict | None = None) -> None:
    """Write exactly adapter_config.json and adapter_model.safetensors into `directory`, taking the weights from
    `state_dict` (the full model's, e.g. gathered from sharded ranks) when given, else from `model`."""
    model.peft_config["default"].base_model_name_or_path = base_model
    model.save_pretrained(str(directory), safe_serialization=True, state_dict=state_dict)
    for path in Path(directory).iterdir():
        if path.name not in (CONFIG_FILE, WEIGHTS_FILE):  # PEFT adds a README model card
            path.unlink()
