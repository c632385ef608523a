"""How much KV cache chat may use: the longest request (prompt plus reply) and the tokens all replies may hold at once.

Both are fixed when the model loads, from the memory the weights left free and the model's own window, and never grow
with a request. A model whose window is 131,072 tokens would otherwise accept one chat whose cache (about 16 GB for
Llama-3.1-8B in bf16) does not fit beside its weights on a 24 GB card. A request beyond the context is refused with
the numbers (inference/prompting.py); requests beyond the total wait for others to finish (inference/admission.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from llama_space.errors import ModelLoadError

# Of the memory free after loading, the share KV cache may take: the rest is for activations (a prefill chunk's,
# the logits), the CUDA libraries' workspaces, and on CPU everything else the machine runs (a training job's process).
KV_SHARE = {"cuda": 0.8, "cpu": 0.5}
KV_RESERVE_BYTES = {"cuda": 2**30, "cpu": 0}  # kept back before the share: prefill activations at long contexts
MIN_CONTEXT = 256  # below this no conversation fits: refuse to start rather than serve nothing


@dataclass(frozen=True)
class ContextPlan:
    """The context one request may use and the KV cache all requests may hold together, in tokens."""

    max_context: int  # prompt plus max_new_tokens of one request
    kv_tokens: int  # tokens of KV cache every admitted reply may hold together (at least max_context)
    kv_bytes_per_token: int
    reason: str  # how max_context was chosen, for the log and the status


def _text_config(config):
    """The decoder's own config (a multimodal model nests it)."""
    return config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config


def kv_bytes_per_token(config, dtype_bytes: int) -> int:
    """Bytes of keys and values one token takes across all layers."""
    text = _text_config(config)
    heads = text.num_attention_heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    return 2 * text.num_hidden_layers * kv_heads * head_dim * dtype_bytes


def model_window(config, tokenizer=None) -> int:
    """Tokens the model was trained to attend to."""
    window = getattr(_text_config(config), "max_position_embeddings", None)
    if not window and tokenizer is not None and tokenizer.model_max_length < 10**9:
        window = tokenizer.model_max_length
    return int(window or 4096)


def plan_context(window: int, per_token: int, free_bytes: int, device_type: str, requested: int = 0) -> ContextPlan:
    """The context for a model of `window` tokens whose cache costs `per_token` bytes a token, with `free_bytes` left
    free after its weights on `device_type`; `requested` (the --max-context setting, 0 = choose) is honoured when the
    window and the memory allow it, else refused with the numbers."""
    kind = "cuda" if device_type == "cuda" else "cpu"
    budget = max(0, int(free_bytes * KV_SHARE[kind]) - KV_RESERVE_BYTES[kind])
    fits = budget // max(1, per_token)
    memory = (f"{fits} tokens of KV cache fit in {KV_SHARE[kind]:.0%} of the {free_bytes / 2**30:.1f} GiB free after "
              f"loading ({per_token / 1024:.0f} KiB a token)")
    if requested > window:
        raise ModelLoadError(f"--max-context {requested} is beyond the model's window of {window} tokens; set at most "
                        f"{window}, or 0 to size it from free memory.")
    if requested:
        if requested > fits:
            raise ModelLoadError(f"--max-context {requested} does not fit: only {memory}. Set --max-context {fits} or "
                            "less, free memory on the device, or use a smaller model or dtype.")
        return ContextPlan(requested, fits, per_token, f"--max-context {requested}; {memory}")
    if fits < MIN_CONTEXT:
        raise ModelLoadError(f"The model leaves too little memory for chat: only {memory}. Free memory on the device, "
                        "or use a smaller model or dtype.")
    context = min(window, fits)
    why = "the model's window" if context == window else "what fits in memory"
    return ContextPlan(context, fits, per_token, f"{context} tokens ({why}); {memory}")
