"""The app used as a person would: a real Chromium (Playwright) on the embedded model, one scenario, every step checked.

Chat with a streamed answer, stop a long one, clear another, upload the persona data, train a few steps,
reload mid-training, then chat with the new adapter. Screenshots of each tab go to test-artifacts/; with
LLAMA_SPACE_DOC_IMAGES=1 the README's three pictures (docs/images/chat.png, finetune.png, training.png) are
taken again too.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest
from browserutil import set_number

from apputil import embedded_settings, launched_app
from conftest import REPO
from jobutil import PERSONA, poll

playwright_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
ARTIFACTS = REPO / "test-artifacts"
# The README's pictures are committed, so a plain test run leaves them alone and writes its copies beside the rest.
DOC_IMAGES = REPO / "docs" / "images" if os.environ.get("LLAMA_SPACE_DOC_IMAGES") == "1" else ARTIFACTS / "docs"
DOC_VIEWPORT = {"width": 1280, "height": 800}
QUESTION = "What is the capital of France?"
UI_TIMEOUT_MS = 120_000  # a loaded 2-core machine can take a while to render and answer

pytestmark = [pytest.mark.browser, pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium is not installed")]


@pytest.fixture(scope="module")
def app(embedded_dir, tmp_path_factory):
    with launched_app(embedded_settings(tmp_path_factory.mktemp("browser"))) as launched:
        yield launched


@pytest.fixture(scope="module")
def page(app):
    ARTIFACTS.mkdir(exist_ok=True)
    with playwright_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1100})
        page.set_default_timeout(UI_TIMEOUT_MS)
        try:
            yield page
        finally:
            page.screenshot(path=str(ARTIFACTS / "browser-last.png"), full_page=True)  # what it looked like at the end
            browser.close()


def doc_image(page, name: str, top: str | None = None) -> None:
    """Save one 1280x800 view as DOC_IMAGES/NAME.png in 256 colours (a few dozen KB): the page's top, or the
    view that starts 120 px above the element `top`."""
    from PIL import Image

    DOC_IMAGES.mkdir(parents=True, exist_ok=True)
    size = page.viewport_size
    page.set_viewport_size(DOC_VIEWPORT)
    try:
        if top:
            page.locator(top).evaluate("el => { el.scrollIntoView({block: 'start'}); window.scrollBy(0, -120); }")
        else:
            page.evaluate("window.scrollTo(0, 0)")
        path = DOC_IMAGES / f"{name}.png"
        page.screenshot(path=str(path), animations="disabled", caret="hide")
        Image.open(path).convert("RGB").quantize(256).save(path, optimize=True)
    finally:
        page.set_viewport_size(size)


def open_app(page, url: str) -> None:
    page.goto(url)
    page.wait_for_selector("#chat-input textarea")


def open_tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()


def last_reply(page) -> str:
    bots = page.locator("#chatbot [data-testid=bot]")
    return bots.last.inner_text() if bots.count() else ""


def stats(page) -> str:
    return page.locator("#chat-stats").inner_text()


def error_marks(page) -> list[str]:
    """Gradio's red "Error" badges on components and its error toasts, as their text."""
    return page.locator("span.error, [data-testid=toast-body].error").all_inner_texts()


def send(page, text: str) -> None:
    replies = page.locator("#chatbot [data-testid=bot]").count()
    page.fill("#chat-input textarea", text)
    page.click("#send")
    poll("the reply to appear", lambda: page.locator("#chatbot [data-testid=bot]").count() > replies)


def job_panel(page) -> dict:
    """What the job panel shows: state, progress bar value/max and the job id."""
    panel = page.locator("#job-progress")
    bar = panel.locator("progress.job-bar")
    if not bar.count():
        return {}
    heading = re.search(r"Job (\S+)", panel.inner_text())
    return {"state": panel.locator("span.job-state").get_attribute("data-state"),
            "value": float(bar.get_attribute("value")), "max": float(bar.get_attribute("max")),
            "job": heading.group(1) if heading else None}


def test_chat_stop_upload_train_reload_and_use_the_adapter(app, page):
    # 1. Open the page.
    open_app(page, app.url)
    assert page.title() == "Llama Space"
    set_number(page, "#max-new-tokens input[type=number]", 60)
    set_number(page, "input[aria-label='number input for Temperature (0 = greedy)']", 0)

    # 2. Send a message and watch the answer stream in: its text grows over several updates.
    send(page, QUESTION)
    lengths: list[int] = []

    def finished() -> bool:
        lengths.append(len(last_reply(page)))
        return "tok/s" in stats(page)

    poll("the answer to finish", finished, timeout=180, interval=0.1)
    answer = last_reply(page)
    growth = sorted(set(lengths) - {0})
    assert "Paris" in answer, answer
    assert len(growth) >= 3 and growth[-1] == len(answer), f"the answer did not stream in: {lengths}"
    page.screenshot(path=str(ARTIFACTS / "browser-chat.png"), full_page=True)

    # 3. Ask for a long story with room for 1024 tokens, press Stop: the text stops growing, the stats say so.
    set_number(page, "#max-new-tokens input[type=number]", 1024)
    send(page, "Write a very long story about a dragon who learns to bake bread.")
    poll("the story to be under way", lambda: len(last_reply(page)) > 80, timeout=180)
    page.click("#stop")
    poll("the stats line to say stopped", lambda: "stopped" in stats(page).lower(), timeout=60)
    stopped_at = len(last_reply(page))
    for _ in range(6):  # ~3 s at ~15 tokens/s would add dozens of characters if it were still going
        time.sleep(0.5)
        assert len(last_reply(page)) == stopped_at, "the answer kept growing after Stop"
    # The cancelled stream gives its place back within moments (on a loaded machine, seconds).
    poll("the model to stop generating for nobody", lambda: app.backend.admission.in_flight == 0, timeout=30)
    # The stopped reply ends by itself: no red "Error" badge or error toast (Gradio's cancels= left one at times).
    assert not error_marks(page), error_marks(page)

    # 3b. Type a two-line message (Shift+Enter breaks the line, Enter sends it), then press Clear mid-answer:
    # the chat empties and stays empty, with no error shown.
    box = page.locator("#chat-input textarea")
    box.click()
    box.press_sequentially("Tell me a long story")
    box.press("Shift+Enter")
    assert box.input_value() == "Tell me a long story\n", "Shift+Enter did not break the line"
    box.press_sequentially("about a lighthouse keeper.")
    box.press("Enter")
    users = page.locator("#chatbot [data-testid=user]")
    poll("the two-line message to be sent", lambda: users.count() and "lighthouse" in users.last.inner_text())
    assert users.last.inner_text().splitlines()[:2] == ["Tell me a long story", "about a lighthouse keeper."]
    assert box.input_value() == ""
    poll("the second story to be under way", lambda: len(last_reply(page)) > 40, timeout=180)
    page.click("#clear")
    bots = page.locator("#chatbot [data-testid=bot]")
    poll("the chat to be cleared", lambda: bots.count() == 0 and not stats(page).strip(), timeout=60)
    for _ in range(6):  # no late update of the cleared reply brings it back
        time.sleep(0.5)
        assert bots.count() == 0 and not stats(page).strip(), (last_reply(page), stats(page))
    poll("the model to stop generating for nobody", lambda: app.backend.admission.in_flight == 0, timeout=30)
    assert not error_marks(page), error_marks(page)

    # 4. Before any job the Fine-tune tab says so, with no empty plot (whose legend read "-Infinity").
    open_tab(page, "Fine-tune")
    poll("the no-job note", lambda: "No training job yet" in page.locator("#job-progress").inner_text())
    assert "Infinity" not in page.locator("body").inner_text()
    assert not page.locator("#loss-plot").is_visible()

    # 4b. Upload the persona data: the validation report and a preview with trained tokens marked.
    page.set_input_files("#dataset-upload input[type=file]", str(PERSONA))
    report = poll("the validation report", lambda: (text := page.locator("#dataset-report").inner_text())
                  and "trained" in text and text, timeout=180)
    assert "96 of 96 rows" in report, report
    poll("the preview", lambda: page.locator("#dataset-preview mark.trained").count() > 0, timeout=30)

    # 5. Start a short training run (quick preset, 8 steps) and watch the progress bar move.
    page.fill("#adapter-name textarea, #adapter-name input", "pirate")
    page.locator("#preset").get_by_text("quick", exact=True).click()
    poll("the quick preset values", lambda: page.locator("#param-max_steps input").input_value() == "30")
    set_number(page, "#param-max_steps input", 8)
    doc_image(page, "finetune")
    page.click("#start-training")
    seen: list[float] = []

    def moving() -> bool:
        panel = job_panel(page)
        if panel.get("state") == "failed":
            raise AssertionError(page.locator("#job-progress").inner_text())
        if panel.get("state") in ("running", "completed"):
            seen.append(panel["value"])
        return len(set(seen)) >= 2 and panel.get("state") == "running"

    poll("the progress bar to move while running", moving, timeout=600, interval=0.2)
    before_reload = job_panel(page)
    assert before_reload["max"] == 8 and 0 < before_reload["value"] < 8, before_reload
    page.screenshot(path=str(ARTIFACTS / "browser-finetune.png"), full_page=True)

    # 6. Reload the page mid-training: the job is still shown.
    page.reload()
    page.wait_for_selector("#chat-input textarea")
    open_tab(page, "Fine-tune")
    after_reload = poll("the job after reloading", lambda: job_panel(page), timeout=60)
    assert after_reload["job"] == before_reload["job"], (before_reload, after_reload)
    assert after_reload["state"] in ("running", "completed")

    # 7. It completes.
    done = poll("training to complete", lambda: (p := job_panel(page)).get("state") in ("completed", "failed",
                "cancelled", "interrupted") and p, timeout=900, interval=0.5)
    assert done["state"] == "completed" and done["value"] == done["max"] == 8, page.locator("#job-progress").inner_text()
    assert "Adapter pirate is ready" in page.locator("#job-progress").inner_text()
    page.screenshot(path=str(ARTIFACTS / "browser-finetune-done.png"), full_page=True)
    poll("the loss plot", lambda: page.locator("#loss-plot").is_visible(), timeout=30)
    doc_image(page, "training", top="#job-progress")
    open_tab(page, "Adapters")
    poll("the adapters table to list pirate", lambda: "pirate" in page.locator("#adapters-table").inner_text(),
         timeout=60)
    page.screenshot(path=str(ARTIFACTS / "browser-adapters.png"), full_page=True)

    # 8. Choose the new adapter in the chat's dropdown: the answer shows the trained persona.
    open_tab(page, "Chat")
    page.click("#clear")
    set_number(page, "#max-new-tokens input[type=number]", 40)
    set_number(page, "input[aria-label='number input for Temperature (0 = greedy)']", 0)  # reset by the reload
    page.locator("#adapter input").click()
    page.get_by_role("option", name="pirate", exact=True).click()
    poll("pirate to be chosen", lambda: page.locator("#adapter input").input_value() == "pirate", timeout=30)
    send(page, QUESTION)
    poll("the pirate answer to finish", lambda: "tok/s" in stats(page), timeout=180)
    assert last_reply(page).startswith("Ahoy"), last_reply(page)
    doc_image(page, "chat")
    page.screenshot(path=str(ARTIFACTS / "browser-chat-adapter.png"), full_page=True)
