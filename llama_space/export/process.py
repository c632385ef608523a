"""The export process: `python -m llama_space.export.process DIR` does what DIR/job.json asks and reports in DIR.

kind "merge": the merged safetensors folder and a zip of it (the download); kind "gguf": the merged model in a
scratch folder, then the GGUF file and an Ollama Modelfile (the GGUF file is the download); kind "gguf_adapter":
the base's GGUF from the app's cache (written there first if missing) linked into the results, the adapter as a
llama.cpp LoRA GGUF (the download) and a Modelfile with FROM the base and ADAPTER the adapter. Progress goes into
status.json; SIGTERM or the cancel file stops it, and whatever it had written goes.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
import time
import zipfile
from pathlib import Path

from llama_space.errors import UserError
from llama_space.export import merge
from llama_space.export.export_jobs import LOG_FILE, OUT_DIR, SCRATCH_DIR, ExportJobConfig
from llama_space.jobs import files as jobfiles
from llama_space.model import source

log = logging.getLogger("llama_space.export")
REPORT_EVERY = 0.5  # seconds between status writes
COPY_CHUNK = 16 * 2**20


class Cancelled(Exception):
    """The export was asked to stop."""


class Reporter:
    """A progress callback for one stage: maps its (done, total) onto the export's 0..1 and checks for a cancel."""

    def __init__(self, job_dir: Path, stage: str, start: float, span: float) -> None:
        self.job_dir, self.stage, self.start, self.span = job_dir, stage, start, span
        self.last = 0.0
        jobfiles.update_status(job_dir, stage=stage, progress=round(start, 4))
        log.info("%s", stage)

    def __call__(self, done: float, total: float | None = None) -> None:
        if (self.job_dir / jobfiles.CANCEL_FILE).exists():
            raise Cancelled
        fraction = done if total is None else done / max(total, 1)
        now = time.monotonic()
        if now - self.last >= REPORT_EVERY or fraction >= 1:
            self.last = now
            jobfiles.update_status(self.job_dir, progress=round(self.start + self.span * min(fraction, 1), 4))


def zip_folder(folder: Path, target: Path, progress: Reporter) -> Path:
    """Store `folder` in `target` as <folder name>/<file> (safetensors do not compress: stored, zip64)."""
    files = sorted(path for path in folder.iterdir() if path.is_file())
    total, done = sum(path.stat().st_size for path in files), 0
    tmp = target.with_name(f".{target.name}.tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for path in files:
            with open(path, "rb") as src, archive.open(f"{folder.name}/{path.name}", "w", force_zip64=True) as dst:
                while chunk := src.read(COPY_CHUNK):
                    dst.write(chunk)
                    done += len(chunk)
                    progress(done, total)
    tmp.rename(target)
    return target


def export(job_dir: Path, config: ExportJobConfig) -> str:
    """Write the export's results into job_dir/out; return the name of the file to download."""
    base_dir = source.local_dir(config.model, Path(config.cache_dir), download=True)
    plan = merge.plan_merge(base_dir, Path(config.adapter_dir))
    out = job_dir / OUT_DIR
    out.mkdir(exist_ok=True)
    adapter = config.adapter
    if config.kind == "gguf_adapter":
        return adapter_gguf(job_dir, config, base_dir, out)
    if config.kind == "merge":
        folder = merge.merge_adapter(plan, out / f"{adapter}-merged", Reporter(job_dir, "merging", 0, 0.9))
        return zip_folder(folder, out / f"{folder.name}.zip", Reporter(job_dir, "packing the zip", 0.9, 0.1)).name
    from llama_space.export.gguf import write_gguf
    from llama_space.export.ollama import write_modelfile

    qtype = config.qtype
    merged = merge.merge_adapter(plan, job_dir / SCRATCH_DIR / f"{adapter}-merged",
                                 Reporter(job_dir, "merging", 0, 0.5))
    gguf_file = write_gguf(merged, out / f"{adapter}-{qtype}.gguf", qtype,
                           progress=Reporter(job_dir, "writing GGUF", 0.5, 0.5))
    write_modelfile(gguf_file, merged, out)
    shutil.rmtree(job_dir / SCRATCH_DIR, ignore_errors=True)
    return Path(gguf_file).name


def adapter_gguf(job_dir: Path, config: ExportJobConfig, base_dir: Path, out: Path) -> str:
    """The base's GGUF (cached once per base and quantization), the adapter GGUF and the Modelfile in `out`."""
    from llama_space.export import gguf_base
    from llama_space.export.gguf_adapter import write_adapter_gguf
    from llama_space.export.ollama import write_modelfile

    cached, written = gguf_base.base_gguf(Path(config.cache_dir), config.model, base_dir, config.qtype,
                                          progress=Reporter(job_dir, "writing the base GGUF", 0, 0.9))
    log.info("base GGUF %s: %s", "written" if written else "reused from the cache", cached)
    Reporter(job_dir, "writing the adapter GGUF", 0.9, 0.1)
    adapter_file = write_adapter_gguf(Path(config.adapter_dir), base_dir, out / f"{config.adapter}-lora-f16.gguf")
    write_modelfile(gguf_base.link_into(cached, out), base_dir, out, adapter_file=adapter_file)
    return adapter_file.name


def _stop(signum, frame):
    raise Cancelled


def main(job_dir: Path) -> int:
    """Run the export in `job_dir`, recording how it ended in status.json."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stdout)
    signal.signal(signal.SIGTERM, _stop)
    jobfiles.update_status(job_dir, state="running", stage="reading the base", pid=os.getpid(),
                           started=time.time())
    try:
        config = ExportJobConfig.read(job_dir)
        if (job_dir / jobfiles.CANCEL_FILE).exists():
            raise Cancelled
        download = export(job_dir, config)
    except (Cancelled, UserError, Exception) as exc:  # noqa: BLE001 - every ending is recorded, then it exits
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second cancel must not cut the clean-up short
        shutil.rmtree(job_dir / SCRATCH_DIR, ignore_errors=True)
        shutil.rmtree(job_dir / OUT_DIR, ignore_errors=True)
        jobfiles.update_status(job_dir, **_ending(exc), finished=time.time(), files=[], download=None)
        return 0 if isinstance(exc, Cancelled) else 1
    files = sorted(p.name + ("/" if p.is_dir() else "") for p in (job_dir / OUT_DIR).iterdir())
    jobfiles.update_status(job_dir, state="completed", stage="done", progress=1.0, files=files, download=download,
                           error=None, finished=time.time())
    log.info("export complete: %s", ", ".join(files))
    return 0


def _ending(exc: BaseException) -> dict:
    if isinstance(exc, Cancelled):
        log.info("cancelled")
        return {"state": "cancelled", "error": None}
    if isinstance(exc, UserError):
        log.error("%s", exc)
        return {"state": "failed", "error": str(exc)}
    log.exception("the export failed")
    return {"state": "failed", "error": f"The export failed ({type(exc).__name__}); the export log ({LOG_FILE}) "
                                        "has the details."}


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
