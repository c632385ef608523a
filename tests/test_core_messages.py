"""The core's English messages reach the Chinese UI in Chinese: every UserError the core can raise (read from its
source) has a catalogue entry or is on a list of API-only messages, with why; entries keep their values and
fields; an English request still gets the English text; and the real UI callbacks show the Chinese."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
from messageutil import WILD, raise_sites, status_texts

from llama_space.web.core_messages import OPTIONAL, catalogue, localize, match, template_fields

CHINESE = re.compile(r"[\u4e00-\u9fff]")
# Messages only API clients (REST, /v1, MCP, the command line) meet: the UI never sends what they refuse. Each
# pattern is matched against the whole message; the reason says why no UI visitor reads it.
API_ONLY = [
    ((r"tools.*|tool_choice.*|messages\[.*|This model's chat template has no tool support.*|"
      r"Tool calling is not supported with a remote chat backend.*"), "OpenAI tool calling: /v1 only"),
    (r"(logit_bias|stop|response_format) .*", "OpenAI sampling fields the UI does not offer: /v1 only"),
    (r"history item .*", "the /chat endpoint's history; the UI's chatbot sends well-formed turns"),
    (r"The prompt is (empty|too long).*", "/v1/completions' raw prompt; the UI sends chat messages"),
    ((r"(port|dtype|max_context|compile|backend_url|auth|allowed_origins|device) .*|.* must be true or false, got .*|"
      r".* must be a whole number, got .*|.* must be at least 1|--max-context .*"),
     "settings and flags, refused on the command line at start-up"),
    ((r"The model's weights take .*|The embedded model is not installed.*|A ModelScope .* is named .*|"
      r"ModelScope refused access .*|The .* modelscope:.* (was not found on|is not in the app's cache).*"),
     "loading the base model at start-up (the console shows it)"),
    (r"job .*|.*: (plan|params) must be an object, got .*|.* lacks .*|.*: .* must be (text|a whole number), got .*",
     "the training process's own checks of its job folder (train.py on the command line)"),
]
# Raise sites whose text is built elsewhere (passed in, or another exception's text): the messages they carry are
# covered where they are written.
BUILT_ELSEWHERE = {
    ("llama_space/inference/remote_wire.py", "remote_error"): "the remote backend's own error text, passed on",
    ("llama_space/inference/zerogpu.py", "_rebuild"): "a UserError raised inside a GPU call, raised again outside",
    ("llama_space/model/loading.py", "_load"): "a ModelLoadError raised again with its own text",
    ("llama_space/service/eval_data.py", "_prompt_row"): "a row problem written in data/validate.py",
    ("llama_space/service/evaluate.py", "follow"): "the evaluation's recorded error, written where it failed",
    ("llama_space/service/permissions.py", "require_change"): "settings.changes_disabled_reason, in the catalogue",
}


def _samples(text: str) -> list[str]:
    """The message with each piece the source does not spell out as a value: "7" fits every field's pattern, and
    nothing stands for a piece left out (an optional part)."""
    return [text.replace(WILD, "7"), text.replace(WILD, "")]


def _translated(text: str) -> bool:
    return any(match(sample) for sample in _samples(text))


def _api_only(text: str) -> str | None:
    return next((why for pattern, why in API_ONLY if re.fullmatch(pattern, text, re.DOTALL)), None)


def test_every_core_error_a_ui_visitor_can_meet_has_chinese():
    sites = raise_sites()
    assert len(sites) > 250
    missing, unexplained = [], []
    for site in sites:
        for text in site.texts:
            if text == WILD:
                if (site.file, site.function) not in BUILT_ELSEWHERE:
                    unexplained.append(f"{site.file}:{site.line} {site.function}")
                continue
            if not _translated(text) and _api_only(_samples(text)[0]) is None:
                missing.append(f"{site.file}:{site.line}: {_samples(text)[0]!r}")
    assert not unexplained, "a message built elsewhere, not in BUILT_ELSEWHERE:\n" + "\n".join(unexplained)
    assert not missing, "core messages without Chinese (add them to web/strings/messages_*.py):\n" + "\n".join(
        sorted(set(missing)))


def test_the_lists_of_exceptions_are_in_use():
    """An API-only pattern or a built-elsewhere site nothing in the source matches any more is stale."""
    sites = raise_sites()
    texts = [_samples(text)[0] for site in sites for text in site.texts if text != WILD]
    for pattern, why in API_ONLY:
        assert any(re.fullmatch(pattern, text, re.DOTALL) for text in texts), (pattern, why)
    places = {(site.file, site.function) for site in sites if WILD in site.texts}
    assert set(BUILT_ELSEWHERE) <= places, set(BUILT_ELSEWHERE) - places


# Status texts the UI does not show: by the function that writes them, or by the text.
NOT_SHOWN = {("llama_space/export/card.py", "_summary"): "the model card pushed to the Hub, written in English"}
NOT_SHOWN_TEXTS = {"data": "an evaluation's stage id; the UI shows its message"}


def test_every_status_text_the_ui_shows_has_chinese():
    """The data report's summary and warnings, a plan's reason, how a job ended, an export's needs and stages, an
    evaluation's progress: every such text the core writes (read from its source) has a catalogue entry."""
    sites = status_texts()
    assert len(sites) > 40
    missing = [f"{site.file}:{site.line} {site.function}: {_samples(text)[0]!r}" for site in sites
               for text in site.texts if (site.file, site.function) not in NOT_SHOWN
               and text not in NOT_SHOWN_TEXTS and not _translated(text)]
    assert not missing, "status texts without Chinese:\n" + "\n".join(missing)
    assert set(NOT_SHOWN) <= {(site.file, site.function) for site in sites}


def _parts(template: str) -> tuple[set[str], set[str]]:
    """(fields outside [[...]], fields inside) of a template."""
    optional = {name for part in OPTIONAL.findall(template) for name in template_fields(part)}
    return set(template_fields(OPTIONAL.sub("", template))), optional


def test_every_entry_says_the_same_in_chinese():
    entries = catalogue()
    assert len({entry.english for entry in entries}) == len(entries), "an English template twice"
    for entry in entries:
        english, english_optional = _parts(entry.english)
        chinese, chinese_optional = _parts(entry.chinese)
        assert CHINESE.search(entry.chinese), entry.english
        assert entry.english.strip("{}_ ") and not re.fullmatch(r"\{\w+\}", entry.english), entry.english
        # Every field the English has, the Chinese shows (one named _x is English only), where the English has it.
        assert {n for n in english | english_optional if not n.startswith("_")} <= chinese | chinese_optional, \
            entry.english
        assert chinese <= english and chinese_optional <= english | english_optional, entry.english


@pytest.mark.parametrize(("english", "chinese"), [
    (("The message is too long: the prompt needs 5000 tokens but only 1500 fit (context window 2048 minus "
      "max_new_tokens 548). Shorten the message, the system prompt or max_new_tokens."),
     ("消息太长：提示需要 5000 个 token，但只能放下 1500 个（上下文窗口 2048 减去 max_new_tokens 548）。"
      "请缩短消息、系统提示词或 max_new_tokens。")),
    ("Adapter 'pirate-v2' exists; choose another name or delete it.", "适配器 'pirate-v2' 已存在；请换一个名称或先删除它。"),
    ("Export 'e-20260101-1' is already cancelled; there is nothing to cancel.",
     "导出 'e-20260101-1' 已是“已取消”状态；没有可取消的内容。"),
    (("7 of 9 rows (alpaca format) will be trained; skipped: 1 with errors, 1 exact duplicates; 2 longer than 512 "
      "tokens are truncated."), "将训练 9 行中的 7 行（alpaca 格式）；已跳过：1 行有错误，1 行完全重复；2 行超过 512 个 token，将被截断。"),
    (("Nothing to train: none of the 2 rows is usable (2 with errors). Fix the rows listed and upload the file again. "
      "First problems: row 1: 'output' is missing; row 2: turn 2: the assistant reply is empty."),
     ("没有可训练的数据：2 行中没有一行可用（2 行有错误）。请修正列出的行后重新上传文件。最先发现的问题：第 1 行：缺少 'output'；"
      "第 2 行：第 2 轮：assistant 回复为空。")),
    (("Training runs in its own process with the base in NF4 (QLoRA) with activation checkpointing: about 3.1 GB "
      "needed, 10.0 GB free; its own process with its own copy of the base would need 12.4 GB."),
     "训练在独立进程（基础模型为 NF4，QLoRA）中运行（启用激活检查点）：约需 3.1 GB，空闲 10.0 GB；独立进程（使用自己的基础模型副本）需要 12.4 GB。"),
    (("About 0.3 GB of memory and 0.5 GB of disk (135.0M parameters in bfloat16, 60 LoRA weights). The base's q8_0 "
      "GGUF is cached already."), "约需 0.3 GB 内存和 0.5 GB 磁盘（135.0M 参数，bfloat16，60 个 LoRA 权重）。基础模型的 q8_0 GGUF 已经缓存。"),
    (("This training job needs about 9.0 GB, 2.0 GB free (process 9.0 GB, QLoRA 5.0 GB): lower max_length or "
      "batch_size or choose QLoRA (quantization nf4)."), ("这个训练任务约需 9.0 GB，空闲 2.0 GB（process 9.0 GB, QLoRA 5.0 GB）："
                                                         "降低 max_length 或 batch_size，或选择 QLoRA（quantization nf4）。")),
    (("Dataset 'owner/missing' was not found on the Hugging Face Hub (if it is private or gated, the server needs an "
      "HF_TOKEN that may read it); check the id."),
     "在 Hugging Face Hub 上找不到数据集 'owner/missing'（若它是私有或受限的，服务器需要一个有权读取它的 HF_TOKEN）；请检查 id。"),
    ("The server failed while streaming a chat reply; the server log has the details. Try again in a moment.",
     "服务器出错，详情见服务器日志。请稍后重试。"),
])
def test_messages_translate_with_their_values(english, chinese):
    assert localize(english, "zh") == chinese
    assert localize(english, "en") == english


def test_a_message_without_an_entry_stays_english():
    text = "Something the catalogue has never seen: 42 things."
    assert localize(text, "zh") == text
    assert localize("", "zh") == ""


def _request(**headers):
    return SimpleNamespace(headers=headers)


def test_the_error_boundary_speaks_the_request_language(monkeypatch):
    """The one place UI errors pass: gr.Error from a UserError, in the language of the request it answers."""
    from gradio.context import LocalContext

    from llama_space.errors import QueueFullError
    from llama_space.web.error_boundary import failure, gradio_error

    exc = QueueFullError("The server is busy (12 requests in progress or waiting); try again in a moment.")
    for headers, expected in (({"accept-language": "zh-CN,zh;q=0.9"}, "服务器繁忙（12 个请求正在处理或排队）；请稍后重试。"),
                              ({"cookie": "llama_space_lang=zh"}, "服务器繁忙（12 个请求正在处理或排队）；请稍后重试。"),
                              ({"accept-language": "en-US"}, str(exc)), ({}, str(exc))):
        token = LocalContext.request.set(_request(**headers))
        try:
            assert gradio_error(exc).message == expected, headers
        finally:
            LocalContext.request.reset(token)
    assert failure(exc).message == str(exc)  # REST and /v1 read the core's English


# ---- through the running app -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def app(tiny_model_dir, tmp_path_factory):
    from llama_space.settings import Settings

    from apputil import launched_app

    root = tmp_path_factory.mktemp("core-messages")
    settings = Settings(model=str(tiny_model_dir), adapters_dir=root / "adapters", data_dir=root / "data")
    with launched_app(settings) as launched:
        yield launched


@pytest.fixture(scope="module")
def bad_data(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("bad-data")
    empty = folder / "empty.jsonl"
    empty.write_text("")
    broken = folder / "broken.jsonl"
    broken.write_text('{"instruction": "Hi", "output": "Hello"}\n{"instruction": "Bye"}\n'
                      '{"instruction": "Hi", "output": "Hello"}\n')
    return {"empty": empty, "broken": broken}


@pytest.mark.parametrize(("headers", "expected"), [
    ({"Accept-Language": "zh-CN,zh;q=0.9"}, "empty.jsonl 是空文件。请上传至少含一行训练数据的文件。"),
    ({"Cookie": "llama_space_lang=zh"}, "empty.jsonl 是空文件。请上传至少含一行训练数据的文件。"),
    ({"Accept-Language": "en-US,en;q=0.9"}, "empty.jsonl is empty. Upload a file with at least one training row."),
])
def test_a_gradio_client_gets_the_error_in_its_language(app, bad_data, headers, expected):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    client = Client(app.url, headers=headers, verbose=False)
    with pytest.raises(AppError) as raised:
        client.predict(file=handle_file(str(bad_data["empty"])), api_name="/validate_dataset")
    assert str(raised.value) == expected


def test_a_too_long_chat_message_is_refused_in_chinese(app):
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    client = Client(app.url, headers={"Accept-Language": "zh-CN"}, verbose=False)
    with pytest.raises(AppError) as raised:
        client.predict(message="word " * 2000, max_new_tokens=64, api_name="/chat")
    assert re.fullmatch(r"消息太长：提示需要 \d+ 个 token，但只能放下 \d+ 个（上下文窗口 \d+ 减去 max_new_tokens 64）。"
                        r"请缩短消息、系统提示词或 max_new_tokens。", str(raised.value)), str(raised.value)


def _ui_callback(app, name: str):
    """The UI's own event handler `name` (wrapped by the error boundary as the page calls it)."""
    found = list({id(block_fn.fn): block_fn.fn for block_fn in app.demo.fns.values()
                  if getattr(block_fn.fn, "__name__", "") == name}.values())
    assert len(found) == 1, (name, len(found))
    return found[0]


def _in_language(headers: dict, fn, *args, **kwargs):
    from gradio.context import LocalContext

    token = LocalContext.request.set(_request(**headers))
    try:
        return fn(*args, **kwargs)
    finally:
        LocalContext.request.reset(token)


def test_the_data_report_is_in_the_visitors_language(app, bad_data):
    """The Fine-tune tab's check of an upload: the summary, the problem rows and a refused file."""
    on_check = _ui_callback(app, "on_check")
    report, problems, _, rows = _in_language({"accept-language": "zh-CN"}, on_check, 384, file=str(bad_data["broken"]))
    assert rows == 1
    assert "将训练 3 行中的 1 行（alpaca 格式）；已跳过：1 行有错误，1 行完全重复。" in report
    messages = [row[2] for row in problems.value["data"]]
    assert messages == ["缺少 'output'", "与第 1 行完全相同；已跳过"], messages
    refused, *_ = _in_language({"accept-language": "zh-CN"}, on_check, 384, file=str(bad_data["empty"]))
    assert "empty.jsonl 是空文件。" in refused
    english, problems, _, _ = _in_language({"accept-language": "en"}, on_check, 384, file=str(bad_data["broken"]))
    assert "1 of 3 rows (alpaca format) will be trained; skipped: 1 with errors, 1 exact duplicates." in english
    assert [row[2] for row in problems.value["data"]] == ["'output' is missing", "exact duplicate of row 1; skipped"]


def test_a_jobs_plan_and_its_end_are_in_the_visitors_language():
    from llama_space.web.ui.jobs_view import progress_html

    status = {"job_id": "j1", "state": "failed", "step": 3, "total_steps": 10,
              "plan": {"placement": "process", "quantization": "none", "device": "cpu",
                       "reason": "Training runs in its own process with its own copy of the base: about 1.2 GB "
                                 "needed, 30.0 GB free."},
              "error": "Out of memory at step 3. Lower batch_size or max_length, or set gradient_checkpointing to "
                       "on, then start the job again."}
    shown = _in_language({"cookie": "llama_space_lang=zh"}, progress_html, status)
    assert "训练在独立进程（使用自己的基础模型副本）中运行：约需 1.2 GB，空闲 30.0 GB。" in shown
    assert "内存不足（第 3 步）。请降低 batch_size 或 max_length" in shown
    assert "Training runs in its own process" in _in_language({}, progress_html, status)
