"""What a job's log or error may show a user: the server's folders by name, not how its disk is laid out."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from llama_space.settings import Settings

# An absolute path in a log or an error: not part of a URL, a relative path or a fraction ("5/10").
_ABSOLUTE_PATH = re.compile(r"(?<![\w.~:/\\-])/[^\s'\"<>(),;:]+")


def server_places(settings: Settings) -> list[tuple[str, str]]:
    """(absolute folder, what users see instead) for the server's folders a log or an error may name, deepest
    first; each folder both as given and with its links resolved (the job's own files use the resolved one)."""
    import llama_space

    places = [(settings.data_dir, "<data>"), (settings.cache_dir, "<data>/cache"),
              (settings.adapters_dir, "<adapters>"), (Path(llama_space.__file__).parent.parent, "<app>"),
              (Path(sys.prefix), "<python>"), (Path(sys.base_prefix), "<python>")]
    if settings.model and Path(settings.model).exists():
        places.append((Path(settings.model), "<model>"))
    found = {str(form): shown for folder, shown in places
             for form in (Path(folder).absolute(), Path(folder).resolve())}
    return sorted(found.items(), key=lambda item: len(item[0]), reverse=True)


def hide_paths(text: str, places: list[tuple[str, str]]) -> str:
    """`text` with each absolute path shown from one of `places` (<data>/jobs/...), else by its last part."""

    def shown(match: re.Match) -> str:
        path = match.group()
        for folder, name in places:
            if path == folder or path.startswith(folder.rstrip("/") + "/"):
                return name + path[len(folder):]
        return "…/" + path.rstrip("/").rsplit("/", 1)[-1]

    return _ABSOLUTE_PATH.sub(shown, text)
