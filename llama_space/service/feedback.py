"""Feedback on replies, and the datasets it makes: thumbs up/down and edits in Chat, picks in Compare.

Each mark is one JSON file under data_dir/feedback/, written whole or not at all, holding the conversation up to
the reply, the reply, the adapter and generation settings, and the signed-in user on an OAuth Space. Marking is a
change (service/permissions.py): refused on an app reachable by others without a password. The marks make two
datasets: preference pairs (a pick: the picked reply over each other; an edit: the edited reply over the original)
for DPO or ORPO, and instruction rows (thumbs up: the reply; an edit: the edited reply) for SFT.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from llama_space import adapters
from llama_space.data.limits import MAX_TURNS
from llama_space.errors import UserError
from llama_space.inference.prompting import normalize_messages
from llama_space.service.permissions import oauth_enabled

if TYPE_CHECKING:
    from llama_space.service.permissions import Permissions
    from llama_space.settings import Settings

KINDS = {"up": "thumbs up", "down": "thumbs down", "edit": "the reply it should have been",
         "pick": "this reply is better than the others"}
DATASETS = ("preference", "sft")
MAX_MARKS = 100_000  # marks kept; past it a new one is refused until the feedback is cleared
MAX_TEXT = 64 * 1024  # characters of one reply
MAX_CONVERSATION = 512 * 1024  # characters of the conversation a reply answers


class Feedback:
    """Records marks, counts them, builds the datasets, and clears them."""

    def __init__(self, settings: Settings, permissions: Permissions) -> None:
        self.root = Path(settings.data_dir) / "feedback"
        self.permissions = permissions

    def record(self, kind: str, conversation: list[dict], reply: str, adapter: str = "", edited: str = "",
               other_replies: list[str] | None = None, generation: dict | None = None) -> dict:
        """Save one mark; returns {"id", "kind", "counts"}. UserError saying what is missing or wrong."""
        self.permissions.require_change()
        mark = self._checked(kind, conversation, reply, adapter, edited, other_replies or [], generation or {})
        self.root.mkdir(parents=True, exist_ok=True)
        if sum(1 for _ in self.root.glob("*.json")) >= MAX_MARKS:
            raise UserError(f"{MAX_MARKS} feedback marks are stored: download and clear them before adding more.")
        staging = self.root / f".{mark['id']}.tmp"
        staging.write_text(json.dumps(mark, ensure_ascii=False))
        os.replace(staging, self.root / f"{mark['id']}.json")
        return {"id": mark["id"], "kind": kind, "counts": self.dataset("preference")["counts"]}

    def _checked(self, kind, conversation, reply, adapter, edited, others, generation) -> dict:
        if kind not in KINDS:
            raise UserError(f"kind must be one of {', '.join(KINDS)} ({'; '.join(f'{k}: {v}' for k, v in KINDS.items())})")
        if not isinstance(conversation, list) or len(conversation) > MAX_TURNS:
            raise UserError(f"conversation must be a list of at most {MAX_TURNS} {{role, content}} messages")
        prompt = normalize_messages(conversation)  # ends with the user turn the reply answers
        if sum(len(m["content"]) for m in prompt) > MAX_CONVERSATION:
            raise UserError(f"conversation holds more than {MAX_CONVERSATION} characters: mark a shorter one")
        texts = [reply, edited, *others]
        if not all(isinstance(t, str) and len(t) <= MAX_TEXT for t in texts):
            raise UserError(f"reply, edited and other_replies must be text of at most {MAX_TEXT} characters")
        if not reply.strip():
            raise UserError("reply is empty: mark a reply the model gave")
        if kind == "edit" and (not edited.strip() or edited.strip() == reply.strip()):
            raise UserError("An edit needs the reply it should have been (edited), different from the reply.")
        if kind == "pick" and not [o for o in others if o.strip() and o.strip() != reply.strip()]:
            raise UserError("A pick needs the other replies it is better than (other_replies).")
        if adapter not in adapters.BASE_NAMES:
            adapters.validate_name(adapter)
        profile = self.permissions.current_profile() if oauth_enabled() else None
        # Named by the time in nanoseconds, so that a listing of the folder is the order the marks came in.
        return {"id": f"{time.time_ns()}-{uuid.uuid4().hex[:6]}", "kind": kind,
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "conversation": prompt,
                "reply": reply, "edited": edited if kind == "edit" else "",
                "other_replies": [o for o in others if o.strip()] if kind == "pick" else [],
                "adapter": adapter if adapter not in adapters.BASE_NAMES else "",
                "generation": {k: v for k, v in generation.items() if isinstance(v, (int, float, str, bool))},
                "user": (profile or {}).get("preferred_username")}

    def marks(self) -> list[dict]:
        """Every stored mark, oldest first (an unreadable file is skipped)."""
        found = []
        for path in sorted(self.root.glob("*.json")) if self.root.is_dir() else []:
            try:
                found.append(json.loads(path.read_text()))
            except (OSError, ValueError):
                continue
        return found

    def dataset(self, kind: str = "preference") -> dict:
        """{"counts", "rows"}: preference pairs ({prompt, chosen, rejected}) or SFT rows ({messages}) from the
        marks, with the counts of marks by kind and of rows of each dataset. Shown to those who may train."""
        if kind not in DATASETS:
            raise UserError(f"kind must be one of {', '.join(DATASETS)}")
        pairs, sft, by_kind = [], [], dict.fromkeys(KINDS, 0)
        for mark in self.marks():
            by_kind[mark.get("kind")] = by_kind.get(mark.get("kind"), 0) + 1
            prompt = mark.get("conversation") or []
            if mark.get("kind") == "pick":
                pairs += [{"prompt": prompt, "chosen": mark["reply"], "rejected": other}
                          for other in mark.get("other_replies", [])]
            elif mark.get("kind") == "edit":
                pairs.append({"prompt": prompt, "chosen": mark["edited"], "rejected": mark["reply"]})
            if mark.get("kind") in ("up", "edit"):
                best = mark["edited"] if mark["kind"] == "edit" else mark["reply"]
                sft.append({"messages": [*prompt, {"role": "assistant", "content": best}]})
        counts = {"marks": by_kind, "preference_pairs": len(pairs), "sft_rows": len(sft)}
        return {"counts": counts, "rows": pairs if kind == "preference" else sft}

    def private_dataset(self, kind: str = "preference") -> dict:
        """dataset() for those who may see training data (conversations are private)."""
        self.permissions.require_job_access()
        return self.dataset(kind)

    def jsonl(self, kind: str = "preference") -> Path:
        """The dataset as a JSONL file in a fresh temporary folder, ready to download or train on."""
        rows = self.private_dataset(kind)["rows"]
        if not rows:
            raise UserError(f"No feedback makes {kind} rows yet: mark replies in Chat or Compare first.")
        path = Path(tempfile.mkdtemp(prefix="llama-space-feedback-")) / f"feedback-{kind}.jsonl"
        path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
        return path

    def clear(self) -> dict:
        """Delete every mark; returns {"cleared": how many}."""
        self.permissions.require_change()
        marks = list(self.root.glob("*.json")) if self.root.is_dir() else []
        for path in marks:
            path.unlink(missing_ok=True)
        return {"cleared": len(marks)}
