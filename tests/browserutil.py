"""Helpers for the Playwright tests: typing into Gradio's fields as a person does."""

from __future__ import annotations

from jobutil import poll


def set_number(page, selector: str, value: float) -> None:
    """Type into a slider's or number field's box and commit it, as a person tabbing out would."""
    box = page.locator(selector)
    box.fill(str(value))
    box.press("Enter")
    box.blur()
    poll(f"{selector} = {value}", lambda: float(box.input_value() or "nan") == value, timeout=30)
