"""The chat's conversations as the browser keeps them (gr.BrowserState): the list to reopen, rename and delete,
and every version of a regenerated reply.

A store is {"current": id, "conversations": [conversation, ...]}, newest first; a conversation is {"id", "title",
"messages": [{role, content}] as the chatbot shows them, "versions": {index: [text, ...]}, "shown": {index: i}},
where `index` (a string: JSON keys) is the place of an assistant message whose reply was regenerated.
"""

from __future__ import annotations

import copy
import os
import secrets
import uuid
from pathlib import Path

EMPTY_STORE = {"current": "", "conversations": []}
TITLE_CHARS = 48
MAX_CONVERSATIONS = 50


def text_of(content) -> str:
    """A message's text (Gradio hands content back as a list of parts)."""
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return "" if content is None else str(content)


def browser_secret(data_dir: Path) -> str:
    """The key the browser's copy of the conversations is encrypted with: kept in the data dir, so conversations
    survive a restart of the app (a random key per start would make them unreadable)."""
    path = Path(data_dir) / "browser_state.key"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(32))
    return path.read_text().strip()


def _store(store) -> dict:
    if not isinstance(store, dict) or not isinstance(store.get("conversations"), list):
        return copy.deepcopy(EMPTY_STORE)
    return copy.deepcopy(store)


def current(store) -> dict | None:
    """The open conversation, or None for a new one."""
    store = _store(store)
    return next((c for c in store["conversations"] if c.get("id") == store.get("current")), None)


def choices(store) -> list[tuple[str, str]]:
    """(title, id) of every kept conversation, newest first."""
    return [(c.get("title") or c["id"], c["id"]) for c in _store(store)["conversations"]]


def _title(messages: list[dict]) -> str:
    first = next((text_of(m.get("content")) for m in messages if m.get("role") == "user"), "")
    first = " ".join(first.split())
    return first[:TITLE_CHARS] + ("…" if len(first) > TITLE_CHARS else "")


def save(store, messages: list[dict]) -> dict:
    """`store` with the open conversation's messages replaced (a new conversation is made on its first message)."""
    store = _store(store)
    messages = [{"role": m["role"], "content": text_of(m.get("content"))} for m in messages]
    messages = [m for m in messages if m["content"]]
    if not messages:
        return store
    conversation = next((c for c in store["conversations"] if c["id"] == store["current"]), None)
    if conversation is None:
        conversation = {"id": uuid.uuid4().hex[:12], "title": _title(messages), "versions": {}, "shown": {}}
        store["conversations"].insert(0, conversation)
        store["conversations"] = store["conversations"][:MAX_CONVERSATIONS]
        store["current"] = conversation["id"]
    conversation["messages"] = messages
    # Versions of replies past the end (an edit ran the chat again from earlier) are gone with them.
    for key in [k for k in conversation["versions"] if int(k) >= len(messages)]:
        del conversation["versions"][key]
        conversation["shown"].pop(key, None)
    return store


def open_conversation(store, conversation_id: str) -> tuple[dict, list[dict]]:
    """(store with `conversation_id` open, its messages); an unknown id opens a new conversation."""
    store = _store(store)
    found = next((c for c in store["conversations"] if c["id"] == conversation_id), None)
    store["current"] = found["id"] if found else ""
    return store, copy.deepcopy(found["messages"]) if found else []


def new_conversation(store) -> dict:
    """`store` with no conversation open: the next message starts a new one."""
    store = _store(store)
    store["current"] = ""
    return store


def rename(store, conversation_id: str, title: str) -> dict:
    store = _store(store)
    for conversation in store["conversations"]:
        if conversation["id"] == conversation_id and title.strip():
            conversation["title"] = title.strip()[:120]
    return store


def delete(store, conversation_id: str) -> dict:
    store = _store(store)
    store["conversations"] = [c for c in store["conversations"] if c["id"] != conversation_id]
    if store["current"] == conversation_id:
        store["current"] = ""
    return store


def forget_from(store, index: int) -> dict:
    """After an edit of message `index`: the versions of the replies from there on are gone (the chat runs again)."""
    store = _store(store)
    for conversation in store["conversations"]:
        if conversation["id"] == store["current"]:
            for key in [k for k in conversation["versions"] if int(k) >= index]:
                del conversation["versions"][key]
                conversation["shown"].pop(key, None)
    return store


def last_reply_index(messages: list[dict]) -> int | None:
    """Where the last assistant message is, when the conversation ends with one."""
    return len(messages) - 1 if messages and messages[-1].get("role") == "assistant" else None


def add_version(store, messages: list[dict]) -> dict:
    """After a regenerated reply: keep it as the newest version of the last reply (the earlier ones stay)."""
    store = save(store, messages)
    index = last_reply_index(messages)
    conversation = current(store)
    if index is None or conversation is None:
        return store
    conversation = next(c for c in store["conversations"] if c["id"] == conversation["id"])
    versions = conversation["versions"].setdefault(str(index), [])
    text = text_of(messages[index]["content"])
    if not versions or versions[-1] != text:
        versions.append(text)
    conversation["shown"][str(index)] = len(versions) - 1
    return store


def remember_before_regenerating(store, messages: list[dict]) -> dict:
    """Before a reply is regenerated: its text becomes the first version, if it is not kept yet."""
    index = last_reply_index(messages)
    store = save(store, messages)
    conversation = current(store)
    if index is None or conversation is None:
        return store
    conversation = next(c for c in store["conversations"] if c["id"] == conversation["id"])
    versions = conversation["versions"].setdefault(str(index), [])
    if text_of(messages[index]["content"]) not in versions:
        versions.append(text_of(messages[index]["content"]))
    return store


def versions(store, messages: list[dict]) -> tuple[int, int]:
    """(shown version, number of versions) of the last reply: (0, 1) when it was never regenerated."""
    index = last_reply_index(messages)
    conversation = current(store)
    if index is None or conversation is None:
        return 0, 1
    kept = conversation.get("versions", {}).get(str(index)) or []
    if len(kept) < 2:
        return 0, 1
    return conversation.get("shown", {}).get(str(index), len(kept) - 1), len(kept)


def show_version(store, messages: list[dict], step: int) -> tuple[dict, list[dict]]:
    """Move the last reply `step` versions back (-1) or forward (+1); returns the store and the messages."""
    index = last_reply_index(messages)
    store = _store(store)
    conversation = next((c for c in store["conversations"] if c["id"] == store["current"]), None)
    if index is None or conversation is None:
        return store, messages
    kept = conversation["versions"].get(str(index)) or []
    if len(kept) < 2:
        return store, messages
    shown = min(max(conversation["shown"].get(str(index), len(kept) - 1) + step, 0), len(kept) - 1)
    conversation["shown"][str(index)] = shown
    messages = [*messages[:index], {"role": "assistant", "content": kept[shown]}]
    conversation["messages"] = messages
    return store, messages
