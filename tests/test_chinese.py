"""Chinese data end to end: a pretty-printed Chinese Alpaca JSON array (as the Chinese tutorial's readers have
it) validates with a row report, previews and trains, with the tokenizer's own token counts; and a reply whose
characters' bytes are split across tokens streams in whole characters from both decoders and through every
surface that streams (/chat, /compare_stream, /v1/chat/completions, /v1/completions), and POST / as well."""

from __future__ import annotations

import html
import itertools
import json
import math
import re
from pathlib import Path

import httpx
import pytest
from gradio_client import Client
from transformers import AutoTokenizer

from llama_space.data import build_examples, load_conversations, validate_file
from llama_space.data.tokenize import IGNORE_INDEX
from llama_space.inference.detokenize import Detokenizer
from llama_space.inference.generation_params import GenerationParams
from llama_space.inference.manager import ModelManager
from llama_space.settings import Settings
from llama_space.training import TrainingParams

from apputil import running_app
from conftest import REPO
from jobutil import finished, make_runner, one_thread_jobs  # noqa: F401 - autouse: job processes train on one thread
from llama31 import save_bigram_model

EXAMPLE = REPO / "examples" / "zhenhuan.json"
PERSONA = "现在你要扮演皇帝身边的女人--甄嬛"
END = "<|im_end|>"  # SmolLM2's end of turn, trained after every reply
BROKEN = "\ufffd"  # what half a character decodes to
# The scripted model's reply: SmolLM2's tokenizer spells it in 18 tokens, no two alike (a bigram table can say
# each token once), and 15 of them hold only part of a character; 妾 takes three tokens.
REPLY = "臣妾遵旨，这就告退。"
CUT = 4  # tokens into REPLY: one byte into 妾, so a reply cut here ends after 臣
STOP = "告退"  # starts in the middle of the reply, on a token that holds half of 告
ASK = [{"role": "user", "content": "皇上说：退下吧。"}]
COMPLETION_PROMPT = "甄嬛答道：\n"  # ends on "\n" as the chat prompt does, after which the model says REPLY


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def write_array(path: Path, rows: list[dict]) -> Path:
    """`rows` as one pretty-printed JSON array in UTF-8, characters unescaped, as the tutorial's data is."""
    path.write_text(json.dumps(rows, ensure_ascii=False, indent=4) + "\n", encoding="utf-8")
    return path


def alpaca(instruction: str, output: str, given: str = "") -> dict:
    return {"instruction": instruction, "input": given, "output": output}


ROWS = [alpaca("你是谁？", "家父是大理寺少卿甄远道，臣妾甄嬛。"),
        alpaca(PERSONA, "皇上所赐，臣妾日日戴着。", given="皇上问：朕赏你的簪子，可还喜欢？"),
        alpaca("小主，外头下雪了。", ""),
        alpaca("你是谁？", "家父是大理寺少卿甄远道，臣妾甄嬛。"),
        alpaca("皇上驾到！", "臣妾恭迎皇上，皇上万福金安。")]


# ---- data: validate, preview, token counts, training -----------------------------------------------------------

def test_a_pretty_printed_chinese_array_gets_a_row_report(tokenizer, tmp_path):
    report = validate_file(write_array(tmp_path / "huanhuan.json", ROWS), tokenizer, max_length=128)
    assert (report["format"], report["rows"], report["valid_rows"], report["skipped_rows"]) == ("alpaca", 5, 3, 2)
    assert report["errors"] == [{"row": 3, "message": "'output' is empty"}]
    assert report["warnings"] == [{"row": 4, "message": "exact duplicate of row 1; skipped"}]
    assert report["summary"] == "3 of 5 rows (alpaca format) will be trained; skipped: 1 with errors, 1 exact duplicates."


def test_the_preview_marks_the_chinese_replies_whole(tokenizer, tmp_path):
    report = validate_file(write_array(tmp_path / "huanhuan.json", ROWS), tokenizer, max_length=128)
    trained = [[html.unescape(mark) for mark in re.findall(r'<mark class="trained"[^>]*>(.*?)</mark>', preview,
                                                             re.DOTALL)] for preview in report["preview"]]
    assert trained == [[ROWS[0]["output"] + END], [ROWS[1]["output"] + END], [ROWS[4]["output"] + END]]
    masked = html.unescape(re.sub(r"<[^>]+>", "", report["preview"][1]))
    assert f"{PERSONA}\n\n{ROWS[1]['input']}" in masked and BROKEN not in masked


def test_token_counts_are_the_tokenizers_own(tokenizer):
    report = validate_file(EXAMPLE, tokenizer, max_length=384)
    _, conversations = load_conversations(EXAMPLE)
    lengths = [len(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"])
               for messages in conversations]
    replies = [len(tokenizer(messages[-1]["content"] + END, add_special_tokens=False)["input_ids"])
               for messages in conversations]
    assert (report["token_stats"]["min"], report["token_stats"]["max"]) == (min(lengths), max(lengths))
    assert report["trainable_tokens"] == sum(replies)
    examples = build_examples(EXAMPLE, tokenizer, max_length=384)
    assert [len(example["input_ids"]) for example in examples] == lengths
    for example, messages in zip(examples, conversations):
        labels = [label for label in example["labels"] if label != IGNORE_INDEX]
        assert tokenizer.decode(labels) == messages[-1]["content"] + END


def test_the_example_file_is_clean(tokenizer):
    assert EXAMPLE.read_text(encoding="utf-8").startswith('[\n    {\n        "instruction": ')
    report = validate_file(EXAMPLE, tokenizer, max_length=384)
    assert (report["ok"], report["rows"], report["valid_rows"]) == (True, 24, 24)
    assert report["errors"] == report["warnings"] == [] and report["too_long"] == 0


@pytest.mark.slow
def test_a_short_training_run_on_the_chinese_array_completes(tiny_model_dir, tmp_path):
    runner = make_runner(tiny_model_dir, tmp_path)
    params = TrainingParams(learning_rate=3e-2, max_steps=3, batch_size=4, grad_accum=1, seed=3)
    job_id = runner.start(EXAMPLE, "zhenhuan", params)
    status = finished(runner, job_id)
    assert status["state"] == "completed", status["error"]
    assert status["step"] == 3 and status["adapter"] == "zhenhuan"
    losses = [metric["loss"] for metric in runner.metrics(job_id) if "loss" in metric]
    assert len(losses) == 3 and all(math.isfinite(loss) and loss > 0 for loss in losses)
    assert (runner.registry.settings.adapters_dir / "zhenhuan").is_dir()


# ---- streaming: whole characters only ---------------------------------------------------------------------------

def pieces(detokenizer: Detokenizer, ids: list[int]) -> list[str]:
    """What the detokenizer releases for `ids` given one at a time, then at the end."""
    return [detokenizer.add([token]) for token in ids] + [detokenizer.flush()]


def test_the_detokenizer_releases_whole_characters_only(tokenizer):
    text = f"{PERSONA}。臣妾做不到啊！\nSo be it, 皇上. 😀 {REPLY}"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert any(BROKEN in tokenizer.decode([token]) for token in ids)
    for cut in range(len(ids) + 1):
        released = pieces(Detokenizer(tokenizer), ids[:cut])
        assert not any(BROKEN in piece for piece in released), (cut, released)
        whole = tokenizer.decode(ids[:cut])
        assert "".join(released) == whole.removesuffix(BROKEN), (cut, released)
    assert "".join(pieces(Detokenizer(tokenizer), ids)) == text


def test_the_detokenizer_reads_sentencepiece_byte_fallback():
    """Llama 2 and Mistral spell a character they have no token for in one token per byte, and write a word's
    leading space only after other text."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "▁": 3, "▁Hello": 4, "▁world": 5,
             **{f"<0x{byte:02X}>": 6 + byte for byte in range(256)}}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], byte_fallback=True, unk_token="<unk>"))
    backend.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                         decoders.Strip(" ", 1, 0)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>",
                                        eos_token="</s>")
    ids = [4, 5, 3, *(6 + byte for byte in "甄嬛".encode()), 2]
    assert tokenizer.decode(ids[:5]) == "Hello world " + 2 * BROKEN
    assert [piece for piece in pieces(Detokenizer(tokenizer), ids) if piece] == ["Hello", " world", " ", "甄", "嬛"]
    assert "".join(pieces(Detokenizer(tokenizer), ids[:7])) == "Hello world 甄"


def reply_tokens(tokenizer) -> list[int]:
    ids = tokenizer(REPLY, add_special_tokens=False)["input_ids"]
    assert len(set(ids)) == len(ids) == 18 and sum(BROKEN in tokenizer.decode([token]) for token in ids) == 15
    assert tokenizer.decode(ids[:CUT]) == "臣" + BROKEN
    return ids


@pytest.fixture(scope="module")
def scripted_dir(embedded_dir, tmp_path_factory) -> Path:
    """A bigram Llama (tests/llama31.py) with SmolLM2's tokenizer whose greedy reply to any chat, and to
    COMPLETION_PROMPT, is REPLY in its 18 tokens, then <|im_end|>."""
    tokenizer = AutoTokenizer.from_pretrained(embedded_dir)
    reply, end = reply_tokens(tokenizer), tokenizer.convert_tokens_to_ids(END)
    prompt_end = tokenizer.apply_chat_template(ASK, add_generation_prompt=True, tokenize=True,
                                               return_dict=True)["input_ids"][-1]
    assert tokenizer(COMPLETION_PROMPT, add_special_tokens=False)["input_ids"][-1] == prompt_end
    links = list(itertools.pairwise([prompt_end, *reply, end]))
    return save_bigram_model(tokenizer, tmp_path_factory.mktemp("chinese-bigram"), links, end)


def whole_and_growing(updates: list[str], final: str) -> None:
    """Each update (the whole reply so far) is whole characters and extends the one before, up to `final`."""
    assert not any(BROKEN in update for update in updates), updates
    assert updates and updates[-1] == final, updates
    assert all(later.startswith(earlier) for earlier, later in itertools.pairwise(updates)), updates


# (params, what the reply says, why it ended): all of it, cut inside 妾 by the token budget, or cut before a stop
# string whose first token holds half of 告.
CASES = [pytest.param({}, REPLY, "stop", id="whole"),
         pytest.param({"max_new_tokens": CUT}, "臣", "length", id="cut"),
         pytest.param({"stop": [STOP]}, REPLY[:REPLY.index(STOP)], "stop", id="stop")]


def request_fields(options: dict) -> dict:
    """A case's params as an OpenAI request has them."""
    return {"max_tokens": options.get("max_new_tokens", 64), **({"stop": options["stop"]} if "stop" in options else {})}


@pytest.fixture(scope="module", params=[1, 8], ids=["generate", "batch-engine"])
def manager(scripted_dir, tmp_path_factory, request) -> ModelManager:
    """The scripted model served by `generate` one reply at a time, or by the batch engine."""
    settings = Settings(model=str(scripted_dir), dtype="float32", adapters_dir=tmp_path_factory.mktemp("adapters"),
                        concurrency=request.param)
    manager = ModelManager(settings).load()
    assert manager.batching == (request.param > 1)
    return manager


@pytest.mark.parametrize(("options", "expected", "finish"), CASES)
def test_both_decoders_stream_whole_characters(manager, options, expected, finish):
    stream = manager.stream(ASK, GenerationParams(temperature=0, **{"max_new_tokens": 64, **options}))
    chunks = list(stream)
    assert not any(BROKEN in chunk for chunk in chunks), chunks
    assert "".join(chunks) == expected and stream.finish_reason == finish


@pytest.fixture(scope="module")
def url(scripted_dir, tmp_path_factory):
    settings = Settings(model=str(scripted_dir), adapters_dir=tmp_path_factory.mktemp("adapters"), dtype="float32")
    with running_app(settings) as base_url:
        yield base_url


@pytest.mark.parametrize(("options", "expected", "finish"), CASES[:2])
def test_gradio_chat_streams_whole_characters(url, options, expected, finish):
    client = Client(url, verbose=False)
    job = client.submit(message=ASK[0]["content"], temperature=0.0, **{"max_new_tokens": 64, **options},
                        api_name="/chat")
    whole_and_growing([update for update in job if update], expected)
    assert job.result() == expected


def test_compare_stream_streams_whole_characters(url):
    client = Client(url, verbose=False)
    updates = list(client.submit(prompt=ASK[0]["content"], adapters=[], max_new_tokens=64,
                                 api_name="/compare_stream"))
    whole_and_growing([update["base"] for update in updates if update["base"]], REPLY)


def sse_texts(url: str, path: str, body: dict) -> tuple[list[str], list[dict]]:
    """The text of each streamed event of POST `path` (delta content or text) and the parsed events."""
    with httpx.stream("POST", url + path, json={**body, "stream": True}, timeout=120) as response:
        assert response.status_code == 200, response.read()
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    events = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    texts = [choice.get("text") or (choice.get("delta") or {}).get("content") or ""
             for event in events for choice in event["choices"]]
    return texts, events


@pytest.mark.parametrize(("options", "expected", "finish"), CASES)
def test_v1_chat_completions_stream_whole_characters(url, options, expected, finish):
    body = {"model": "base", "messages": ASK, "temperature": 0, **request_fields(options)}
    texts, events = sse_texts(url, "/v1/chat/completions", body)
    assert not any(BROKEN in text for text in texts), texts
    assert "".join(texts) == expected
    assert [choice["finish_reason"] for event in events for choice in event["choices"]
            if choice.get("finish_reason")] == [finish]


@pytest.mark.parametrize(("options", "expected", "finish"), CASES)
def test_v1_completions_stream_whole_characters(url, options, expected, finish):
    body = {"model": "base", "prompt": COMPLETION_PROMPT, "temperature": 0, **request_fields(options)}
    texts, events = sse_texts(url, "/v1/completions", body)
    assert not any(BROKEN in text for text in texts), texts
    assert "".join(texts) == expected
    assert [choice["finish_reason"] for event in events for choice in event["choices"]
            if choice.get("finish_reason")] == [finish]


def test_rest_answers_the_whole_chinese_reply(url):
    cut = httpx.post(url + "/", json={"prompt": ASK[0]["content"], "temperature": 0, "max_new_tokens": CUT},
                     timeout=120)
    whole = httpx.post(url + "/", json={"prompt": ASK[0]["content"], "temperature": 0}, timeout=120)
    assert (cut.json()["response"], whole.json()["response"]) == ("臣", REPLY)
    assert "臣妾" in whole.content.decode("utf-8")  # sent as UTF-8 text, not only as JSON escapes
