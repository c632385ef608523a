"""Every piece of UI text exists in English and Simplified Chinese: the tables are complete and consistent, every
label, help line, placeholder, button and choice of the built app is a translated marker (names and values aside),
and text built on the server goes through the tables too."""

from __future__ import annotations

import ast
import re
import string
from pathlib import Path

import pytest

from llama_space.web.strings import STRINGS

WEB = Path(__file__).resolve().parents[1] / "llama_space" / "web"
# Text that reads the same in both languages: technical names, units and placeholders.
SAME_IN_BOTH = {"common.top_p", "ft.adapter_name_ph", "ft.report_ok", "ex.what.gguf"}
# Props whose strings the browser shows.
SHOWN = ("label", "info", "placeholder", "title")
# Component values that are text people read (the others are data: a textbox's text, a dropdown's value).
TEXT_VALUES = {"button", "markdown", "html"}
# Names and values, the same in every language: shown by elem_id, or as exact strings.
NAMES_BY_ID = {"app-title"}
NAMES = {"English", "中文", "base", "train", "main", "my-adapter", "your-name/my-adapter", "your-name/my-model",
         "export_id", "file", "download_export"}
MARKER = "__i18n__"


def _fields(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name}


def test_every_string_has_both_languages_with_the_same_fields():
    for key, pair in STRINGS.items():
        assert isinstance(pair, tuple) and len(pair) == 2 and all(pair), key
        english, chinese = pair
        assert _fields(english) == _fields(chinese), f"{key}: {english!r} / {chinese!r}"
        if key not in SAME_IN_BOTH:
            assert english != chinese, f"{key} is not translated: {english!r}"
            assert re.search(r"[\u4e00-\u9fff]", chinese), f"{key}: the Chinese has no Chinese: {chinese!r}"


def _source_keys() -> set[tuple[str, str]]:
    """(file, key) of every t("...") and L("...") call with a literal key in the web layer."""
    found = set()
    for path in WEB.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("t", "L")
                    and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
                found.add((path.name, node.args[0].value))
    return found


def test_every_key_the_code_names_is_in_the_tables():
    keys = _source_keys()
    assert len(keys) > 100
    missing = sorted((f, k) for f, k in keys if k not in STRINGS)
    assert not missing, missing


def test_messages_built_on_the_server_are_translated():
    """gr.Error, gr.Info and gr.Warning in the UI never take a bare English literal."""
    bare = []
    for path in (WEB / "ui").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in ("Error", "Info", "Warning") and node.args
                    and isinstance(node.args[0], (ast.Constant, ast.JoinedStr))):
                bare.append(f"{path.name}:{node.lineno}")
    assert not bare, bare


@pytest.fixture(scope="module")
def config(tiny_model_dir, tmp_path_factory):
    from llama_space.settings import Settings
    from llama_space.web.server import build_app

    root = tmp_path_factory.mktemp("ui-strings")
    demo, services = build_app(Settings(model=str(tiny_model_dir), adapters_dir=root / "adapters",
                                        data_dir=root / "data"))
    try:
        yield demo.get_config_file()
    finally:
        services.close()


def _untranslated(component: dict) -> list[str]:
    props, kind = component.get("props", {}), component["type"]
    if kind == "api" or props.get("elem_id") in NAMES_BY_ID:  # gr.api's parameters are never shown
        return []
    shown = [(name, props.get(name)) for name in SHOWN]
    if kind in TEXT_VALUES:
        shown.append(("value", props.get("value")))
    for label, value in props.get("choices") or []:
        if str(label) != str(value):  # a choice shown as its own value is a name
            shown.append(("choice", label))
    return [f"{kind} #{props.get('elem_id')} {name}={text!r}" for name, text in shown
            if isinstance(text, str) and text.strip() and MARKER not in text and text not in NAMES]


def test_every_text_of_the_built_app_is_a_translated_marker(config):
    bad = [problem for component in config["components"] for problem in _untranslated(component)]
    assert not bad, "\n".join(bad)
    keys = set(re.findall(r'"key": "([^"]+)"', str(config["components"])))
    assert keys and keys <= STRINGS.keys(), keys - STRINGS.keys()
    assert config["i18n_translations"] is None or set(config["i18n_translations"]) >= {"en", "zh"}


def test_server_text_follows_the_request_language():
    from types import SimpleNamespace

    from llama_space.web.i18n import language, t

    def request(**headers):
        return SimpleNamespace(headers=headers)

    assert language(request(**{"accept-language": "zh-CN,zh;q=0.9,en;q=0.8"})) == "zh"
    assert language(request(**{"accept-language": "en-US,en;q=0.9"})) == "en"
    assert language(request(**{"accept-language": "zh-CN", "cookie": "a=b; llama_space_lang=en"})) == "en"
    assert language(request(**{"accept-language": "de-DE", "cookie": "llama_space_lang=zh"})) == "zh"
    assert language(request()) == "en" and language(None) == "en"
    assert t("chat.stats", "zh", tokens=3, speed=2.0, ttft=0.5) == "3 个 token · 2.0 token/秒 · 首个 token 0.50 秒"
