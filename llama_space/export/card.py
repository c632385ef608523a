"""The model card (README.md) pushed with an adapter, a merged model or a GGUF file: what it is and how to use it."""

from __future__ import annotations

import json

from llama_space.model import modelscope

KINDS = ("adapter", "merged", "gguf")
_LIBRARY = {"adapter": "peft", "merged": "transformers", "gguf": "gguf"}
_TRAINING_ROWS = [("dataset_name", "Dataset"), ("dataset_fingerprint", "Dataset fingerprint (SHA-256)"),
                  ("train_examples", "Training examples"), ("steps", "Optimizer steps"),
                  ("train_loss", "Final training loss"), ("eval_loss", "Held-out loss"),
                  ("base_quantization", "Base quantization while training"), ("created", "Trained")]


def model_card(kind: str, name: str, metadata: dict, repo_id: str, qtype: str = "", gguf_file: str = "") -> str:
    """The README.md for `repo_id` holding adapter `name` (kind adapter), its merged model or its GGUF file."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}")
    base = metadata.get("base_model") or "the base model"
    parts = [_front_matter(kind, base, qtype), f"# {repo_id.split('/')[-1]}\n", _summary(kind, name, base, qtype),
             _training(metadata), _hyperparameters(metadata.get("hyperparameters") or {}),
             _evaluation(metadata.get("evaluation")), _usage(kind, name, base, repo_id, gguf_file)]
    return "\n".join(part for part in parts if part)


def _front_matter(kind: str, base: str, qtype: str) -> str:
    tags = ["llama-space", "lora", "text-generation"] + (["gguf", qtype] if kind == "gguf" else [])
    # The Hub reads base_model as the id of a Hub model; a ModelScope base is named in the text only.
    named = [] if modelscope.is_modelscope(base) else [f"base_model: {json.dumps(base)}"]
    lines = ["---", *named, f"library_name: {_LIBRARY[kind]}",
             "pipeline_tag: text-generation", "tags:", *[f"- {tag}" for tag in tags], "---", ""]
    return "\n".join(lines)


def _summary(kind: str, name: str, base: str, qtype: str) -> str:
    what = {"adapter": f"A LoRA adapter, `{name}`, for `{base}`",
            "merged": f"`{base}` with the LoRA adapter `{name}` merged into its weights (the base's dtype)",
            "gguf": f"`{base}` with the LoRA adapter `{name}` merged in, as a GGUF file quantized to {qtype.upper()}"}
    return f"{what[kind]}, fine-tuned and exported with Llama Space.\n"


def _training(metadata: dict) -> str:
    rows = [(label, metadata[key]) for key, label in _TRAINING_ROWS if metadata.get(key) not in (None, "")]
    return "## Training\n\n" + _table(("", ""), rows) if rows else ""


def _hyperparameters(hyper: dict) -> str:
    rows = sorted((key, value) for key, value in hyper.items() if value is not None)
    return "## Hyperparameters\n\n" + _table(("Parameter", "Value"), rows) if rows else ""


_EVAL_FIGURES = ("loss", "perplexity", "exact_match", "contains", "reward_accuracy", "reward_margin")
_EVAL_CONTEXT = (("source", "Evaluated on"), ("examples", "Examples"), ("references", "Reference answers"),
                 ("dataset_fingerprint", "Evaluation data fingerprint (SHA-256)"), ("created", "Evaluated"))


def _evaluation(evaluation) -> str:
    """The figures service/evaluate.py saved: each one for this model beside the base's, then what it ran on."""
    if not isinstance(evaluation, dict) or not evaluation:
        return "## Evaluation\n\nNo evaluation was recorded for this adapter.\n"
    base = evaluation.get("base") if isinstance(evaluation.get("base"), dict) else {}
    figures = [(key, evaluation.get(key), base.get(key)) for key in _EVAL_FIGURES
               if evaluation.get(key) is not None or base.get(key) is not None]
    context = [(label, evaluation[key]) for key, label in _EVAL_CONTEXT if evaluation.get(key) not in (None, "")]
    parts = ["## Evaluation\n", _table(("Figure", "This model", "Base model"),
                                       [(k, "" if a is None else a, "" if b is None else b) for k, a, b in figures])]
    if context:
        parts.append(_table(("", ""), context))
    return "\n".join(parts)


def _table(header: tuple, rows: list[tuple]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    text = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _usage(kind: str, name: str, base: str, repo_id: str, gguf_file: str) -> str:
    fetch = ""
    if modelscope.is_modelscope(base):  # the commands below take a folder in place of the ModelScope id
        repo, base = base.removeprefix(modelscope.PREFIX), "./base-model"
        fetch = (f"The base model is `{repo}` on ModelScope: `modelscope download {repo} --local-dir base-model` "
                 f"(`pip install modelscope`) puts it in the folder `{base}` that the commands below load.\n\n")
    return "## How to use it\n\n" + fetch + {"adapter": _adapter_usage, "merged": _merged_usage,
                                               "gguf": _gguf_usage}[kind](name, base, repo_id, gguf_file)


def _adapter_usage(name: str, base: str, repo_id: str, _gguf: str) -> str:
    return f"""With transformers and PEFT:

```python
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("{base}")
model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained("{base}", dtype="auto"), "{repo_id}")
messages = [{{"role": "user", "content": "Hello!"}}]
ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
print(tokenizer.decode(model.generate(ids, max_new_tokens=128)[0, ids.shape[1]:], skip_special_tokens=True))
```

`model.merge_and_unload()` folds the adapter into the weights. With vLLM, serve the base and this adapter by name
(OpenAI-compatible; ask for `"model": "{name}"`):

```bash
vllm serve {base} --enable-lora --lora-modules {name}={repo_id}
```

For Ollama or llama.cpp, export the adapter as GGUF in Llama Space (Export tab, kind "gguf"): it writes the
GGUF file and an Ollama `Modelfile` (`ollama create {name} -f Modelfile`, then `ollama run {name}`).
"""


def _merged_usage(name: str, base: str, repo_id: str, _gguf: str) -> str:
    return f"""A full model: no PEFT needed.

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("{repo_id}")
model = AutoModelForCausalLM.from_pretrained("{repo_id}", dtype="auto")
messages = [{{"role": "user", "content": "Hello!"}}]
ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
print(tokenizer.decode(model.generate(ids, max_new_tokens=128)[0, ids.shape[1]:], skip_special_tokens=True))
```

With vLLM (or TGI, `--model-id {repo_id}`), OpenAI-compatible:

```bash
vllm serve {repo_id}
```

The unmerged adapter runs on the base with `vllm serve {base} --enable-lora --lora-modules {name}=<adapter repo>`.
For Ollama, export it as GGUF in Llama Space (Export tab, kind "gguf").
"""


def _gguf_usage(name: str, base: str, repo_id: str, gguf_file: str) -> str:
    file = gguf_file or "the .gguf file"
    return f"""With Ollama, straight from the Hub:

```bash
ollama run hf.co/{repo_id}
```

or from the downloaded files (`Modelfile` holds the chat template and stop tokens):

```bash
ollama create {name} -f Modelfile
ollama run {name}
```

With llama.cpp's OpenAI-compatible server:

```bash
llama-server -m {file} --port 8080
```

For transformers, `AutoModelForCausalLM.from_pretrained("{repo_id}", gguf_file="{file}")` dequantizes it; vLLM
serves the merged safetensors model or `{base}` with the adapter (`--lora-modules`) better than a GGUF file.
"""
