"""The tokenizer half of a GGUF export: a byte-level BPE vocabulary (Llama 3, SmolLM2) as llama.cpp reads it."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from llama_space.errors import UserError

if TYPE_CHECKING:
    from gguf import GGUFWriter
    from transformers import PreTrainedTokenizerBase

# End-of-turn tokens of the chat formats we ship (and their close relatives), by their text.
END_OF_TURN_TOKENS = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>")


@dataclass
class GgufVocab:
    """What the `tokenizer.*` keys of a GGUF file say."""

    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    pre: str  # llama.cpp's name for the pre-tokenizer (the regex that splits text before BPE)
    special_ids: dict[str, int] = field(default_factory=dict)  # bos, eos, unk, pad, eot -> id
    add_bos: bool = False
    add_eos: bool = False
    chat_template: str | None = None

    def add_to(self, writer: GGUFWriter) -> None:
        """Write the vocabulary, its special tokens and the chat template as GGUF metadata."""
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(self.pre)
        writer.add_token_list(self.tokens)
        writer.add_token_types(self.token_types)
        writer.add_token_merges(self.merges)
        handlers = {"bos": writer.add_bos_token_id, "eos": writer.add_eos_token_id,
                    "unk": writer.add_unk_token_id, "pad": writer.add_pad_token_id,
                    "eot": writer.add_eot_token_id}
        for kind, token_id in self.special_ids.items():
            handlers[kind](token_id)
        writer.add_add_bos_token(self.add_bos)
        writer.add_add_eos_token(self.add_eos)
        writer.add_add_space_prefix(False)  # byte-level BPE marks spaces itself ("Ġ")
        if self.chat_template:
            writer.add_chat_template(self.chat_template)


def read_vocab(model_dir: Path, vocab_size: int) -> GgufVocab:
    """The tokenizer saved in `model_dir`, as a GGUF vocabulary of exactly `vocab_size` entries."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    except (OSError, ValueError) as exc:
        raise UserError("The model folder has no tokenizer that loads; save the tokenizer with the model "
                        "(tokenizer.json and tokenizer_config.json) and export again.") from exc
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise UserError("GGUF export needs a fast tokenizer (tokenizer.json) in the model folder.")
    spec = json.loads(backend.to_str())
    _check_byte_level_bpe(spec)
    if len(tokenizer) > vocab_size:
        raise UserError(f"The tokenizer has {len(tokenizer)} tokens but the model's embedding only "
                        f"{vocab_size} rows; resize the embeddings before exporting.")
    tokens, types = _tokens_and_types(tokenizer, spec, vocab_size)
    return GgufVocab(
        tokens=tokens, token_types=types, merges=_merges(spec), pre=_pre_tokenizer_name(spec),
        special_ids=_special_ids(tokenizer, tokens), add_bos=_adds_first(tokenizer, tokenizer.bos_token_id),
        add_eos=_adds_last(tokenizer, tokenizer.eos_token_id), chat_template=tokenizer.chat_template)


def _check_byte_level_bpe(spec: dict) -> None:
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or "ByteLevel" not in json.dumps(spec.get("pre_tokenizer")):
        raise UserError("GGUF export supports byte-level BPE tokenizers (Llama 3.x, SmolLM2); this model's "
                        "tokenizer is a different kind.")


def _tokens_and_types(tokenizer: PreTrainedTokenizerBase, spec: dict, vocab_size: int) -> tuple[list[str], list[int]]:
    from gguf import TokenType

    by_id = {token_id: text for text, token_id in spec["model"]["vocab"].items()}
    added = tokenizer.added_tokens_decoder
    tokens: list[str] = []
    types: list[int] = []
    for token_id in range(vocab_size):
        if token_id in added:
            tokens.append(added[token_id].content)
            types.append(TokenType.CONTROL if added[token_id].special else TokenType.USER_DEFINED)
        elif token_id in by_id:
            tokens.append(by_id[token_id])  # in the byte-level alphabet, as llama.cpp expects ("Ġthe")
            types.append(TokenType.NORMAL)
        else:
            # Embedding rows past the tokenizer (vocabularies padded to a round size) get placeholders,
            # named as llama.cpp's own converter names them, so token ids keep matching rows.
            tokens.append(f"[PAD{token_id}]")
            types.append(TokenType.UNUSED)
    return tokens, types


def _merges(spec: dict) -> list[str]:
    """BPE merges as llama.cpp lists them: "left right", one string each."""
    merges = spec["model"].get("merges") or []
    if not merges:
        raise UserError("The tokenizer has no BPE merges; GGUF export needs tokenizer.json with its merges.")
    if isinstance(merges[0], str):
        return merges  # the older "left right" form
    # tokenizers now stores pairs; a space inside a part is written as its byte-level letter, "Ġ".
    return [" ".join(part.replace(" ", "\u0120") for part in pair) for pair in merges]


def _pre_tokenizer_name(spec: dict) -> str:
    """llama.cpp's name for how this tokenizer splits text into words before BPE."""
    from transformers.integrations.gguf.gguf_tokenizer_mapping import _LLAMA3_SPLIT

    pre = spec.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [step.get("type") for step in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"  # ByteLevel's own regex is GPT-2's (SmolLM2 as converted from its GGUF)
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits"):
        return "smollm"  # SmolLM2 as published: single digits, then GPT-2's regex
    if kinds == ["Split", "ByteLevel"] and steps[0].get("pattern", {}).get("Regex") == _LLAMA3_SPLIT:
        return "llama-bpe"  # Llama 3.x
    raise UserError("GGUF export supports the Llama 3.x and SmolLM2 tokenizers; this tokenizer splits text "
                    f"differently ({' + '.join(map(str, kinds))}), so llama.cpp would tokenize it wrongly.")


def _special_ids(tokenizer: PreTrainedTokenizerBase, tokens: list[str]) -> dict[str, int]:
    ids = {"bos": tokenizer.bos_token_id, "eos": tokenizer.eos_token_id,
           "unk": tokenizer.unk_token_id, "pad": tokenizer.pad_token_id}
    # llama.cpp stops at EOS and at EOT; Llama 3 base tokenizers say EOS is <|end_of_text|> while chats end
    # on <|eot_id|>, so name the end-of-turn token too.
    ids["eot"] = next((tokens.index(text) for text in END_OF_TURN_TOKENS if text in tokens), None)
    return {kind: token_id for kind, token_id in ids.items() if token_id is not None}


def _adds_first(tokenizer: PreTrainedTokenizerBase, token_id: int | None) -> bool:
    # Ask the tokenizer itself: the flag lives in tokenizer_config or in tokenizer.json's post-processor.
    ids = tokenizer("a")["input_ids"]
    return token_id is not None and bool(ids) and ids[0] == token_id


def _adds_last(tokenizer: PreTrainedTokenizerBase, token_id: int | None) -> bool:
    ids = tokenizer("a")["input_ids"]
    return token_id is not None and bool(ids) and ids[-1] == token_id
