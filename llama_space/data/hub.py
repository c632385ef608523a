"""Instruction data from the Hugging Face Hub or ModelScope: one split loaded with `datasets.load_dataset` and
written as a JSONL file, which is then validated, previewed and copied into a job exactly like an uploaded file.

A Hub split is streamed, so a huge dataset is refused at the upload size limit instead of being downloaded
whole. `HF_TOKEN` (read by huggingface_hub itself) opens private and gated datasets. A folder
`<local_root>/<owner>/<name>` holding data files stands in for that Hub dataset (an offline machine's copy).

A ModelScope dataset, `modelscope:<owner>/<name>`, is a repository of data files: its data files are downloaded
into the app's cache (model/modelscope.py; refused before anything is fetched when together they pass the upload
size limit) and that folder is read like a stand-in folder. A copy already in the cache is read offline.

Only `owner/name` ids are taken. `load_dataset` reads a name without an owner that is one of its packaged
builders ("json", "csv", "text", "parquet", "imagefolder", ...) as that builder over the data files of the
working directory (its train/ and test/ folders), and each `datasets` release adds builders; an owner is
what no builder name has.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from llama_space.errors import UserError
from llama_space.model import modelscope

log = logging.getLogger(__name__)

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")
_NAME = re.compile(r"^[\w.-]{1,128}$")
_REVISION = re.compile(r"^[\w.-]+(/[\w.-]+)*$")
PRIVATE_HINT = "if it is private or gated, the server needs an HF_TOKEN that may read it"
# The files of a ModelScope dataset that hold data (and the README.md whose front matter may name configurations
# and splits); ModelScope's own configuration.json would be read as a data file.
MODELSCOPE_DATA_FILES = ["README.md", "*.json", "*.jsonl", "*.csv", "*.parquet"]
MODELSCOPE_NOT_DATA = ["configuration.json", "*/configuration.json"]


@dataclass(frozen=True)
class HubDataset:
    """Which data to read: a Hub dataset id, its configuration (subset), split and revision."""

    dataset_id: str  # "owner/name" on the Hub, "modelscope:owner/name" on ModelScope
    config: str = ""  # the configuration (subset); empty = the dataset's default
    split: str = "train"  # the split to read
    revision: str = ""  # branch, tag or commit; empty = main (master on ModelScope)

    def __post_init__(self) -> None:
        for name in ("dataset_id", "config", "split", "revision"):
            object.__setattr__(self, name, (getattr(self, name) or "").strip())
        if self.on_modelscope:
            modelscope.repo_id(self.dataset_id, "dataset")
        elif not _REPO_ID.match(self.dataset_id) or ".." in self.dataset_id:
            raise UserError(f"dataset_id must be a Hub dataset id such as 'owner/name', owner included (a name "
                            "alone, such as 'json', is a loader of files on this server, not a Hub dataset), or "
                            f"modelscope:owner/name for ModelScope; got {self.dataset_id!r}")
        if self.config and not _NAME.match(self.config):
            raise UserError(f"dataset_config must be a configuration name (letters, digits, '_', '-', '.'), "
                            f"got {self.config!r}")
        if not _NAME.match(self.split or "-"):
            raise UserError(f"dataset_split must be a split name such as 'train', got {self.split!r}")
        if self.revision and (not _REVISION.match(self.revision) or ".." in self.revision):
            raise UserError(f"dataset_revision must be a branch, tag or commit, got {self.revision!r}")

    def __str__(self) -> str:
        config = f" ({self.config})" if self.config else ""
        return f"{self.dataset_id}{config}, split {self.split}" + (f" @ {self.revision}" if self.revision else "")

    @property
    def on_modelscope(self) -> bool:
        return modelscope.is_modelscope(self.dataset_id)

    @property
    def file_name(self) -> str:
        """A JSONL file name that says where the rows came from (shown in reports and adapter metadata)."""
        return re.sub(r"[^\w.-]+", "_", f"{self.dataset_id}-{self.config or 'default'}-{self.split}") + ".jsonl"


def hub_dataset(dataset_id: str | None, config: str = "", split: str = "train",
                revision: str = "") -> HubDataset | None:
    """The Hub dataset that form fields or endpoint parameters name; None when no id is given."""
    if not dataset_id or not dataset_id.strip():
        return None
    return HubDataset(dataset_id, config or "", split or "train", revision or "")


def _location(source: HubDataset, local_root: Path | None, cache_dir: Path | None, max_bytes: int) -> str:
    """What load_dataset reads: the local stand-in folder if there is one, the ModelScope dataset's folder in the
    cache (fetched first if it is not there), else the Hub id."""
    if source.on_modelscope:
        return str(_modelscope_folder(source, cache_dir, max_bytes))
    if local_root is not None and (local := Path(local_root) / source.dataset_id).is_dir():
        return str(local.resolve())
    if Path(source.dataset_id).exists():
        # load_dataset prefers a folder of that name in the working directory over the Hub: never read server
        # files because a request named them.
        raise UserError(f"{source.dataset_id!r} cannot be read from the Hub on this server; use another id "
                        "or upload the data as a file.")
    return source.dataset_id


def _modelscope_folder(source: HubDataset, cache_dir: Path | None, max_bytes: int) -> Path:
    """The snapshot folder of a ModelScope dataset in the app's cache, downloaded when it is not there yet."""
    if cache_dir is None:
        raise UserError("ModelScope datasets are not available here (the app has no cache folder).")
    repo = modelscope.repo_id(source.dataset_id, "dataset")
    folder = modelscope.cached(repo, "dataset", cache_dir, source.revision)
    if folder is not None:
        return folder

    def within_limit(files: list[tuple[str, int]]) -> list[str]:
        from fnmatch import fnmatch

        data = [(path, size) for path, size in files if any(fnmatch(path, p) for p in MODELSCOPE_DATA_FILES)
                and not any(fnmatch(path, p) for p in MODELSCOPE_NOT_DATA)]
        if sum(size for _, size in data) > max_bytes:
            raise UserError(f"Dataset {source.dataset_id!r} holds more than the {max_bytes // 2**20} MB limit for "
                            "training data in data files; choose a smaller dataset or upload a file.")
        if not any(path.endswith((".json", ".jsonl", ".csv", ".parquet")) for path, _ in data):
            raise UserError(f"Dataset {source.dataset_id!r} has no JSON, JSONL, CSV or Parquet data files.")
        return [path for path, _ in data]

    return modelscope.download(repo, "dataset", cache_dir, revision=source.revision, select=within_limit)


def _failure(source: HubDataset, exc: Exception) -> UserError:
    """A message that says what to fix; the raw exception text (which can carry paths and URLs) stays in the log."""
    from datasets.exceptions import DatasetNotFoundError
    from huggingface_hub.errors import OfflineModeIsEnabled

    log.info("could not load %s: %r", source, exc)
    if isinstance(exc, DatasetNotFoundError):
        return UserError(f"Dataset {source.dataset_id!r} was not found on the Hugging Face Hub "
                         f"({PRIVATE_HINT}); check the id.")
    if isinstance(exc, (OfflineModeIsEnabled, ConnectionError, TimeoutError)):
        return UserError(f"Dataset {source.dataset_id!r} could not be fetched: the Hugging Face Hub is not "
                         "reachable from this server (offline). Upload the data as a file instead.")
    if isinstance(exc, (ValueError, KeyError)):
        where = f" in configuration {source.config!r}" if source.config else ""
        return UserError(f"Dataset {source.dataset_id!r} has no split {source.split!r}{where}; check "
                         "dataset_config and dataset_split.")
    if isinstance(exc, FileNotFoundError):
        default = "master" if source.on_modelscope else "main"
        return UserError(f"Dataset {source.dataset_id!r} (revision {source.revision or default!r}) has no data "
                         f"files for {source.config or 'its default configuration'}, split {source.split!r}.")
    return UserError(f"Dataset {source.dataset_id!r} could not be read ({type(exc).__name__}); "
                     f"check the id, configuration and split ({PRIVATE_HINT}).")


def load_split(source: HubDataset, dest_dir: str | Path, max_bytes: int, local_root: Path | None = None,
               cache_dir: Path | None = None) -> Path:
    """Write the rows of `source`'s split to a JSONL file in `dest_dir`; refused past `max_bytes`.

    `local_root` holds stand-in folders of Hub datasets; `cache_dir` is the app's cache, where ModelScope datasets
    are downloaded.
    """
    import datasets

    revision = None if source.on_modelscope else source.revision or None  # the folder is that revision already
    try:
        rows = datasets.load_dataset(_location(source, local_root, cache_dir, max_bytes), source.config or None,
                                     split=source.split, revision=revision, streaming=True)
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - every loader failure becomes a message that says what to fix
        raise _failure(source, exc) from None
    target = Path(dest_dir) / source.file_name
    try:
        written = _write_jsonl(rows, target, max_bytes, source)
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - rows that fail while streaming: a damaged or mixed-up data file
        log.info("could not read the rows of %s: %r", source, exc)
        raise UserError(f"Dataset {source}: its data files could not be read ({type(exc).__name__}); check "
                        "they are valid JSON, CSV or Parquet of one layout.") from None
    if written == 0:
        raise UserError(f"Dataset {source} has no rows.")
    return target


def _write_jsonl(rows, target: Path, max_bytes: int, source: HubDataset) -> int:
    """Stream `rows` into `target` as JSON lines; returns the bytes written."""
    written = 0
    with target.open("w", encoding="utf-8") as out:
        for row in rows:
            line = json.dumps(row, ensure_ascii=False, default=str) + "\n"
            written += len(line.encode("utf-8"))
            if written > max_bytes:
                raise UserError(f"Dataset {source} is larger than the {max_bytes // 2**20} MB limit for training "
                                "data; choose a smaller split or configuration.")
            out.write(line)
    return written
