"""Every tab in a real Chromium, in English and Chinese, light and dark, on a desktop and on a phone (390x844).

Chat: a conversation survives a reload and can be reopened from the list; regenerated replies keep their earlier
versions (arrows between them); an edited message runs the chat again from there; a reply cut by the token limit
says so and Continue goes on from it; no empty bubble. Fine-tune: help text on every setting, Cancel and Resume off
with no job. Adapters: readable columns, details on demand, Delete asks first. Export: what it needs before Start,
and every produced file downloadable. In zh-CN no English is left (names and values aside). Screenshots of each tab
and view go to test-artifacts/views/, or with LLAMA_SPACE_DOC_IMAGES=1 to docs/images/ (committed; the README
shows some).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from browserutil import set_number

from adapterutil import random_adapter
from apputil import embedded_settings, launched_app
from conftest import REPO
from jobutil import PERSONA, poll

playwright_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
IMAGES = REPO / "docs" / "images" if os.environ.get("LLAMA_SPACE_DOC_IMAGES") == "1" else (
    REPO / "test-artifacts" / "views")
DESKTOP = {"width": 1280, "height": 860}
PHONE = {"width": 390, "height": 844}
TABS = ("chat", "finetune", "adapters", "compare", "export")
UI_TIMEOUT_MS = 120_000
QUESTION = "What is the capital of France?"
# Words that stay English in the Chinese UI: names of things, formats and values.
NAMES = {"llama", "space", "english", "api", "mcp", "gradio", "token", "top", "lora", "json", "jsonl", "csv",
         "parquet", "hub", "hugging", "face", "modelscope", "gguf", "ollama", "safetensors", "transformers", "vllm",
         "tgi", "cpp", "modelfile", "sft", "auto", "none", "nf4", "process", "shared", "alpha", "prompt", "system",
         "reference", "base", "pirate", "tensorboard", "trackio", "wandb", "mlflow", "qlora", "zip", "smollm",
         "instruct", "default", "owner", "name", "train", "main", "standard", "quick", "adapter", "merge", "kb",
         "mb", "gb", "bits", "user", "your", "model", "my", "top-k", "top-p", "cpu", "gpu", "s",
         "dpo", "orpo", "beta", "chosen", "rejected"}  # preference methods, their parameter and data columns

pytestmark = [pytest.mark.browser, pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium is not installed")]


@pytest.fixture(scope="module")
def app(embedded_dir, tmp_path_factory):
    from llama_space.export.base import base_model_name

    settings = embedded_settings(tmp_path_factory.mktemp("browser-ui"))
    folder = random_adapter(embedded_dir, Path(settings.adapters_dir) / "pirate", base_model="")
    (folder / "llama_space.json").write_text(json.dumps({
        "base_model": base_model_name(settings.model), "dataset_name": "persona.jsonl", "train_examples": 96,
        "steps": 60, "train_loss": 0.8123, "hyperparameters": {"method": "sft", "lora_r": 4},
        "created": "2026-12-08T01:00:00Z"}))
    with launched_app(settings) as launched:
        yield launched


@pytest.fixture(scope="module")
def browser(app):
    IMAGES.mkdir(parents=True, exist_ok=True)
    with playwright_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def open_page(browser, app, locale: str = "en-US", dark: bool = False, viewport: dict = DESKTOP):
    context = browser.new_context(locale=locale, viewport=viewport, color_scheme="dark" if dark else "light",
                                  accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(UI_TIMEOUT_MS)
    page.goto(app.url + ("/?__theme=dark" if dark else "/"))
    page.wait_for_selector("#chat-input textarea")
    poll("the language switch to follow the browser", lambda: page.locator("#lang-switch input:checked").count())
    return page


def shoot(page, name: str) -> None:
    """Save the view as IMAGES/NAME.png in 256 colours (tens of KB)."""
    from PIL import Image

    path = IMAGES / f"{name}.png"
    page.wait_for_timeout(300)
    page.screenshot(path=str(path), animations="disabled", caret="hide")
    Image.open(path).convert("RGB").quantize(256).save(path, optimize=True)


def open_tab(page, tab: str) -> None:
    page.locator("#tabs [role=tab]").nth(TABS.index(tab)).click()
    page.wait_for_timeout(600)


def replies(page) -> list[str]:
    return page.locator("#chatbot [data-testid=bot]").all_inner_texts()


def stats(page) -> str:
    return page.locator("#chat-stats").inner_text()


def finished(page) -> bool:
    return "tok/s" in stats(page)


def send(page, text: str) -> None:
    page.fill("#chat-input textarea", text)
    page.click("#send")
    poll("the stats line to clear", lambda: not finished(page), timeout=30, interval=0.05)
    poll("the reply to finish", lambda: finished(page), timeout=240)


def version_label(page) -> str:
    row = page.locator("#chat-versions")
    return page.locator("#version-label").inner_text() if row.is_visible() else ""


def test_chat_keeps_versions_edits_continues_and_restores_conversations(app, browser):
    page = open_page(browser, app)
    set_number(page, "#max-new-tokens input[type=number]", 6)
    set_number(page, "#temperature input[type=number]", 0)

    # A reply cut by the token limit says so, and Continue goes on from it in the same bubble.
    send(page, QUESTION)
    assert "token limit" in stats(page) and page.locator("#continue").is_visible(), stats(page)
    cut = replies(page)[-1]
    page.click("#continue")
    poll("the continued reply", lambda: finished(page) and len(replies(page)[-1]) > len(cut), timeout=240)
    assert len(replies(page)) == 1 and replies(page)[-1].startswith(cut.strip()), (cut, replies(page))
    first = replies(page)[-1]

    # Regenerate keeps the earlier version: arrows move between them.
    set_number(page, "#temperature input[type=number]", 1.5)
    page.click("#retry")
    poll("a second version", lambda: version_label(page) == "Version 2 of 2" and finished(page), timeout=240)
    assert all(text.strip() for text in replies(page)), "an empty bubble"
    second = replies(page)[-1]
    page.click("#version-previous")
    poll("the first version again", lambda: version_label(page) == "Version 1 of 2")
    assert replies(page)[-1] == first
    page.click("#version-next")
    poll("the second version again", lambda: version_label(page) == "Version 2 of 2")
    assert replies(page)[-1] == second

    # Editing the question runs the chat again from there.
    set_number(page, "#temperature input[type=number]", 0)
    page.locator("#chatbot [data-testid=user]").first.hover()
    page.locator("#chatbot button[aria-label=Edit]").first.click()
    page.locator("#chatbot textarea").fill("What is the capital of Italy?")
    page.locator("#chatbot button[aria-label=Submit]").click()
    poll("the edited question's reply", lambda: finished(page) and len(replies(page)) == 1 and "Italy" in page.locator(
        "#chatbot [data-testid=user]").first.inner_text(), timeout=240)
    assert page.locator("#chatbot [data-testid=user]").count() == 1 and not page.locator("#chat-versions").is_visible()
    shoot(page, "chat-conversation")

    # The conversation survives a reload; Clear starts a new one and the list reopens the old one.
    page.reload()
    page.wait_for_selector("#chat-input textarea")
    poll("the conversation after reloading", lambda: "Italy" in " ".join(
        page.locator("#chatbot [data-testid=user]").all_inner_texts()), timeout=60)
    assert page.locator("#chat-title textarea").input_value() == QUESTION  # named after its first question
    assert not page.locator("#chatbot button[aria-label=Clear]").is_visible()  # one Clear: New chat
    page.click("#clear")
    poll("an empty chat", lambda: not replies(page), timeout=30)
    page.locator("#chat-history input").click()
    page.get_by_role("option", name=QUESTION).click()
    poll("the reopened conversation", lambda: len(replies(page)) == 1, timeout=30)


def untranslated(page) -> list[str]:
    """English words the page shows outside names, values and the conversation."""
    text = page.evaluate("""() => {
        const skip = '#app-title, #chatbot, footer, #job-log, .adapter-details, #adapters-table, code';
        const walker = document.createTreeWalker(document.querySelector('.gradio-container'), NodeFilter.SHOW_TEXT);
        const out = [];
        while (walker.nextNode()) {
            const node = walker.currentNode, el = node.parentElement;
            if (!el || el.closest(skip) || !el.offsetParent) continue;
            out.push(node.textContent);
        }
        return out.join(' ');
    }""")
    # Values, ids and paths (digits, underscores, dots or slashes in them) are not words to translate.
    words = {w for w in re.findall(r"[A-Za-z][A-Za-z0-9_./-]*", text) if not re.search(r"[0-9_./]", w)}
    return sorted(w for w in words if w.lower().strip("-") not in NAMES)


@pytest.mark.parametrize("view", ["light", "dark", "zh", "phone"])
def test_every_tab_in_each_language_theme_and_size(app, browser, view):
    page = open_page(browser, app, locale="zh-CN" if view == "zh" else "en-US", dark=view == "dark",
                     viewport=PHONE if view == "phone" else DESKTOP)
    if view == "phone":  # the chat, its adapter choice and Send on the first screen; every tab in reach
        for selector in ("#adapter", "#send", "#chatbot"):
            box = page.locator(selector).bounding_box()
            assert box and box["y"] + min(box["height"], 60) <= PHONE["height"], (selector, box)
        assert all(tab.is_visible() for tab in page.locator("#tabs [role=tab]").all())
        assert page.locator("#tabs [role=tab]").count() == len(TABS)
    for tab in TABS:
        open_tab(page, tab)
        if tab == "finetune" and view in ("light", "dark"):
            page.set_input_files("#dataset-upload input[type=file]", str(PERSONA))
            poll("the preview", lambda: page.locator("#dataset-preview mark.trained").count() > 0, timeout=180)
        if tab == "adapters":
            poll("the adapters table", lambda: "pirate" in page.locator("#adapters-table").inner_text(), timeout=60)
        if view == "zh":
            assert not untranslated(page), (tab, untranslated(page))
        shoot(page, f"{tab}-{view}")
    if view == "dark":  # the preview's trained text is readable: light text on a dark mark
        open_tab(page, "finetune")
        colours = page.locator("#dataset-preview mark.trained").first.evaluate(
            "el => [getComputedStyle(el).color, getComputedStyle(el).backgroundColor]")
        assert colours[1] != "rgb(255, 255, 255)" and not colours[1].startswith("rgb(25"), colours


def test_finetune_help_and_controls_and_adapter_actions(app, browser):
    page = open_page(browser, app)
    open_tab(page, "finetune")
    for name in ("max_steps", "lora_r", "grad_accum", "eval_fraction", "learning_rate"):
        assert len(page.locator(f"#param-{name}").inner_text()) > 40, name  # label and a line of help
    assert "0 means" in page.locator("#param-max_steps").inner_text()
    assert not page.locator("#cancel-training").is_enabled() and not page.locator("#resume-training").is_enabled()

    open_tab(page, "adapters")
    table = page.locator("#adapters-table")
    poll("the adapters table", lambda: "pirate" in table.inner_text(), timeout=60)
    for header in ("name", "base model", "method", "trained on", "size", "evaluation"):
        assert header in table.inner_text().lower(), header
    page.locator("#adapter-pick input").click()
    page.get_by_role("option", name="pirate", exact=True).click()
    poll("the details", lambda: "training rows" in page.locator("#adapter-details").inner_text(), timeout=30)
    page.click("#adapter-delete")
    poll("the confirmation", lambda: page.locator("#adapter-confirm").is_visible(), timeout=30)
    assert "pirate" in page.locator("#adapter-confirm-text").inner_text()
    page.click("#adapter-delete-keep")
    poll("the confirmation to go", lambda: not page.locator("#adapter-confirm").is_visible(), timeout=30)
    assert (Path(app.settings.adapters_dir) / "pirate").is_dir()
    page.click("#adapter-open-chat")
    poll("the chat with pirate", lambda: page.locator("#adapter input").input_value() == "pirate", timeout=30)
    poll("the header to name pirate", lambda: "pirate" in page.locator("#chat-header").inner_text(), timeout=30)


def test_export_needs_before_start_and_every_file_downloadable(app, browser):
    page = open_page(browser, app)
    open_tab(page, "export")
    page.locator("#export-adapter input").click()
    page.get_by_role("option", name="pirate", exact=True).click()
    page.locator("#export-kind").get_by_text("GGUF + Ollama", exact=False).click()
    poll("what the export needs", lambda: "Needs:" in page.locator("#export-needs").inner_text(), timeout=60)
    page.click("#export-start")
    poll("the export to complete", lambda: page.locator("#export-status .export-state[data-state=completed]").count()
         or page.locator("#export-status .export-state[data-state=failed]").count(), timeout=600, interval=1)
    assert page.locator("#export-status .export-state").get_attribute("data-state") == "completed", (
        page.locator("#export-status").inner_text())
    page.click("#export-download")
    files = page.locator("#export-file")
    poll("the files", lambda: ".gguf" in files.inner_text(), timeout=60)
    names = files.inner_text()
    assert "Modelfile" in names and "README" in names, names
    links = files.locator("a[href]")
    assert links.count() >= 3
    for href in links.evaluate_all("links => links.map(a => a.href)"):
        assert page.request.get(href).ok, href
    shoot(page, "export-done")
