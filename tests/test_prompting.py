"""Chat template application and history trimming."""

import pytest
from transformers import AutoTokenizer

from llama_space.errors import UserError
from llama_space.inference.prompting import build_prompt, normalize_messages

from llama31 import BOS, DATED, EOT, header


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


@pytest.fixture(scope="module")
def llama31(llama31_tokenizer_dir):
    return AutoTokenizer.from_pretrained(llama31_tokenizer_dir)


def long_history(pairs: int) -> list[dict]:
    history = []
    for i in range(pairs):
        history += [{"role": "user", "content": f"question {i} " + "word " * 20},
                    {"role": "assistant", "content": f"answer {i} " + "word " * 20}]
    return history


@pytest.mark.parametrize("system", ["", "You are terse."], ids=["no-system-message", "system-message"])
def test_llama31_prompt_is_one_bos_then_the_dated_block_and_ends_with_the_assistant_header(llama31, system):
    prompt = build_prompt(llama31, normalize_messages([], "Hello there", system), context_window=512,
                          max_new_tokens=16)
    assert llama31.decode(prompt.input_ids) == (
        f"{BOS}{header('system')}{DATED}{system}{EOT}{header('user')}Hello there{EOT}{header('assistant')}")
    assert prompt.input_ids.count(llama31.bos_token_id) == 1


@pytest.mark.parametrize("system", ["", "SYSTEM RULES"], ids=["no-system-message", "system-message"])
def test_llama31_trimming_drops_oldest_turns_and_keeps_system_block_and_newest_turn(llama31, system):
    messages = normalize_messages(long_history(20), "the newest question", system)
    prompt = build_prompt(llama31, messages, context_window=300, max_new_tokens=50)
    kept = [messages[0]] * bool(system) + messages[bool(system) + prompt.dropped_messages:]
    text = llama31.decode(prompt.input_ids)
    assert text == llama31.apply_chat_template(kept, tokenize=False, add_generation_prompt=True)
    assert prompt.dropped_messages > 0 and prompt.dropped_messages % 2 == 0
    assert text.startswith(f"{BOS}{header('system')}{DATED}{system}{EOT}{header('user')}question ")
    assert text.endswith(f"{header('user')}the newest question{EOT}{header('assistant')}")
    # As many turns as fit: one more pair would not.
    assert len(prompt.input_ids) <= 250
    one_more = [messages[0]] * bool(system) + messages[bool(system) + prompt.dropped_messages - 2:]
    assert len(llama31.apply_chat_template(one_more, add_generation_prompt=True, tokenize=True,
                                           return_dict=True)["input_ids"]) > 250


def test_llama31_too_long_counts_the_dated_block(llama31):
    messages = normalize_messages(long_history(1), "word " * 40, "Be brief.")
    newest = [messages[0], messages[-1]]
    needed = len(llama31.apply_chat_template(newest, add_generation_prompt=True, tokenize=True,
                                             return_dict=True)["input_ids"])
    assert build_prompt(llama31, messages, context_window=needed + 16, max_new_tokens=16).dropped_messages == 2
    with pytest.raises(UserError, match=rf"the prompt needs {needed} tokens but only {needed - 1} fit"):
        build_prompt(llama31, messages, context_window=needed + 15, max_new_tokens=16)


def one_char_turns(pairs: int) -> list[dict]:
    return [{"role": role, "content": "x"} for _ in range(pairs) for role in ("user", "assistant")]


@pytest.fixture
def template_calls(tokenizer, monkeypatch) -> list[int]:
    """Counts the tokenizer's apply_chat_template calls (one-element list, read after the call under test)."""
    calls = [0]
    apply = tokenizer.apply_chat_template

    def counting(*args, **kwargs):
        calls[0] += 1
        return apply(*args, **kwargs)

    monkeypatch.setattr(tokenizer, "apply_chat_template", counting)
    return calls


def test_a_system_prompt_that_cannot_fit_is_refused_before_any_template_call(tokenizer, template_calls):
    messages = normalize_messages(one_char_turns(1000), "x", "s" * 200_000)
    with pytest.raises(UserError, match="too long: the prompt needs at least"):
        build_prompt(tokenizer, messages, context_window=512, max_new_tokens=16)
    assert template_calls[0] == 0


@pytest.mark.parametrize("pairs", [100, 1000])
def test_dropping_many_turns_takes_a_few_template_calls_and_keeps_as_many_as_fit(tokenizer, template_calls, pairs):
    """Dropping hundreds of turns encodes the conversation a bounded number of times (it once encoded it again
    for every dropped turn: minutes for a long history), and still keeps the most turns that fit."""
    from llama_space.inference.prompting import FIT_TRIES

    messages = normalize_messages(one_char_turns(pairs), "the newest question", "SYSTEM RULES")
    prompt = build_prompt(tokenizer, messages, context_window=512, max_new_tokens=16)
    assert template_calls[0] <= 3 + FIT_TRIES
    kept = [messages[0], *messages[1 + prompt.dropped_messages:]]
    assert prompt.dropped_messages > 0 and prompt.dropped_messages % 2 == 0
    assert prompt.input_ids == tokenizer.apply_chat_template(kept, add_generation_prompt=True, tokenize=True,
                                                             return_dict=True)["input_ids"]
    assert len(prompt.input_ids) <= 496
    one_more = [messages[0], *messages[1 + prompt.dropped_messages - 2:]]
    assert len(tokenizer.apply_chat_template(one_more, add_generation_prompt=True, tokenize=True,
                                             return_dict=True)["input_ids"]) > 496
