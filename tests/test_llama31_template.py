"""Llama 3.1's chat format end to end: the test template itself, the training preview, and replies that
stop at <|eot_id|> in serial and batched decoding."""

from __future__ import annotations

import html
import re

import pytest
from transformers import AutoTokenizer

from llama_space.data.preview import render_preview
from llama_space.inference.generation_params import GenerationParams
from llama_space.inference.manager import ModelManager
from llama_space.inference.prompting import normalize_messages
from llama_space.inference.sampling import eos_token_ids
from llama_space.settings import Settings

from llama31 import BOS, DATED, END_OF_TEXT, EOT, SCRIPTED_REPLY, header

CONVERSATION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"},
                {"role": "assistant", "content": "Hello! How can I help?"},
                {"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."}]
GREEDY = GenerationParams(temperature=0, max_new_tokens=20)


@pytest.fixture(scope="module")
def tokenizer(llama31_tokenizer_dir):
    return AutoTokenizer.from_pretrained(llama31_tokenizer_dir)


def test_template_renders_the_llama31_layout(tokenizer):
    assert tokenizer.apply_chat_template(CONVERSATION[:3], tokenize=False) == (
        f"{BOS}{header('system')}{DATED}Be brief.{EOT}{header('user')}Hi there{EOT}"
        f"{header('assistant')}Hello! How can I help?{EOT}")
    # No system message: the system turn still holds the dated block.
    assert tokenizer.apply_chat_template([{"role": "user", "content": " Hi "}], tokenize=False,
                                         add_generation_prompt=True) == (
        f"{BOS}{header('system')}{DATED}{EOT}{header('user')}Hi{EOT}{header('assistant')}")


def test_tokenizer_has_one_id_per_special_token_and_one_bos(tokenizer):
    for token in (BOS, END_OF_TEXT, EOT, "<|start_header_id|>", "<|end_header_id|>"):
        assert tokenizer.convert_ids_to_tokens(tokenizer(token, add_special_tokens=False)["input_ids"]) == [token]
    assert tokenizer("Hi")["input_ids"][0] == tokenizer.bos_token_id  # plain encoding adds BOS, as Meta's does
    ids = tokenizer.apply_chat_template(CONVERSATION, tokenize=True, return_dict=True)["input_ids"]
    assert ids.count(tokenizer.bos_token_id) == 1 and ids[0] == tokenizer.bos_token_id
    assert tokenizer.eos_token == END_OF_TEXT and tokenizer.pad_token is None


def test_preview_marks_exactly_the_replies_and_their_eot(tokenizer):
    page = render_preview(tokenizer, CONVERSATION, max_length=512)
    marked = re.findall(r'<mark class="trained"[^>]*>(.*?)</mark>', page, flags=re.DOTALL)
    assert [html.unescape(text) for text in marked] == [f"Hello! How can I help?{EOT}", f"Blue.{EOT}"]
    masked = [html.unescape(text) for text in re.findall(r'<span class="masked"[^>]*>(.*?)</span>', page, flags=re.DOTALL)]
    assert masked == [f"{BOS}{header('system')}{DATED}Be brief.{EOT}{header('user')}Hi there{EOT}{header('assistant')}",
                      f"{header('user')}Name a colour.{EOT}{header('assistant')}"]


@pytest.fixture(scope="module", params=[1, 8], ids=["serial", "batched"])
def manager(request, llama31_model_dir, tmp_path_factory):
    data = tmp_path_factory.mktemp("llama31-manager")
    settings = Settings(model=str(llama31_model_dir), dtype="float32", device="cpu", compile="off",
                        concurrency=request.param, adapters_dir=data / "adapters", data_dir=data)
    manager = ModelManager(settings).load()
    assert manager.batching == (request.param > 1)
    yield manager
    manager.close()


def test_eos_ids_come_from_the_generation_config(manager):
    eot = manager.tokenizer.convert_tokens_to_ids(EOT)
    assert eos_token_ids(manager.model, manager.tokenizer) == {manager.tokenizer.eos_token_id, eot}
    assert eot != manager.tokenizer.eos_token_id  # the tokenizer alone would never stop a reply


def test_reply_stops_at_eot_and_leaves_it_out(manager):
    streams = [manager.stream(normalize_messages([], f"Question {i}"), GREEDY) for i in range(3)]
    for stream in streams:  # started together, so the batched engine decodes them in one batch
        text = "".join(stream)
        assert text == SCRIPTED_REPLY and EOT not in text
        assert (stream.finish_reason, stream.completion_tokens) == ("stop", 3)


def test_without_eot_in_the_generation_config_the_reply_runs_on(manager, monkeypatch):
    if manager.batching:
        monkeypatch.setattr(manager._engine, "eos", {manager.tokenizer.eos_token_id})
    else:
        monkeypatch.setattr(manager.model.generation_config, "eos_token_id", manager.tokenizer.eos_token_id)
    stream = manager.stream(normalize_messages([], "Hi"), GenerationParams(temperature=0, max_new_tokens=8))
    assert "".join(stream) == SCRIPTED_REPLY * 3 and stream.finish_reason == "length"


def test_eot_as_the_last_allowed_token_is_a_stop(manager):
    """The model ended its turn with the last token it was allowed: that is a stop, not a cut-off reply."""
    stream = manager.stream(normalize_messages([], "Hi"), GenerationParams(temperature=0, max_new_tokens=3))
    assert "".join(stream) == SCRIPTED_REPLY
    assert stream.finish_reason == "stop"
