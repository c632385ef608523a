"""The model a job trains: base weights frozen in the right dtype, a PEFT LoRA adapter on top."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from llama_space import adapters
from llama_space.adapters import CONFIG_FILE, WEIGHTS_FILE
from llama_space.errors import UserError
from llama_space.model.source import resolve_model
from llama_space.training.params import TrainingParams

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)


def load_base(model_setting: str, cache_dir: Path, quantization: str = "none"
              ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Base model and tokenizer for training: fp32 on CPU, bf16 on CUDA (LoRA weights stay fp32 either way);
    with quantization "nf4" its Linear layers (all but the head) load in 4-bit NF4 with double quant (QLoRA)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = resolve_model(model_setting, cache_dir)
    token = os.environ.get("HF_TOKEN") or None
    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    extra = nf4_arguments(dtype) if quantization == "nf4" else {}
    tokenizer = AutoTokenizer.from_pretrained(source, token=token)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, token=token, **extra)
    if quantization == "nf4":
        # What peft.prepare_model_for_kbit_training does, less its fp32 upcast of the embeddings and head (+2.1 GB
        # on an 8B model): the frozen embeddings' output requires grad, so gradients reach the LoRA weights
        # through checkpointed layers whatever checkpointing flavour runs.
        model.enable_input_require_grads()
    # With a KV cache in play transformers skips packed-sequence detection and rows attend to each other.
    model.config.use_cache = False
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def nf4_arguments(dtype) -> dict:
    """from_pretrained arguments for an NF4 (double quant) base computing in `dtype`, on this rank's device."""
    import torch
    from transformers import BitsAndBytesConfig

    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                bnb_4bit_compute_dtype=dtype)
    # A quantized model cannot be moved after loading: it loads straight onto the device it trains on.
    device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if torch.cuda.is_available() else "cpu"
    return {"quantization_config": config, "device_map": {"": device}}


def add_lora(model: PreTrainedModel, params: TrainingParams, adapters_dir: Path | None = None) -> PeftModel:
    """Wrap `model` with a trainable LoRA adapter named "default": a fresh one, or adapter params.from_adapter of
    `adapters_dir` to continue (its rank, alpha and target modules then are the adapter's own)."""
    from peft import LoraConfig, PeftModel, get_peft_model

    if params.from_adapter:
        path = adapters.adapter_path(Path(adapters_dir or "."), params.from_adapter)
        if not adapters.is_complete(path):
            raise UserError(f"There is no adapter named {params.from_adapter!r} to continue from.")
        return PeftModel.from_pretrained(model, str(path), adapter_name="default", is_trainable=True)

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
    """Whether to recompute activations: when asked, or (auto) when a step would not fit without it.

    The estimate of what a step adds to the loaded weights (memory.step_bytes: LoRA state, activations, logits,
    the training method's own terms) is compared with the memory free now; checkpointing costs ~30% speed, so it is used only when needed.
    """
    from llama_space.model.device_memory import free_memory
    from llama_space.training import memory

    if params.gradient_checkpointing != "auto":
        return params.gradient_checkpointing == "on"
    device = "cuda" if next(model.parameters()).is_cuda else "cpu"
    need = memory.step_bytes(model.config, params, device=device, dtype=model.dtype, checkpointing=False)
    free = free_memory(device)
    log.info("activation checkpointing check: a step needs ~%.1f GB without it, %.1f GB free", need / 1e9,
             free / 1e9)
    return need > free


def save_adapter(model: PeftModel, directory: Path, base_model: str, state_dict: dict | None = None) -> None:
    """Write exactly adapter_config.json and adapter_model.safetensors into `directory`, taking the weights from
    `state_dict` (the full model's, e.g. gathered from sharded ranks) when given, else from `model`."""
    model.peft_config["default"].base_model_name_or_path = base_model
    # Only the trained adapter: a preference job may hold its reference's frozen copy beside it.
    model.save_pretrained(str(directory), safe_serialization=True, state_dict=state_dict, selected_adapters=["default"])
    for path in Path(directory).iterdir():
        if path.name not in (CONFIG_FILE, WEIGHTS_FILE):  # PEFT adds a README model card
            path.unlink()
