"""Feedback in a real Chromium on the tiny model: a thumbs up and an edit (in the box "Edit reply" opens) in Chat,
a pick in Compare, each saved as a mark; the Chat tab's header says which system prompt is in force; Fine-tune
counts the marks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llama_space.settings import Settings

from adapterutil import random_adapter
from apputil import launched_app
from jobutil import poll

playwright_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]

pytestmark = [pytest.mark.browser, pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium is not installed")]


@pytest.fixture(scope="module")
def app(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("browser-feedback")
    adapter = random_adapter(tiny_model_dir, root / "adapters" / "pirate", base_model="")
    (adapter / "llama_space.json").write_text(json.dumps({"system_prompt": "You are a pirate."}))
    with launched_app(Settings(model=str(tiny_model_dir), adapters_dir=root / "adapters",
                               data_dir=root / "data")) as launched:
        yield launched


def marks(app) -> list[dict]:
    folder = Path(app.settings.data_dir) / "feedback"
    return [json.loads(path.read_text()) for path in sorted(folder.glob("*.json"))] if folder.is_dir() else []


def test_thumbs_edit_and_pick_are_saved(app):
    with playwright_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1100})
        page.set_default_timeout(120_000)
        page.goto(app.url)
        page.wait_for_selector("#chat-input textarea")
        playwright_api.expect(page.locator("#chat-header")).to_contain_text("System prompt: none")
        page.locator("#adapter input").click()
        page.get_by_role("option", name="pirate").click()
        playwright_api.expect(page.locator("#chat-header")).to_contain_text("You are a pirate.")

        page.locator("#max-new-tokens input[type=number]").fill("24")
        page.locator("#chat-input textarea").fill("Hello there")
        page.locator("#send").click()
        playwright_api.expect(page.locator("#chat-stats")).to_contain_text("tokens")
        page.locator("#chatbot button[aria-label='Like']").first.click()
        poll("the thumbs up", lambda: [m for m in marks(app) if m["kind"] == "up"] or None)
        # "Edit reply" opens the edit box right under the conversation with the last reply in it; saving closes it.
        reply = page.locator("#chatbot [data-testid=bot]").last.inner_text()
        box = page.locator("#feedback-edit textarea")
        assert not box.is_visible()
        page.locator("#feedback-edit-open").click()
        poll("the edit box with the last reply", lambda: box.is_visible() and box.input_value().strip() == reply.strip())
        box.fill("Ahoy there, matey!")
        page.locator("#feedback-save-edit").click()
        [edit] = poll("the edit", lambda: [m for m in marks(app) if m["kind"] == "edit"] or None)
        poll("the edit box to close", lambda: not box.is_visible())
        assert edit["edited"] == "Ahoy there, matey!" and edit["adapter"] == "pirate"
        assert edit["conversation"][-1] == {"role": "user", "content": "Hello there"}

        page.get_by_role("tab", name="Compare").click()
        page.locator("#compare-prompt textarea").fill("Hi")
        page.locator("#compare-adapters input").click()
        page.get_by_role("option", name="pirate").click()
        page.keyboard.press("Escape")
        page.locator("#compare-run").click()
        # The pick is taken once the comparison has finished: both replies there and no longer growing.
        replies = [page.locator(f"#compare-reply-{i} textarea") for i in (0, 1)]
        seen: list[tuple[str, ...]] = []

        def finished() -> bool:
            seen.append(tuple(box.input_value() for box in replies))
            return len(seen) > 4 and all(seen[-1]) and len(set(seen[-5:])) == 1

        poll("both replies to finish", finished, timeout=300, interval=0.5)
        page.locator("#compare-pick-1").click()
        [pick] = poll("the pick", lambda: [m for m in marks(app) if m["kind"] == "pick"] or None, timeout=120)
        assert pick["adapter"] == "pirate" and len(pick["other_replies"]) == 1

        page.get_by_role("tab", name="Fine-tune").click()
        page.get_by_text("Feedback collected in Chat and Compare").click()
        page.locator("#feedback-refresh").click()
        playwright_api.expect(page.locator("#feedback-counts")).to_contain_text("2 preference pairs")
        page.locator("#feedback-use-pairs").click()  # the pairs become the data to train on, checked at once
        playwright_api.expect(page.locator("#dataset-report")).to_contain_text("2 of 2 preference pairs")
        assert page.locator("#param-method input").input_value() == "dpo"
        browser.close()
