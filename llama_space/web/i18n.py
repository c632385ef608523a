"""The UI in English and Simplified Chinese.

Every piece of text the UI shows has a key in the tables of `llama_space.web.strings`, with both languages.
Static text (labels, buttons, placeholders, help lines) is a `L(key)` marker that the browser renders in its
locale (Gradio's `gr.I18n`); text built on the server (status lines, errors, progress messages) is `t(key)`, in the
language of the request it answers: the language switch's cookie, else the browser's Accept-Language. Messages the
core built in English (its errors, the data report, an export's needs, a job's plan) reach the UI through
`core_text(message)`, which turns them into that language by the catalogue of web/core_messages.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import gradio as gr

from llama_space.compat import LOCALE_STORE_JS, current_request
from llama_space.web.core_messages import localize
from llama_space.web.strings import STRINGS

if TYPE_CHECKING:
    from gradio.i18n import I18nData

LANGUAGES = ("en", "zh")
COOKIE = "llama_space_lang"
STORAGE_KEY = "llama-space-lang"
# The frontend locale each language is shown in (Gradio's own strings have zh-CN; our table's "zh" covers it).
FRONTEND_LOCALE = {"en": "en", "zh": "zh-CN"}
SWITCH_CHOICES = [("English", "en"), ("中文", "zh")]

I18N = gr.I18n(en={key: pair[0] for key, pair in STRINGS.items()},
               zh={key: pair[1] for key, pair in STRINGS.items()})


def L(key: str) -> I18nData:
    """Static text the browser shows in its own language."""
    if key not in STRINGS:
        raise KeyError(f"no UI string {key!r} in llama_space.web.strings")
    return I18N(key)


def t(key: str, lang: str | None = None, **values) -> str:
    """Text built on the server, in `lang` or else the language of the request being answered."""
    pair = STRINGS[key]
    text = pair[LANGUAGES.index(lang or language())]
    return text.format(**values) if values else text


def core_text(message: str, lang: str | None = None) -> str:
    """A message the core built in English, in `lang` or else the language of the request being answered."""
    return localize(message, lang or language())


def language(request=None) -> str:
    """"en" or "zh": the switch's choice (a cookie), else the first language the browser accepts that we have."""
    request = request if request is not None else current_request()
    if request is None:
        return "en"
    headers = getattr(request, "headers", None) or {}
    for part in (headers.get("cookie") or "").split(";"):
        name, _, value = part.strip().partition("=")
        if name == COOKIE and value in LANGUAGES:
            return value
    for item in (headers.get("accept-language") or "").split(","):
        tag = item.split(";")[0].strip().lower()
        if tag.startswith("zh"):
            return "zh"
        if tag.startswith("en"):
            return "en"
    return "en"


# On load: a choice made earlier (kept in the browser) wins over the browser's language; the frontend is switched
# to it, the cookie tells the server, and the switch shows it.
_ON_LOAD_JS = f"""async () => {{
  const setLocale = {LOCALE_STORE_JS};
  const page = (document.documentElement.lang || navigator.language || 'en').toLowerCase();
  const stored = localStorage.getItem('{STORAGE_KEY}');
  const lang = stored || (page.startsWith('zh') ? 'zh' : 'en');
  const locales = {FRONTEND_LOCALE};
  if (stored && !page.startsWith(lang)) await setLocale(locales[lang]);
  document.cookie = '{COOKIE}=' + lang + '; path=/; max-age=31536000; SameSite=Lax';
  return lang;
}}"""
# On a choice: remember it and load the page again, so text built on the server comes in the new language too.
_ON_PICK_JS = f"""(lang) => {{
  localStorage.setItem('{STORAGE_KEY}', lang);
  document.cookie = '{COOKIE}=' + lang + '; path=/; max-age=31536000; SameSite=Lax';
  window.location.reload();
  return lang;
}}"""


def language_switch(demo: gr.Blocks) -> gr.Radio:
    """English / 中文, following the browser until the visitor picks one."""
    switch = gr.Radio(SWITCH_CHOICES, value=None, show_label=False, container=False, elem_id="lang-switch",
                      scale=0, min_width=170)
    hidden = {"api_visibility": "private"}
    demo.load(None, None, switch, js=_ON_LOAD_JS, queue=False, **hidden)
    switch.input(None, switch, None, js=_ON_PICK_JS, queue=False, **hidden)
    return switch
