"""The README and docs/ stay true to the code: the Space's front matter, a short README, links and anchors that
resolve, every setting in the settings table and every HTTP route in docs/api.md (the named Gradio endpoints are
checked against docs/api.md in test_api_names.py, which has a running app's view_api())."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import gradio
import pytest

from llama_space.settings import Settings

from conftest import REPO

README = REPO / "README.md"
DOCS = REPO / "docs"
PAGES = [README, REPO / "BENCHMARKS.md", *sorted(DOCS.glob("*.md"))]
README_LIMIT = 10_500  # bytes: "a README a newcomer reads in five minutes" (about 10 KB)
FENCE = re.compile(r"^```.*?^```", re.DOTALL | re.MULTILINE)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def prose(path: Path) -> str:
    """The page without code blocks and inline code, where brackets and parentheses are code, not links."""
    return re.sub(r"`[^`\n]*`", "", FENCE.sub("", path.read_text(encoding="utf-8")))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.replace("`", "").strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    for line in FENCE.sub("", path.read_text(encoding="utf-8")).splitlines():
        if match := re.match(r"#{1,6} (.+)", line):
            base = slug(match.group(1))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
    return found


def test_readme_keeps_the_space_front_matter_and_stays_short():
    text = README.read_text(encoding="utf-8")
    header = text.split("---\n")[1] if text.startswith("---\n") else ""
    settings = dict(line.split(": ", 1) for line in header.strip().splitlines())
    assert settings["sdk"] == "gradio" and settings["app_file"] == "app.py", header
    assert settings["sdk_version"] == gradio.__version__, "the Space would install another gradio than the tests use"
    assert settings["hf_oauth"] == "true", "sign-in with Hugging Face needs hf_oauth (docs/deployment.md)"
    assert len(text.encode()) <= README_LIMIT, f"README.md is {len(text.encode())} bytes: move detail to docs/"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_and_anchor_resolves(page):
    broken = []
    for target in LINK.findall(prose(page)):
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto: not checked offline
        file, _, anchor = target.partition("#")
        path = (page.parent / file).resolve() if file else page
        if not path.exists():
            broken.append(f"{target}: no such file")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            broken.append(f"{target}: no heading #{anchor} in {path.name}")
    assert not broken, broken


def test_every_setting_is_in_the_settings_table():
    table = (DOCS / "deployment.md").read_text(encoding="utf-8")
    missing = []
    for f in fields(Settings):
        flag, env = "--" + f.name.replace("_", "-"), f.metadata["env"]
        if f"| `{flag}` | `{env}` |" not in table:
            missing.append(f"{flag} / {env}")
    assert not missing, f"add these to the settings table of docs/deployment.md: {missing}"


def test_every_http_route_is_in_the_api_doc():
    api = (DOCS / "api.md").read_text(encoding="utf-8")
    routes = set()
    for module in (REPO / "llama_space" / "web" / "routes").glob("*.py"):
        source = module.read_text(encoding="utf-8")
        prefix = match.group(1) if (match := re.search(r"APIRouter\(prefix=\"([^\"]*)\"", source)) else ""
        for method, path in re.findall(r"@\w+\.(get|post|put|delete)\(\"([^\"]*)\"", source):
            routes.add(f"{method.upper()} {(prefix + path) or '/'}")
    assert {"POST /", "POST /v1/chat/completions"} <= routes, routes
    params = re.compile(r"\{[^}]*\}")  # /v1/models/{model_id:path} is written /v1/models/{id}
    missing = sorted(route for route in routes if f"`{params.sub('{}', route)}`" not in params.sub("{}", api))
    assert not missing, f"document these in docs/api.md: {missing}"
