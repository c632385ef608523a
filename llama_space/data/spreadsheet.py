"""Which text a spreadsheet program runs as a formula: the one check for the CSV files we read and write."""

from __future__ import annotations

# Spreadsheet programs skip a leading tab or carriage return and then run the "=..." behind it.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def runs_as_formula(text: object) -> bool:
    """Whether a spreadsheet program opening a CSV cell holding `text` may run it as a formula."""
    return isinstance(text, str) and text.startswith(FORMULA_STARTS)
