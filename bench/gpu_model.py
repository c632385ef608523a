"""The GPU check's model, made on the spot: a Llama-3.1-style tokenizer trained here and Llama-3.1-8B's exact config
with random weights. Nothing is downloaded and no model package is needed (the lent GPU machines have none).

The tokenizer is a byte-level BPE (Llama 3's pre-tokenizer pattern) trained in-process on the repository's own
documentation, with Llama 3.1's special tokens and chat template (tests/llama31.py): as Meta's, it prepends
<|begin_of_text|>, ends text with <|end_of_text|>, has no pad token, and its chat turns end with <|eot_id|>. Its
vocabulary is a few thousand ids: the model keeps the real 128,256-row embedding and head (they are what decode
reads), and the head's rows of every id past the tokenizer and of its special tokens are zero, so a greedy reply
never ends early and always runs to max_new_tokens.
"""

from __future__ import annotations

import sys
from pathlib import Path

from common import REPO

sys.path.insert(0, str(REPO / "tests"))
from llama31 import BOS, END_HEADER, END_OF_TEXT, EOT, START_HEADER, TEMPLATE

# Llama 3's split before byte-level BPE (tiktoken's cl100k pattern): contractions, words with one leading
# non-letter, numbers of up to 3 digits, punctuation runs, newlines and spaces.
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
SPECIAL = [BOS, END_OF_TEXT, START_HEADER, END_HEADER, EOT, "<|eom_id|>", "<|python_tag|>",
           "<|finetune_right_pad_id|>"]
VOCAB = 4096  # trained ids at most (the text holds fewer merges than that)
# What --tiny changes in Llama-3.1-8B's config: 2 layers of width 64, the same vocabulary and rope.
TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2}


def training_text() -> list[str]:
    """The text the BPE learns from: the repository's Markdown (tracked, so on every machine that runs this)."""
    files = sorted([REPO / "README.md", *(REPO / "docs").glob("*.md")])
    return [path.read_text(encoding="utf-8") for path in files if path.is_file()]


def build_tokenizer():
    """A PreTrainedTokenizerFast shaped like Llama 3.1's (see the module docstring)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=SPECIAL, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(training_text(), trainer)
    bos = bpe.token_to_id(BOS)
    bpe.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B",
                                                       special_tokens=[(BOS, bos)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=BOS, eos_token=END_OF_TEXT,
                                        extra_special_tokens=SPECIAL[2:], chat_template=TEMPLATE)
    tokenizer.model_max_length = 131072
    return tokenizer


def build_model(out: Path, tiny: bool, device: str) -> Path:
    """Llama-3.1-8B's config (TINY's sizes with `tiny`) in bf16 with random weights made on `device`, saved to
    `out` with the tokenizer (once: a folder marked complete is reused)."""
    import torch
    from transformers import LlamaForCausalLM

    from llama_space.training.memory import llama31_8b_config

    if (out / "complete").exists():
        return out
    tokenizer = build_tokenizer()
    config = llama31_8b_config()
    if tiny:
        config.update(TINY)
    ends = [tokenizer.convert_tokens_to_ids(END_OF_TEXT), tokenizer.convert_tokens_to_ids(EOT)]
    config.bos_token_id, config.eos_token_id = tokenizer.bos_token_id, ends
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM._from_config(config, dtype=torch.bfloat16)
    with torch.no_grad():
        model.lm_head.weight[len(tokenizer):] = 0
        model.lm_head.weight[tokenizer.convert_tokens_to_ids(SPECIAL)] = 0
    model.generation_config.eos_token_id = ends
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "complete").write_text("")
    return out
