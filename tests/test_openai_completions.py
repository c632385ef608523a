"""The legacy /v1/completions (raw prompts, no chat template) through the openai SDK and LangChain's OpenAI,
the remaining sampling fields (frequency/presence penalties, logit_bias, response_format) on both decoders,
and the remote backend passing them on."""

from __future__ import annotations

import openai
import pytest

from llama_space.errors import UserError
from llama_space.inference import remote_wire
from llama_space.inference.generation_params import GenerationParams
from llama_space.inference.manager import ModelManager
from llama_space.inference.remote import RemoteBackend
from llama_space.inference.sampling import OpenAIPenalties
from llama_space.settings import Settings

from apputil import running_app
from llama31 import SCRIPTED_REPLY

KEY = "completions-key"
ASK = "Say hello:\n\n"  # ends on the token after which the scripted model says SCRIPTED_REPLY


@pytest.fixture(scope="module")
def url(llama31_model_dir, tmp_path_factory):
    settings = Settings(model=str(llama31_model_dir), adapters_dir=tmp_path_factory.mktemp("adapters"),
                        api_key=KEY, dtype="float32")
    with running_app(settings) as base_url:
        yield base_url


@pytest.fixture(scope="module")
def client(url):
    return openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def tokenizer(llama31_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(llama31_model_dir)


def test_a_string_prompt_is_continued_as_it_is(client, tokenizer):
    reply = client.completions.create(model="base", prompt=ASK, max_tokens=8, temperature=0)
    (choice,) = reply.choices
    assert reply.object == "text_completion" and reply.id.startswith("cmpl-")
    assert choice.text == SCRIPTED_REPLY and choice.finish_reason == "stop" and choice.index == 0
    # No chat template: the prompt's tokens are its plain encoding (with the tokenizer's BOS).
    assert reply.usage.prompt_tokens == len(tokenizer(ASK)["input_ids"])
    assert reply.usage.completion_tokens == 3  # "Hello", " world", <|eot_id|>
    echoed = client.completions.create(model="base", prompt=ASK, max_tokens=8, temperature=0, echo=True)
    assert echoed.choices[0].text == ASK + SCRIPTED_REPLY
    short = client.completions.create(model="base", prompt=ASK, max_tokens=1, temperature=0)
    assert short.choices[0].text == "Hello" and short.choices[0].finish_reason == "length"
    stopped = client.completions.create(model="base", prompt=ASK, max_tokens=8, temperature=0, stop=" world")
    assert stopped.choices[0].text == "Hello" and stopped.choices[0].finish_reason == "stop"


def test_prompt_lists_and_n_give_one_choice_each_streamed_or_not(client):
    kwargs = {"model": "base", "prompt": ["A:\n\n", "B:\n\n"], "n": 2, "echo": True, "max_tokens": 8,
              "temperature": 0}
    whole = client.completions.create(**kwargs)
    texts = [c.text for c in sorted(whole.choices, key=lambda c: c.index)]
    assert texts == ["A:\n\n" + SCRIPTED_REPLY] * 2 + ["B:\n\n" + SCRIPTED_REPLY] * 2
    chunks = list(client.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs))
    streamed, finished = ["", "", "", ""], {}
    for chunk in chunks:
        for choice in chunk.choices:
            streamed[choice.index] += choice.text
            if choice.finish_reason:
                finished[choice.index] = choice.finish_reason
    assert streamed == texts and finished == {0: "stop", 1: "stop", 2: "stop", 3: "stop"}
    assert chunks[-1].choices == [] and chunks[-1].usage.model_dump() == whole.usage.model_dump()


def test_seeded_sampling_repeats(client):
    kwargs = {"model": "base", "prompt": "Once upon a time", "max_tokens": 8, "temperature": 1.5}
    first = client.completions.create(seed=7, **kwargs).choices[0].text
    assert client.completions.create(seed=7, **kwargs).choices[0].text == first
    assert {client.completions.create(seed=s, **kwargs).choices[0].text for s in (8, 9)} != {first}


def test_logit_bias_steers_both_endpoints(client, tokenizer):
    hello = tokenizer("Hello", add_special_tokens=False)["input_ids"][0]
    biased = client.completions.create(model="base", prompt=ASK, max_tokens=4, temperature=0,
                                       logit_bias={str(hello): -100})
    assert not biased.choices[0].text.startswith("Hello")
    chat = client.chat.completions.create(model="base", messages=[{"role": "user", "content": "hi"}],
                                          max_tokens=4, temperature=0, logit_bias={str(hello): -100})
    assert not (chat.choices[0].message.content or "").startswith("Hello")


@pytest.mark.parametrize(("extra", "param", "says"), [
    ({"logprobs": 2}, "logprobs", "logprobs is not supported"),
    ({"suffix": "end"}, "suffix", "suffix"),
    ({"best_of": 3}, "best_of", "best_of"),
    ({"n": 17}, "n", "at most 16"),
    ({"prompt": ["a"] * 9, "n": 2}, "n", "at most 16"),
    ({"prompt": [[1, 2, 3]]}, "prompt", "token-id prompts"),
    ({"max_tokens": 2047}, None, "prompt is too long"),
    ({"frequency_penalty": 2.5}, "frequency_penalty", "between -2.0 and 2.0"),
    ({"presence_penalty": "x"}, "presence_penalty", "must be a number"),
    ({"logit_bias": {"hello": 1}}, "logit_bias", "token ids"),
    ({"logit_bias": {"5": 101}}, "logit_bias", "between -100.0 and 100.0"),
    ({"logit_bias": {"99999999": 1}}, None, "vocabulary"),
])
def test_bad_completion_requests_are_400s(client, extra, param, says):
    body = {"model": "base", "prompt": ASK} | extra
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(**body)
    assert caught.value.body["param"] == param and says in caught.value.body["message"]


@pytest.mark.parametrize("response_format", [{"type": "json_object"},
                                             {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}])
def test_json_modes_are_refused_in_process(client, response_format):
    with pytest.raises(openai.BadRequestError, match="cannot constrain its output to JSON"):
        client.chat.completions.create(model="base", messages=[{"role": "user", "content": "hi"}],
                                       response_format=response_format)
    plain = client.chat.completions.create(model="base", messages=[{"role": "user", "content": "hi"}],
                                           temperature=0, response_format={"type": "text"})
    assert plain.choices[0].message.content == SCRIPTED_REPLY


def test_langchain_openai_llm_uses_completions(url):
    from langchain_openai import OpenAI

    llm = OpenAI(base_url=url + "/v1", api_key=KEY, model="base", temperature=0, max_tokens=8, max_retries=0)
    assert llm.invoke(ASK) == SCRIPTED_REPLY
    assert "".join(llm.stream(ASK)) == SCRIPTED_REPLY


def test_remote_backend_sends_prompts_and_new_fields_on(url, tokenizer):
    backend = RemoteBackend(Settings(backend_url=url, backend_api_key=KEY)).load()
    try:
        assert backend.generate(ASK, GenerationParams(temperature=0, max_new_tokens=8)) == SCRIPTED_REPLY
        hello = tokenizer("Hello", add_special_tokens=False)["input_ids"][0]
        biased = backend.generate(ASK, GenerationParams(temperature=0, max_new_tokens=4, logit_bias={hello: -100}))
        assert not biased.startswith("Hello")  # the remote applied it
        with pytest.raises(UserError, match="cannot constrain its output to JSON"):  # the remote's own refusal
            backend.generate([{"role": "user", "content": "hi"}],
                             GenerationParams(response_format={"type": "json_object"}))
        with pytest.raises(UserError, match="not supported with a remote chat backend"):
            backend.stream([{"role": "tool", "content": "18 C"}], GenerationParams())
    finally:
        backend.close()
    params = GenerationParams(frequency_penalty=0.5, presence_penalty=-1, logit_bias={5: 2.0})
    body = remote_wire.request_body("m", "text", params)
    assert body["prompt"] == "text" and "messages" not in body
    assert (body["frequency_penalty"], body["presence_penalty"], body["logit_bias"]) == (0.5, -1, {"5": 2.0})


def test_penalties_count_the_reply_only():
    import torch

    params = GenerationParams(frequency_penalty=0.5, presence_penalty=1.0, logit_bias={0: 3.0})
    ids = torch.tensor([[2, 2, 1, 1, 1, 3]])  # prompt [2, 2], reply [1, 1, 1, 3]
    scores = OpenAIPenalties(params, prompt_length=2)(ids, torch.zeros(1, 5))
    assert scores.tolist() == [[3.0, -2.5, 0.0, -1.5, 0.0]]


def test_penalties_and_bias_decode_the_same_batched_and_serial(tiny_model_dir):
    """Both decoders (the batch engine's BatchSampler and `generate` with our processors) apply them alike."""
    prompt = "The quick brown fox"
    params = GenerationParams(temperature=0, max_new_tokens=24, frequency_penalty=1.5, presence_penalty=0.5,
                              logit_bias={17: 4.0})
    plain = GenerationParams(temperature=0, max_new_tokens=24)
    replies = {}
    for concurrency in (1, 4):
        manager = ModelManager(Settings(model=str(tiny_model_dir), concurrency=concurrency, dtype="float32")).load()
        try:
            assert manager.batching == (concurrency > 1)
            replies[concurrency] = (manager.generate(prompt, params), manager.generate(prompt, plain))
        finally:
            manager.close()
    assert replies[1] == replies[4]
    penalized, unpenalized = replies[1]
    bias = manager.tokenizer.decode([17])
    # The bias puts its token first, and the penalties end its run (and the plain reply's loop) in a few tokens.
    assert unpenalized.count(" fox") == 24 and " fox fox" not in penalized
    assert penalized.startswith(bias * 2) and penalized.count(bias) < 8


def test_completions_need_the_bearer_key(url):
    import httpx

    reply = httpx.post(url + "/v1/completions", json={"model": "base", "prompt": ASK}, timeout=30)
    assert reply.status_code == 401 and reply.json()["error"]["code"] == "invalid_api_key"
