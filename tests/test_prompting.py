"""Chat template application and history trimming."""

import pytest
from transformers import AutoTokenizer

from llama_space.errors import UserError
from llama_space.inference.prompting import build_prompt, normalize_messages


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_normalize_puts_system_first_and_message_last():
    history = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b", "metadata": {}}]
    messages = normalize_messages(history, "c", "be brief")
    assert messages == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "a"},
                        {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]


@pytest.mark.parametrize("history, message", [([], ""), ([], "   "), ([{"role": "robot", "content": "x"}], "hi"),
                                              ([{"role": "user"}], "hi")])
def test_bad_messages_are_refused(history, message):
    with pytest.raises(UserError):
        normalize_messages(history, message)


def test_prompt_uses_the_models_chat_template(tokenizer):
    messages = normalize_messages([], "Hello there", "You are terse.")
    prompt = build_prompt(tokenizer, messages, context_window=512, max_new_tokens=16)
    text = tokenizer.decode(prompt.input_ids)
    assert text == tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert prompt.dropped_messages == 0


def test_trimming_keeps_system_prompt_and_newest_turn(tokenizer):
    history = []
    for i in range(20):
        history += [{"role": "user", "content": f"question {i} " + "word " * 20},
                    {"role": "assistant", "content": f"answer {i} " + "word " * 20}]
    messages = normalize_messages(history, "the newest question", "SYSTEM RULES")
    prompt = build_prompt(tokenizer, messages, context_window=300, max_new_tokens=50)
    text = tokenizer.decode(prompt.input_ids)
    assert len(prompt.input_ids) <= 250
    assert prompt.dropped_messages > 0 and prompt.dropped_messages % 2 == 0
    assert "SYSTEM RULES" in text and "the newest question" in text
    assert "question 0 " not in text and "answer 19" in text


def test_message_longer_than_context_is_explained(tokenizer):
    messages = normalize_messages([], "word " * 1000)
    with pytest.raises(UserError, match="too long"):
        build_prompt(tokenizer, messages, context_window=512, max_new_tokens=16)


def test_max_new_tokens_beyond_context_is_explained(tokenizer):
    with pytest.raises(UserError, match="context window"):
        build_prompt(tokenizer, normalize_messages([], "hi"), context_window=512, max_new_tokens=600)
