"""Export actions: merge or convert an adapter to GGUF (merged, or adapter-only beside its base) as a job, watch
and cancel it, download it, push to the Hub.

The same for the Export tab and the named Gradio endpoints. Starting, cancelling, downloading and pushing change
what the app holds or hand out weights, so they pass `permissions` first (refused on an exposed app without auth).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from llama_space import adapters
from llama_space.errors import UserError
from llama_space.export import export_jobs, publish

if TYPE_CHECKING:
    from huggingface_hub import HfApi

    from llama_space.service.permissions import Permissions
    from llama_space.settings import Settings

STATUS_KEYS = ["export_id", "state", "kind", "quantization", "adapter", "stage", "progress", "needs", "error",
               "files", "download", "elapsed_seconds"]


class ExportActions:
    """What a user does with a trained adapter after training; `hub_api` stands in for HfApi in tests."""

    def __init__(self, settings: Settings, permissions: Permissions, jobs: export_jobs.ExportJobs | None = None,
                 hub_api: HfApi | None = None) -> None:
        self.settings = settings
        self.permissions = permissions
        self.jobs = jobs or export_jobs.ExportJobs(settings)
        self.hub_api = hub_api

    @staticmethod
    def _public(status: dict) -> dict:
        status = {**status, "quantization": status.get("qtype") or None}
        return {key: status.get(key) for key in STATUS_KEYS}

    def adapter_names(self) -> list[str]:
        """The adapters that can be exported."""
        return adapters.list_names(self.settings.adapters_dir)

    def start_export(self, adapter: str, kind: str = "merge", qtype: str = "q8_0") -> dict:
        """Start merging `adapter` into the base (kind merge), converting the merged model to GGUF at `qtype` (kind
        gguf), or writing the adapter as a llama.cpp LoRA GGUF beside its base's GGUF at `qtype` (kind gguf_adapter)."""
        self.permissions.require_change()
        if not adapter or adapter in adapters.BASE_NAMES:
            raise UserError("Choose an adapter to export (the base model has nothing to merge).")
        adapters.validate_name(adapter)
        return self._public(self.jobs.start(adapter, kind, qtype))

    def export_status(self, export_id: str) -> dict:
        """State (queued|running|completed|failed|cancelled|interrupted), stage, progress 0..1, files, error."""
        return self._public(self.jobs.status(export_id))

    def current(self, export_id: str = "") -> dict | None:
        """The status of `export_id`, else of the running or newest export (what a reloaded page shows)."""
        if export_id:
            return self.export_status(export_id)
        found = self.jobs.active() or next(iter(self.jobs.list_exports()), None)
        return self._public(found) if found else None

    def cancel_export(self, export_id: str) -> dict:
        """Stop a queued or running export; its partial files are removed."""
        self.permissions.require_change()
        return self._public(self.jobs.cancel(export_id))

    def list_exports(self) -> list[dict]:
        """Every export, newest first."""
        return [self._public(status) for status in self.jobs.list_exports()]

    def download(self, export_id: str, file: str = "") -> Path:
        """The file of a completed export (the merged model's zip, the GGUF file, or the adapter GGUF), or `file`,
        another of its files by name (the base GGUF of an adapter export, the Modelfile, the README)."""
        self.permissions.require_change()
        if not export_id:
            raise UserError("Choose a completed export to download.")
        return self.jobs.result(export_id, file)

    def download_all(self, export_id: str) -> list[Path]:
        """Every file of a completed export, its main download first (a merge export's folder comes as its zip)."""
        main = self.download(export_id)
        others = [name for name in self.jobs.status(export_id).get("files") or []
                  if not name.endswith("/") and name != main.name]
        return [main, *(self.jobs.result(export_id, name) for name in others)]

    def needs(self, adapter: str, kind: str = "merge", qtype: str = "q8_0") -> str:
        """What exporting `adapter` would need (memory and disk), in words, to show before it starts."""
        if not adapter or adapter in adapters.BASE_NAMES:
            return ""
        adapters.validate_name(adapter)
        return self.jobs.needs(adapter, kind, qtype)

    def push(self, source: str, repo_id: str, private: bool = True) -> dict:
        """Push `source` (an export id: its merged model or GGUF file; else an adapter name) to `repo_id`."""
        self.permissions.require_change()
        if not source:
            raise UserError("Choose what to push: an adapter name or the id of a completed export.")
        if export_jobs.is_export_id(source):
            kind, folder, name, metadata, qtype = self._export_source(source)
            url = publish.push(kind, folder, name, metadata, repo_id, private=private, qtype=qtype,
                               api=self.hub_api)
        else:
            url = publish.push_adapter(self.settings.adapters_dir, source, repo_id, private=private,
                                       api=self.hub_api)
        return {"url": url, "repo_id": repo_id, "private": bool(private)}

    def _export_source(self, export_id: str) -> tuple[str, Path, str, dict, str]:
        """(publish kind, folder, adapter name, adapter metadata, qtype) of a completed export."""
        status = self.jobs.status(export_id)
        if status["state"] != "completed":
            raise UserError(f"Export {export_id} is {status['state']}; only a completed export can be pushed.")
        out = self.jobs.result(export_id).parent
        config = self.jobs.config(export_id)
        name = config.adapter
        if config.kind == "gguf_adapter":
            raise UserError("An adapter GGUF export is not pushed as such: push the adapter itself (its name), or "
                            "export the merged model as GGUF (kind gguf) and push that.")
        if config.kind == "merge":
            return "merged", out / f"{name}-merged", name, config.metadata, ""
        return "gguf", out, name, config.metadata, config.qtype
