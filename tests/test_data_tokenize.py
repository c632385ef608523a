"""Loss masking with the model's own chat template: labels hold exactly the assistant replies and end-of-turn."""

from __future__ import annotations

import itertools
import json
import random

import pytest
from transformers import AutoTokenizer

from llama_space.data import IGNORE_INDEX, build_examples, tokenize_messages, validate_file
from llama_space.data import tokenize as tokenize_module
from llama_space.data.limits import MAX_TURNS
from llama_space.data.tokenize import Masker
from llama_space.errors import UserError

from llama31 import BOS, DATED, EOT, header

SINGLE = [{"role": "user", "content": "What is the capital of France?"},
          {"role": "assistant", "content": "The capital of France is Paris."}]
MULTI = [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello! How can I help?"},
         {"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue, like the sea."}]
# A template unlike ChatML: the system prompt merged into the first user turn, a space before each
# reply and no newline after the end-of-turn token.
MERGED_SYSTEM_TEMPLATE = (
    "{%- set ns = namespace(system='') -%}"
    "{%- for m in messages -%}"
    "{%- if m.role == 'system' -%}{%- set ns.system = m.content + '\\n\\n' -%}"
    "{%- elif m.role == 'user' -%}<|im_start|>[INST] {{ ns.system }}{{ m.content }} [/INST]"
    "{%- set ns.system = '' -%}"
    "{%- else %} {{ m.content }}<|im_end|>{%- endif -%}"
    "{%- endfor -%}")


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def trained_runs(tokenizer, row: dict) -> list[str]:
    """The decoded text of each contiguous run of trained (non -100) labels."""
    runs = itertools.groupby(zip(row["input_ids"], row["labels"]), key=lambda pair: pair[1] != IGNORE_INDEX)
    return [tokenizer.decode([label for _, label in group]) for trained, group in runs if trained]


def test_single_turn_labels_are_exactly_the_reply_and_end_of_turn(tokenizer):
    row = tokenize_messages(tokenizer, SINGLE, max_length=512)
    full = tokenizer.apply_chat_template(SINGLE, tokenize=True, return_dict=True)["input_ids"]
    prompt = tokenizer.apply_chat_template(SINGLE[:1], tokenize=True, add_generation_prompt=True,
                                           return_dict=True)["input_ids"]
    assert row["input_ids"] == list(full)  # the trainer sees exactly the chat-templated conversation
    assert len(row["labels"]) == len(row["input_ids"])
    assert row["labels"][: len(prompt)] == [IGNORE_INDEX] * len(prompt)
    assert trained_runs(tokenizer, row) == ["The capital of France is Paris.<|im_end|>"]
    assert tokenizer.decode(row["input_ids"][-1:]) == "\n" and row["labels"][-1] == IGNORE_INDEX  # after <|im_end|>


def test_multi_turn_trains_every_reply_and_masks_the_default_system_prompt(tokenizer):
    row = tokenize_messages(tokenizer, MULTI, max_length=512)
    assert "You are a helpful AI assistant named SmolLM" in tokenizer.decode(row["input_ids"])
    assert trained_runs(tokenizer, row) == ["Hello! How can I help?<|im_end|>", "Blue, like the sea.<|im_end|>"]
    masked = tokenizer.decode([t for t, label in zip(row["input_ids"], row["labels"]) if label == IGNORE_INDEX])
    assert "Hi there" in masked and "Name a colour." in masked and "Paris" not in masked


def test_own_system_prompt_replaces_the_default(tokenizer):
    messages = [{"role": "system", "content": "Talk like a pirate."}, *SINGLE]
    row = tokenize_messages(tokenizer, messages, max_length=512)
    text = tokenizer.decode(row["input_ids"])
    assert "SmolLM" not in text and "Talk like a pirate." in text
    assert trained_runs(tokenizer, row) == ["The capital of France is Paris.<|im_end|>"]


def test_other_template_layout_is_masked_from_its_own_rendering(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.chat_template = MERGED_SYSTEM_TEMPLATE
    row = tokenize_messages(tokenizer, [{"role": "system", "content": "Be brief."}, *MULTI], max_length=512)
    assert tokenizer.decode(row["input_ids"]).startswith("<|im_start|>[INST] Be brief.\n\nHi there [/INST]")
    assert trained_runs(tokenizer, row) == [" Hello! How can I help?<|im_end|>", " Blue, like the sea.<|im_end|>"]


def test_truncation_keeps_max_length_tokens(tokenizer):
    prompt = tokenizer.apply_chat_template(SINGLE[:1], tokenize=True, add_generation_prompt=True,
                                           return_dict=True)["input_ids"]
    row = tokenize_messages(tokenizer, SINGLE, max_length=len(prompt) + 2)
    assert len(row["input_ids"]) == len(row["labels"]) == len(prompt) + 2
    assert trained_runs(tokenizer, row) == ["The capital"]


def test_no_chat_template_is_refused(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.chat_template = None
    with pytest.raises(UserError, match="has no chat template"):
        tokenize_messages(tokenizer, SINGLE, max_length=64)


def test_max_length_must_be_positive(tokenizer):
    with pytest.raises(UserError, match="max_length must be at least 1"):
        tokenize_messages(tokenizer, SINGLE, max_length=0)


@pytest.fixture(scope="module")
def llama31(llama31_tokenizer_dir):
    return AutoTokenizer.from_pretrained(llama31_tokenizer_dir)


def masked_text(tokenizer, row: dict) -> str:
    return tokenizer.decode([token for token, label in zip(row["input_ids"], row["labels"]) if label == IGNORE_INDEX])


@pytest.mark.parametrize("system", ["", "Be brief."], ids=["no-system-message", "system-message"])
def test_llama31_labels_are_each_reply_and_eot_not_headers_or_dated_block(llama31, system):
    messages = [{"role": "system", "content": system}] * bool(system) + MULTI
    row = tokenize_messages(llama31, messages, max_length=512)
    assert row["input_ids"] == llama31.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
    assert all(label in (IGNORE_INDEX, token) for token, label in zip(row["input_ids"], row["labels"]))
    assert trained_runs(llama31, row) == [f"Hello! How can I help?{EOT}", f"Blue, like the sea.{EOT}"]
    assert masked_text(llama31, row) == (
        f"{BOS}{header('system')}{DATED}{system}{EOT}{header('user')}Hi there{EOT}{header('assistant')}"
        f"{header('user')}Name a colour.{EOT}{header('assistant')}")


def test_llama31_reply_also_in_the_dated_block_is_trained_where_the_reply_is(llama31):
    messages = [{"role": "user", "content": "When does your knowledge end?"},
                {"role": "assistant", "content": "December 2023"}]
    row = tokenize_messages(llama31, messages, max_length=512)
    assert trained_runs(llama31, row) == [f"December 2023{EOT}"]
    assert masked_text(llama31, row).count("December 2023") == 1  # the dated block's stays masked


def test_llama31_truncation_keeps_the_masking_of_the_full_row(llama31):
    full = tokenize_messages(llama31, MULTI, max_length=512)
    trained = {k for k, label in enumerate(full["labels"]) if label != IGNORE_INDEX}
    first_reply, second_reply = sorted(k for k in trained if k - 1 not in trained)
    expected = {10: [], first_reply: [], second_reply: [f"Hello! How can I help?{EOT}"],
                second_reply + 2: [f"Hello! How can I help?{EOT}", "Blue,"]}
    for max_length, runs in expected.items():
        row = tokenize_messages(llama31, MULTI, max_length=max_length)
        assert row == {"input_ids": full["input_ids"][:max_length], "labels": full["labels"][:max_length]}
        assert trained_runs(llama31, row) == runs


def write_chat(path, conversations):
    path.write_text("".join(json.dumps({"messages": m}) + "\n" for m in conversations), encoding="utf-8")
    return path


def test_rows_without_trainable_tokens_are_dropped_and_counted(tokenizer, tmp_path):
    long_prompt = [{"role": "user", "content": "word " * 80}, {"role": "assistant", "content": "Short."}]
    path = write_chat(tmp_path / "c.jsonl", [SINGLE, long_prompt, MULTI])
    examples = build_examples(path, tokenizer, max_length=64)
    assert [trained_runs(tokenizer, row)[0] for row in examples] == [
        "The capital of France is Paris.<|im_end|>", "Hello! How can I help?<|im_end|>"]
    assert all(len(row["input_ids"]) <= 64 for row in examples)
    report = validate_file(path, tokenizer, max_length=64)
    assert (report["valid_rows"], report["no_trainable"], report["too_long"]) == (2, 1, 1)
    assert {"row": 2, "message": "no assistant token within max_length=64; skipped"} in report["warnings"]


def test_zero_trainable_tokens_is_an_error_not_a_silent_zero_loss(tokenizer, tmp_path):
    long_prompt = [{"role": "user", "content": "word " * 80}, {"role": "assistant", "content": "Short."}]
    path = write_chat(tmp_path / "c.jsonl", [long_prompt, long_prompt[:1] + [{"role": "assistant", "content": "B"}]])
    with pytest.raises(UserError, match=r"Nothing to train: none of the 2 rows is usable \(2 with no assistant token"):
        build_examples(path, tokenizer, max_length=32)


def test_template_that_rejects_a_row_reports_it(tiny_model_dir, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.chat_template = ("{% for m in messages %}{% if (m.role == 'user') != (loop.index0 % 2 == 0) %}"
                               "{{ raise_exception('Conversation roles must alternate user/assistant') }}{% endif %}"
                               "<|im_start|>{{ m.content }}<|im_end|>{% endfor %}")
    double_user = [SINGLE[0], SINGLE[0], SINGLE[1]]
    report = validate_file(write_chat(tmp_path / "c.jsonl", [SINGLE, double_user]), tokenizer, max_length=64)
    assert report["valid_rows"] == 1
    assert report["errors"][0]["row"] == 2
    assert "roles must alternate" in report["errors"][0]["message"]


def alternating(turns: int) -> list[dict]:
    """A conversation of `turns` messages, user first, each with its own text."""
    return [{"role": ("user", "assistant")[n % 2], "content": f"Turn {n}: " + ("ask" if n % 2 == 0 else "answer")}
            for n in range(turns)]


@pytest.mark.parametrize("name", ["chatml", "llama31"])
def test_masking_renders_a_conversation_a_few_times_whatever_its_turns(tiny_model_dir, llama31_tokenizer_dir, name,
                                                                       monkeypatch):
    # The conversation, its layout, and the first reply's prompt and turn: 2 * turns + 3 messages rendered. Before,
    # each reply rendered the conversation up to it twice: 33,152 messages rendered for 256 turns.
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir if name == "chatml" else llama31_tokenizer_dir)
    render = tokenizer.apply_chat_template
    rendered = []
    monkeypatch.setattr(tokenizer, "apply_chat_template",
                        lambda messages, **kwargs: rendered.append(len(messages)) or render(messages, **kwargs))
    for turns in (2, 8, 32, 128, MAX_TURNS):
        rendered.clear()
        row = tokenize_messages(tokenizer, alternating(turns), max_length=10**6)
        assert len(rendered) <= 4 and sum(rendered) <= 2 * turns + 3, (turns, rendered)
        end = "<|im_end|>" if name == "chatml" else EOT
        assert trained_runs(tokenizer, row) == [f"Turn {n}: answer{end}" for n in range(1, turns, 2)]


TRICKY = ["Yes", " Yes ", "\n\nYes.", "Say Yes", "", "<|im_end|>", "<|eot_id|>", "assistant", "\ue000 0\ue000"]
# Its template text differs around every reply: each reply is masked from renderings of the prefixes before it.
NUMBERED_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ loop.index }} {{ m.role }}\n{{ m.content }}<|im_end|>"
                     "{% if not loop.last %}\n{% endif %}{% endfor %}"
                     "{% if add_generation_prompt %}<|im_start|>{{ messages | length + 1 }} assistant\n{% endif %}")


def conversations(count: int, seed: int = 0) -> list[list[dict]]:
    """Conversations with a system message or none, runs of replies, and contents that look like template text."""
    rng = random.Random(seed)
    found = []
    for _ in range(count):
        messages = [{"role": "system", "content": rng.choice(TRICKY)}] * (rng.random() < 0.4)
        messages.append({"role": "user", "content": rng.choice(TRICKY)})
        for _ in range(rng.randint(1, 7)):
            role = rng.choice(["user", "assistant", "assistant"])
            text = rng.choice(TRICKY) if role == "user" else rng.choice([t for t in TRICKY if t.strip()])
            messages.append({"role": role, "content": text + rng.choice(["", " ", "\n"]) * (role == "assistant")})
        found.append(messages if any(m["role"] == "assistant" for m in messages)
                     else [*messages, {"role": "assistant", "content": "Yes"}])
    return found


@pytest.mark.parametrize("template", [None, MERGED_SYSTEM_TEMPLATE, NUMBERED_TEMPLATE, "llama31"],
                         ids=["chatml", "merged-system", "numbered", "llama31"])
def test_masking_from_one_layout_equals_masking_from_every_prefix(tiny_model_dir, llama31_tokenizer_dir, template,
                                                                  monkeypatch):
    tokenizer = AutoTokenizer.from_pretrained(llama31_tokenizer_dir if template == "llama31" else tiny_model_dir)
    if template not in (None, "llama31"):
        tokenizer.chat_template = template
    rows = conversations(150)
    linear = [Masker(tokenizer).encode(messages) for messages in rows]
    monkeypatch.setattr(tokenize_module._Layout, "of", classmethod(lambda cls, *args: None))
    assert [Masker(tokenizer).encode(messages) for messages in rows] == linear
