"""Llama 3.1's chat format for tests, built offline: its template, a tokenizer with its special tokens
and a tiny Llama whose greedy reply is scripted to end with <|eot_id|>."""

from __future__ import annotations

from pathlib import Path

BOS, END_OF_TEXT, EOT = "<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"
START_HEADER, END_HEADER = "<|start_header_id|>", "<|end_header_id|>"
# The real template writes this into the system turn of every prompt, with or without a system message.
DATED = "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"
SCRIPTED_REPLY = "Hello world"  # what the tiny model says, in two tokens, before <|eot_id|>


def header(role: str) -> str:
    """The header that opens a `role` turn."""
    return f"{START_HEADER}{role}{END_HEADER}\n\n"


# Written from the format's description (tool use left out): BOS, a system turn that always holds the
# dated block and then the system message, each message trimmed and ended by <|eot_id|> with nothing
# after it, and the assistant header as the generation prompt.
TEMPLATE = (
    "{{- bos_token }}"
    "{%- if messages and messages[0].role == 'system' %}"
    "{%- set system_message = messages[0].content | trim %}{%- set turns = messages[1:] %}"
    "{%- else %}{%- set system_message = '' %}{%- set turns = messages %}{%- endif %}"
    "{%- if date_string is not defined %}{%- set date_string = '26 Jul 2024' %}{%- endif %}"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' }}"
    "{{- 'Cutting Knowledge Date: December 2023\\nToday Date: ' + date_string + '\\n\\n' }}"
    "{{- system_message + '<|eot_id|>' }}"
    "{%- for message in turns %}"
    "{{- '<|start_header_id|>' + message.role + '<|end_header_id|>\\n\\n' + message.content | trim + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}")


def save_tokenizer(source: Path, out: Path) -> Path:
    """The SmolLM2 tokenizer at `source` with Llama 3.1's special tokens and template, saved to `out`.

    As Meta's tokenizer does, it has no pad token, its eos is <|end_of_text|> (only the model's
    generation config names <|eot_id|>) and plain encoding prepends <|begin_of_text|>.
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source)
    tokenizer.add_special_tokens({"bos_token": BOS, "eos_token": END_OF_TEXT,
                                  "extra_special_tokens": [START_HEADER, END_HEADER, EOT]})
    tokenizer.pad_token = None
    tokenizer.add_bos_token = True
    tokenizer.chat_template = TEMPLATE
    tokenizer.save_pretrained(out)
    return out


def scripted_tokens(tokenizer) -> list[int]:
    """[last prompt token, the reply's two tokens, <|eot_id|>]: each token the greedy choice after the one before."""
    prompt_end = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                               tokenize=True, return_dict=True)["input_ids"][-1]
    reply = tokenizer(SCRIPTED_REPLY, add_special_tokens=False)["input_ids"]
    assert len(reply) == 2 and tokenizer.decode(reply) == SCRIPTED_REPLY
    return [prompt_end, *reply, tokenizer.convert_tokens_to_ids(EOT)]


def save_bigram_model(tokenizer, out: Path, links: list[tuple[int, int]], eot: int,
                      runner_up: tuple[int, int] | None = None) -> Path:
    """A 2-layer Llama whose greedy decoding follows `links` ((token, next token) pairs), saved with `tokenizer`.

    Attention and MLP outputs are zeroed, so the last hidden state is the current token's embedding (a one-hot
    slot per token that leads somewhere) and the head is a bigram table: each link scores 10, `runner_up`
    (token, next token) 5. The generation config's eos is [eos, `eot`] as in Llama 3.
    """
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    sources = list(dict.fromkeys(source for source, _ in links))
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=max(32, -(-len(sources) // 16) * 16), intermediate_size=64,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        embed, head = model.model.embed_tokens.weight, model.lm_head.weight
        head.zero_()
        for slot, token in enumerate(sources):
            embed[token] = torch.nn.functional.one_hot(torch.tensor(slot), config.hidden_size).float()
        # Row t of the head scores token t from the current token's slot: t follows the tokens it reads.
        for source, target in links:
            head[target, sources.index(source)] = 10.0
        if runner_up is not None:
            head[runner_up[1], sources.index(runner_up[0])] = 5.0
    model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id,
                                               eos_token_id=[tokenizer.eos_token_id, eot])
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def save_model(tokenizer_dir: Path, out: Path) -> Path:
    """A bigram Llama (save_bigram_model) with the tokenizer in `tokenizer_dir`, saved to `out` with it: after any
    prompt greedy decoding says SCRIPTED_REPLY, then <|eot_id|>, and after <|eot_id|> it would start the reply
    again, so a decoder that misses that stop runs on to max_new_tokens."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    prompt_end, first, second, eot = scripted_tokens(tokenizer)
    links = [(prompt_end, first), (first, second), (second, eot), (eot, first)]
    return save_bigram_model(tokenizer, out, links, eot)
