"""Every tab in a real Chromium, in English and Chinese, light and dark, on a desktop and on a phone (390x844).

Chat: a conversation survives a reload and can be reopened from the list; regenerated replies keep their earlier
versions (arrows between them); an edited message runs the chat again from there; a reply cut by the token limit
says so and Continue goes on from it; no empty bubble; "Edit reply" opens the feedback box right under the
conversation, readable on a phone. Fine-tune: help text on every setting, Cancel and Resume off with no job, the form
locked while a job runs and unlocked once it ends. Adapters: readable columns, a clicked row chooses its adapter and
shows its details, Compare opens the Compare tab with it chosen, Delete asks first. Export: what it needs before
Start, a progress bar while it runs, and every produced file downloadable. The language switch turns the page's
labels (and the text built on the server) to the other language and back. In zh-CN no English is left (names and
values aside). Screenshots of each tab and view go to test-artifacts/views/, or with LLAMA_SPACE_DOC_IMAGES=1 to
docs/images/ (committed; the README shows some).
"""

from __future__ import annotations

import json
import os
import re
import shutil
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
ARTIFACTS = REPO / "test-artifacts" / "views"  # views checked here but not shown in the docs
DESKTOP = {"width": 1280, "height": 860}
PHONE = {"width": 390, "height": 844}
TABS = ("chat", "finetune", "adapters", "compare", "export")
COLUMNS = ("name", "base model", "method", "trained on", "size", "evaluation")  # the Adapters table's
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
    tutor = shutil.copytree(folder, Path(settings.adapters_dir) / "tutor")  # a second row to click
    (tutor / "llama_space.json").write_text(json.dumps({
        "base_model": base_model_name(settings.model), "dataset_name": "lessons.jsonl", "train_examples": 40,
        "steps": 20, "hyperparameters": {"method": "dpo", "lora_r": 4}, "created": "2026-12-09T01:00:00Z"}))
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
    poll(f"the {tab} tab to open", lambda: selected_tab(page) == tab, timeout=30, interval=0.1)


def selected_tab(page) -> str | None:
    chosen = [i for i, tab in enumerate(page.locator("#tabs [role=tab]").all())
              if tab.get_attribute("aria-selected") == "true"]
    return TABS[chosen[0]] if chosen else None


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

    # "Edit reply" opens the feedback box right under the conversation, the last reply in it to rewrite.
    edit = page.locator("#feedback-edit textarea")
    assert not edit.is_visible()
    page.click("#feedback-edit-open")
    poll("the edit box with the last reply", lambda: edit.is_visible() and edit.input_value().strip() == replies(
        page)[-1].strip(), timeout=30)
    chat, box, message = (page.locator(s).bounding_box() for s in ("#chatbot", "#feedback-edit-box", "#chat-input"))
    assert chat["y"] + chat["height"] <= box["y"] < message["y"], (chat, box, message)
    shoot(page, "chat-conversation")
    page.set_viewport_size(PHONE)  # readable on a phone: the box and its buttons fit the screen's width
    poll("the phone layout", lambda: page.locator("#feedback-edit-box").bounding_box()["width"] <= PHONE["width"],
         timeout=30)
    for selector in ("#feedback-edit-box", "#feedback-edit textarea", "#feedback-save-edit", "#feedback-edit-close"):
        found = page.locator(selector).bounding_box()
        assert found["x"] >= 0 and found["x"] + found["width"] <= PHONE["width"], (selector, found)
    assert page.locator("#feedback-edit textarea").bounding_box()["width"] >= PHONE["width"] * 0.7
    page.locator("#feedback-edit-box").scroll_into_view_if_needed()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "chat-edit-phone.png"))
    page.set_viewport_size(DESKTOP)
    page.click("#feedback-edit-close")
    poll("the edit box to close", lambda: not edit.is_visible(), timeout=30)

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
    if view == "zh":  # the switch turns the labels, and the text the server builds, to English and back
        for language, chat_tab, header in (("English", "Chat", "System prompt"), ("中文", "对话", "系统提示词")):
            with page.expect_navigation():  # a choice reloads the page, in the new language
                page.locator("#lang-switch").get_by_text(language, exact=True).click()
            poll(f"the page in {language}", lambda tab=chat_tab, line=header: page.locator(
                "#tabs [role=tab]").first.inner_text() == tab and line in page.locator("#chat-header").inner_text(),
                 timeout=60)
            assert page.locator("#lang-switch input:checked").get_attribute("value") == (
                "en" if language == "English" else "zh")


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
    for header in COLUMNS:
        assert header in table.inner_text().lower(), header
    # A click anywhere in a row chooses that row's adapter and shows its details.
    for name, created in (("tutor", "2026-12-09"), ("pirate", "2026-12-08")):
        row = table.locator("[role=gridcell]").filter(has_text=name).first.get_attribute("data-row")
        table.locator(f"[role=gridcell][data-row='{row}'][data-col='{COLUMNS.index('method')}']").click()
        poll(f"{name} chosen", lambda name=name: page.locator("#adapter-pick input").input_value() == name,
             timeout=30)
        poll(f"{name}'s details", lambda day=created: day in page.locator("#adapter-details").inner_text(), timeout=30)
    assert "training rows" in page.locator("#adapter-details").inner_text()

    # Compare opens the Compare tab with the chosen adapter picked.
    page.click("#adapter-compare")
    poll("the Compare tab", lambda: selected_tab(page) == "compare", timeout=30)
    poll("pirate picked to compare", lambda: page.locator("#compare-adapters .token").all_inner_texts() == ["pirate"],
         timeout=30)
    open_tab(page, "adapters")
    page.click("#adapter-delete")
    poll("the confirmation", lambda: page.locator("#adapter-confirm").is_visible(), timeout=30)
    assert "pirate" in page.locator("#adapter-confirm-text").inner_text()
    page.click("#adapter-delete-keep")
    poll("the confirmation to go", lambda: not page.locator("#adapter-confirm").is_visible(), timeout=30)
    assert (Path(app.settings.adapters_dir) / "pirate").is_dir()
    page.click("#adapter-open-chat")
    poll("the chat with pirate", lambda: page.locator("#adapter input").input_value() == "pirate", timeout=30)
    poll("the header to name pirate", lambda: "pirate" in page.locator("#chat-header").inner_text(), timeout=30)

    # The form is locked while a job runs (Start off, Cancel on) and unlocked once it ends (Resume on, after a cancel).
    open_tab(page, "finetune")
    page.set_input_files("#dataset-upload input[type=file]", str(PERSONA))
    poll("the validation report", lambda: "96 of 96" in page.locator("#dataset-report").inner_text(), timeout=180)
    page.fill("#adapter-name input, #adapter-name textarea", "locked")
    page.locator("#preset").get_by_text("quick", exact=True).click()
    poll("the quick preset values", lambda: page.locator("#param-max_steps input").input_value() == "30", timeout=30)
    page.click("#start-training")
    poll("the job under way", lambda: job_state(page) in ("queued", "running"), timeout=120)
    poll("the form locked", lambda: form_locked(page) is True, timeout=30)
    assert not page.locator("#start-training").is_enabled()
    poll("Cancel on", lambda: page.locator("#cancel-training").is_enabled(), timeout=30)
    page.click("#cancel-training")
    poll("the job to end", lambda: job_state(page) in ("cancelled", "completed", "failed"), timeout=180)
    assert job_state(page) == "cancelled", page.locator("#job-progress").inner_text()
    poll("the form unlocked", lambda: form_locked(page) is False, timeout=30)
    assert page.locator("#start-training").is_enabled() and page.locator("#resume-training").is_enabled()
    assert not page.locator("#cancel-training").is_enabled()


def job_state(page) -> str | None:
    state = page.locator("#job-progress .job-state")
    return state.get_attribute("data-state") if state.count() else None


def form_locked(page) -> bool | dict:
    """True when every field of the training form is read-only, False when every one is editable, else which
    fields are read-only (the form half locked)."""
    fields = ["#adapter-name input, #adapter-name textarea", "#preset input", "#param-max_steps input",
              "#param-method input", "#param-system_prompt textarea", "#param-learning_rate input"]
    states = {selector: page.locator(selector).first.is_disabled() for selector in fields}
    # A read-only upload shows its file without the box to drop one or the button to clear it.
    states["#dataset-upload"] = not page.locator(
        "#dataset-upload input[type=file], #dataset-upload button[aria-label=Clear]").count()
    return states["#dataset-upload"] if len(set(states.values())) == 1 else states


def test_export_needs_before_start_and_every_file_downloadable(app, browser):
    page = open_page(browser, app)
    open_tab(page, "export")
    page.locator("#export-adapter input").click()
    page.get_by_role("option", name="pirate", exact=True).click()
    page.locator("#export-kind").get_by_text("GGUF + Ollama", exact=False).click()
    poll("what the export needs", lambda: "Needs:" in page.locator("#export-needs").inner_text(), timeout=60)
    page.click("#export-start")
    # While it runs a progress bar shows its stage and how far it is, never going back; it goes when done.
    seen: list[tuple[str, float | None, str]] = []

    def ended() -> bool:
        status = page.locator("#export-status")
        state = status.locator(".export-state").get_attribute("data-state") if status.locator(
            ".export-state").count() else None
        bar = status.locator("progress.export-bar")
        seen.append((state, float(bar.get_attribute("value")) if bar.count() else None, status.inner_text()))
        return state in ("completed", "failed", "cancelled")

    poll("the export to end", ended, timeout=600, interval=0.5)
    assert seen[-1][0] == "completed", seen[-1][2]
    running = [(value, text) for state, value, text in seen if state == "running"]
    assert running and all(value is not None for value, _ in running), seen
    assert any("GGUF" in text and "%" in text for _, text in running), running
    values = [value for value, _ in running]
    assert values == sorted(values) and 0 <= values[0] and values[-1] <= 100, values
    assert seen[-1][1] is None  # no bar once it is done
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
