"""Export jobs: data_dir/exports/<export_id>/ holds each merge or GGUF export's config, status, log and results.

Kinds: "merge" (a safetensors folder), "gguf" (the merged model as one GGUF file) and "gguf_adapter" (the adapter as
a llama.cpp LoRA GGUF beside its base's GGUF, which is written once per base and quantization and then reused:
export.gguf_base).

An export runs as `python -m llama_space.export.process DIR` in its own session (jobs.launcher), never in a
request thread, so a page reload or an app restart loses nothing; the store (jobs.store) says where it stands.
One export runs at a time.
"""

from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from llama_space import adapters
from llama_space.errors import UserError
from llama_space.export import base, gguf_adapter, gguf_base, merge
from llama_space.export.gguf_types import QTYPES
from llama_space.export.resources import require_disk, require_memory
from llama_space.jobs import files as jobfiles
from llama_space.jobs import launcher
from llama_space.jobs.store import JobKind, JobStore
from llama_space.model import source

if TYPE_CHECKING:
    from llama_space.settings import Settings

LOG_FILE = "export.log"
OUT_DIR = "out"  # the results, served for download
SCRATCH_DIR = "scratch"  # the merged model a GGUF export converts (removed when it ends)
PROCESS_MODULE = "llama_space.export.process"
KINDS = ("merge", "gguf", "gguf_adapter")
GGUF_KINDS = ("gguf", "gguf_adapter")  # those that take a quantization: the merged model's, or the base's
# Bytes per weight of each GGUF type: 32-weight blocks plus their scale; the K-quant mixes' averages on
# Llama-3.1-8B (gguf_types: 4.89 and 5.70 bits a weight with their Q6_K tensors; Q6_K is 210 bytes per 256).
GGUF_BYTES_PER_WEIGHT = {"f16": 2.0, "bf16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32, "q4_k_m": 4.89 / 8,
                         "q5_k_m": 5.70 / 8, "q6_k": 210 / 256}
KEEP_SECONDS = 24 * 3600  # a finished export's folder is swept this long after it ended
# A long random part: results are served from the folder.
EXPORT = JobKind(noun="export", folder="exports", log_file=LOG_FILE, id_key="export_id", id_hex=16)
INTERRUPTED = "The export stopped before it finished (its process is gone); start it again."


@dataclass(frozen=True)
class ExportJobConfig:
    """What one export converts and how (job.json of its folder)."""

    export_id: str
    kind: str  # one of KINDS
    qtype: str  # the GGUF quantization of the model, or of the base for gguf_adapter ("" for merge)
    adapter: str  # the adapter's name
    adapter_dir: str  # its folder
    model: str  # the base model it merges into ("" = the embedded model)
    cache_dir: str
    needs: str = ""  # the memory and disk it needs, in words
    metadata: dict = dataclasses.field(default_factory=dict)  # the adapter's metadata when the export started

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def read(cls, job_dir: Path) -> ExportJobConfig:
        """The checked configuration in `job_dir` (DamagedJobFile saying what is wrong with a damaged one)."""
        path = Path(job_dir) / jobfiles.JOB_FILE
        data = jobfiles.read_json(path)
        texts = ("export_id", "kind", "qtype", "adapter", "adapter_dir", "model", "cache_dir", "needs")
        wrong = [key for key in texts[:-1] if not isinstance(data.get(key), str)]
        if wrong or data["kind"] not in KINDS or not isinstance(data.get("metadata") or {}, dict):
            raise jobfiles.DamagedJobFile(path, f"bad {', '.join(wrong) or 'kind or metadata'}")
        return cls(**{key: data[key] for key in texts[:-1]}, needs=str(data.get("needs") or ""),
                   metadata=data.get("metadata") or {})


def is_export_id(text: str) -> bool:
    """Whether `text` has the form of an export id (adapter names never do: they cannot be this long and random)."""
    return isinstance(text, str) and bool(EXPORT.id_pattern().match(text))


def exports_root(data_dir: Path) -> Path:
    """Where export folders live."""
    return Path(data_dir).resolve() / EXPORT.folder


def needs(plan: merge.MergePlan, kind: str, qtype: str, base_cached: bool = False) -> tuple[int, int]:
    """(memory, disk) an export takes at its peak: the merged folder and its zip; the merged scratch and the GGUF
    file; or the adapter GGUF and, unless `base_cached`, the base's GGUF (the export folder links to the cache's)."""
    if kind == "merge":
        return plan.memory_bytes, 2 * plan.disk_bytes
    model_bytes = int(plan.parameters * GGUF_BYTES_PER_WEIGHT[qtype])
    if kind == "gguf":
        return plan.memory_bytes, plan.disk_bytes + model_bytes
    adapter_bytes = gguf_adapter.adapter_gguf_bytes(plan.adapter_dir)
    if base_cached:
        return merge.PROCESS_BYTES + 2 * adapter_bytes, adapter_bytes
    return plan.memory_bytes, adapter_bytes + model_bytes


class ExportStore(JobStore):
    """Export folders: a stopped export's partial results go; an interrupted one is started again, not resumed."""

    def __init__(self, data_dir: Path) -> None:
        super().__init__(data_dir, EXPORT)

    def damaged_keys(self) -> tuple[str, ...]:
        return ("adapter", "kind", "qtype")

    def clean_up(self, job_dir: Path, state: str) -> None:
        shutil.rmtree(job_dir / SCRATCH_DIR, ignore_errors=True)
        shutil.rmtree(job_dir / OUT_DIR, ignore_errors=True)

    def interrupted_message(self) -> str:
        return INTERRUPTED

    def stopped_fields(self) -> dict:
        return {"files": [], "download": None}

    def died_message(self, job_dir: Path, code: int) -> str:
        return (f"The export process exited with code {code} before reporting why; the export log has the "
                "details.")


class ExportJobs:
    """Starts, watches and cancels export jobs."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = ExportStore(settings.data_dir)
        self.launcher = launcher.Launcher(self.store)
        self.root = self.store.root

    def plan(self, adapter: str, kind: str = "merge") -> merge.MergePlan:
        """The merge plan of `adapter` into the app's base (the base must be on this machine already); for
        gguf_adapter, refused first when llama.cpp could not apply the adapter."""
        path = adapters.adapter_path(Path(self.settings.adapters_dir), adapter)
        if not adapters.is_complete(path):
            raise UserError(f"There is no adapter named {adapter!r}.")
        base.check_same_base(adapters.read_metadata(path), self.settings.model, adapter)
        base_dir = source.local_dir(self.settings.model, self.settings.cache_dir)
        if kind == "gguf_adapter":
            gguf_adapter.plan_pairs(path, base_dir)
        return merge.plan_merge(base_dir, path)

    def _needs(self, plan: merge.MergePlan, kind: str, qtype: str, check: bool = True) -> str:
        """What the export needs, in words; with `check`, refused first when it would not fit in memory or on
        disk."""
        if kind != "gguf_adapter":
            _, disk = needs(plan, kind, qtype)
            if check:
                self.root.mkdir(parents=True, exist_ok=True)
                merge.check_fits(plan, self.root, disk - plan.disk_bytes)
            return plan.describe(disk)
        cached = gguf_base.cached_path(self.settings.cache_dir, self.settings.model, plan.base_dir, qtype).is_file()
        memory, disk = needs(plan, kind, qtype, cached)
        if check:
            self.root.mkdir(parents=True, exist_ok=True)
            require_memory(memory, "The adapter GGUF export")
            require_disk(self.root, disk, "The adapter GGUF export")
        base_note = (f" The base's {qtype} GGUF is cached already." if cached else
                     f" The base's {qtype} GGUF is written once, then reused by its other adapters.")
        return plan.describe(disk, memory) + base_note

    def start(self, adapter: str, kind: str = "merge", qtype: str = "q8_0") -> dict:
        """Check the export fits, write its folder and launch it; return its status (with `needs`)."""
        qtype = (qtype or "").lower()
        if kind not in KINDS:
            raise UserError(f"Unknown export kind {kind!r}; choose merge (safetensors), gguf (the merged model) or "
                            "gguf_adapter (the adapter beside its base).")
        if kind in GGUF_KINDS and qtype not in QTYPES:
            raise UserError(f"Unknown GGUF quantization {qtype!r}; choose one of {', '.join(QTYPES)}.")
        qtype = qtype if kind in GGUF_KINDS else ""
        plan = self.plan(adapter, kind)
        described = self._needs(plan, kind, qtype)
        with self.store.lock:
            running = self.active()
            if running:
                raise UserError(f"An export is already running ({running['export_id']}); wait for it to finish "
                                "or cancel it.")
            export_id = self.store.new_id()
            config = ExportJobConfig(
                export_id=export_id, kind=kind, qtype=qtype, adapter=adapter,
                adapter_dir=str(plan.adapter_dir.resolve()), model=self.settings.model,
                cache_dir=str(Path(self.settings.cache_dir).resolve()), needs=described, metadata=plan.metadata)
            self.store.write_job(export_id, config.to_dict(),
                {"kind": kind, "qtype": qtype, "adapter": adapter, "stage": "queued", "progress": 0.0,
                 "needs": described, "files": [], "download": None})
            job_dir = self.store.job_dir(export_id)
            self.launcher.start_process(export_id, launcher.python_module(PROCESS_MODULE, str(job_dir)), "export")
            return self.status(export_id)

    def export_dir(self, export_id: str) -> Path:
        """The folder of export `export_id`; UserError for a malformed or unknown id."""
        return self.store.job_dir(export_id)

    def config(self, export_id: str) -> ExportJobConfig:
        """The export's configuration: kind, qtype, adapter, the adapter's metadata at the start."""
        return ExportJobConfig.read(self.export_dir(export_id))

    def status(self, export_id: str) -> dict:
        """status.json plus elapsed_seconds, after marking an export whose process is gone."""
        return self.store.status(export_id)

    def cancel(self, export_id: str) -> dict:
        """Stop a queued or running export (its partial results are removed)."""
        with self.store.lock:
            status = self.status(export_id)
            if status["state"] not in jobfiles.ACTIVE_STATES:
                raise UserError(f"Export {export_id} is already {status['state']}; there is nothing to cancel.")
            self.store.request_cancel(export_id)
            self.launcher.terminate(export_id, status)  # the export process cleans up on SIGTERM
        return status

    def list_exports(self) -> list[dict]:
        """Every export's status, newest first."""
        return self.store.list_jobs()

    def active(self) -> dict | None:
        """The queued or running export, if any."""
        return self.store.active()

    def result(self, export_id: str, file: str = "") -> Path:
        """The file to download: the merged model's zip, the GGUF file or the adapter GGUF; or `file`, another file
        the export wrote (the base GGUF, the Modelfile, the README)."""
        status = self.status(export_id)
        if status["state"] != "completed":
            raise UserError(f"Export {export_id} is {status['state']}; only a completed export can be downloaded.")
        files = [name for name in status.get("files") or [] if not name.endswith("/")]
        if file and file not in files:
            raise UserError(f"Export {export_id} has no file {file!r}; its files are {', '.join(files)}.")
        name = file or str(status.get("download") or "")
        path = self.export_dir(export_id) / OUT_DIR / name
        if not name or not path.is_file():
            raise UserError(f"The files of export {export_id} are gone; export again.")
        return path

    def needs(self, adapter: str, kind: str = "merge", qtype: str = "q8_0") -> str:
        """The memory and disk exporting `adapter` as `kind` would need, in words, before it starts."""
        qtype = (qtype or "").lower() if kind in GGUF_KINDS else ""
        if kind not in KINDS or (qtype and qtype not in QTYPES):
            return ""
        return self._needs(self.plan(adapter, kind), kind, qtype, check=False)

    def wait(self, export_id: str, timeout: float, poll: float = 0.5) -> dict:
        """The status once the export no longer queues or runs, or after `timeout` seconds."""
        return launcher.wait(lambda: self.status(export_id), timeout, poll)


def sweep_exports(data_dir: Path, keep_seconds: float = KEEP_SECONDS) -> int:
    """Remove export folders that ended over `keep_seconds` ago and staging folders of dead processes (the
    janitor calls this); returns how many went."""
    return ExportStore(data_dir).sweep(keep_seconds)
