"""An Ollama Modelfile and a README beside an exported GGUF: the chat template in Ollama's Go template syntax."""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from llama_space.errors import UserError

log = logging.getLogger(__name__)

CHATML, LLAMA3 = "chatml", "llama3"
END_OF_TURN = {CHATML: "<|im_end|>", LLAMA3: "<|eot_id|>"}
# Meta's Llama 3.1 template writes this block into every system turn; its default date is 26 Jul 2024.
LLAMA31_DATED = "Cutting Knowledge Date: {knowledge}\nToday Date: {today}\n\n"

CHATML_TEMPLATE = """{{- if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}
{{- range .Messages }}{{ if ne .Role "system" }}<|im_start|>{{ .Role }}
{{ .Content }}<|im_end|>
{{ end }}{{ end }}<|im_start|>assistant
"""
LLAMA3_SYSTEM = "<|start_header_id|>system<|end_header_id|>\n\n{dated}{{ .System }}<|eot_id|>"
LLAMA3_TURNS = """
{{- range .Messages }}{{ if ne .Role "system" }}<|start_header_id|>{{ .Role }}<|end_header_id|>

{{ .Content }}<|eot_id|>
{{- end }}{{ end }}<|start_header_id|>assistant<|end_header_id|>

"""


@dataclass
class ChatFormat:
    """What the Modelfile needs to know about the model's chat template."""

    family: str | None  # CHATML, LLAMA3, or None when the template is neither
    template: str | None  # the Go template, or None
    system: str | None  # the default system message the Jinja template inserts, if any
    stops: list[str]


def template_family(jinja: str | None) -> str | None:
    """CHATML or LLAMA3 from the Jinja chat template's text, or None for any other format."""
    if not jinja:
        return None
    if "<|im_start|>" in jinja and "<|im_end|>" in jinja:
        return CHATML
    if "<|start_header_id|>" in jinja and "<|end_header_id|>" in jinja and "<|eot_id|>" in jinja:
        return LLAMA3
    return None


def write_modelfile(gguf_file: Path, model_dir: Path, out_dir: Path, adapter_file: Path | None = None) -> Path:
    """Write `out_dir`/Modelfile (FROM the GGUF, ADAPTER the LoRA adapter GGUF if any, TEMPLATE, stops) and
    README.md; returns the Modelfile."""
    gguf_file, out_dir = Path(gguf_file), Path(out_dir)
    if not gguf_file.is_file() or (adapter_file is not None and not Path(adapter_file).is_file()):
        raise UserError("Export the GGUF file first; the Modelfile points at it (and at the adapter GGUF, if any).")
    jinja, add_bos, stops = _chat_facts(Path(model_dir))
    chat = chat_format(jinja, add_bos, stops)
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = [f"FROM {_relative(gguf_file, out_dir)}"]
    if adapter_file is not None:
        lines.append(f"ADAPTER {_relative(Path(adapter_file), out_dir)}")
    lines.append("")
    if chat.template is None:
        note = ("The model's chat template is neither ChatML nor Llama 3, so this Modelfile has no TEMPLATE: "
                "Ollama will use the template stored in the GGUF's metadata if it recognises it. Write a "
                "TEMPLATE block by hand if replies look wrong.")
        log.warning("Ollama export: %s", note)
        lines += [f"# {note}", ""]
    else:
        lines += [f'TEMPLATE """{chat.template}"""', ""]
    if chat.system:
        lines += [f'SYSTEM """{chat.system}"""', ""]
    lines += [f'PARAMETER stop "{stop}"' for stop in chat.stops]
    modelfile = out_dir / "Modelfile"
    modelfile.write_text("\n".join(lines) + "\n", encoding="utf-8")
    adapter_name = Path(adapter_file).name if adapter_file is not None else None
    (out_dir / "README.md").write_text(_readme(gguf_file.name, chat, adapter_name), encoding="utf-8")
    return modelfile


def _relative(path: Path, out_dir: Path) -> str:
    relative = Path(os.path.relpath(path, out_dir)).as_posix()
    return relative if relative.startswith("..") else f"./{relative}"


def chat_format(jinja: str | None, add_bos: bool, stops: list[str]) -> ChatFormat:
    """The Go template, default system message and stop tokens for a Jinja chat template."""
    family = template_family(jinja)
    if family is None:
        return ChatFormat(None, None, None, stops)
    stops = list(dict.fromkeys([END_OF_TURN[family], *stops]))
    if family == CHATML:
        return ChatFormat(family, CHATML_TEMPLATE, _chatml_default_system(jinja), stops)
    dated = ""
    if "Cutting Knowledge Date" in jinja:
        knowledge = re.search(r"Cutting Knowledge Date: ([^\\'\"\n]+)", jinja)
        today = re.search(r"date_string\s*=\s*['\"]([^'\"]+)['\"]", jinja)
        dated = LLAMA31_DATED.format(knowledge=knowledge.group(1) if knowledge else "December 2023",
                                     today=today.group(1) if today else "26 Jul 2024")
    # The tokenizer adds <|begin_of_text|> itself when the GGUF says so; write it only when it does not.
    bos = "<|begin_of_text|>" if "bos_token" in jinja and not add_bos else ""
    system = LLAMA3_SYSTEM.replace("{dated}", dated)
    # Meta's 3.1 template writes the system turn (with its dates) always; plain Llama 3 only with a system prompt.
    head = system if dated else f"{{{{- if .System }}}}{system}\n{{{{- end }}}}"
    return ChatFormat(family, bos + head + LLAMA3_TURNS, None, stops)


def _chatml_default_system(jinja: str) -> str | None:
    # SmolLM2's template inserts its own system turn when the conversation has none.
    match = re.search(r"messages\[0\]\['role'\] != 'system' %\}\{\{ '<\|im_start\|>system\n(.*?)<\|im_end\|>",
                      jinja, re.DOTALL)
    return match.group(1) if match else None


def _chat_facts(model_dir: Path) -> tuple[str | None, bool, list[str]]:
    """The chat template, whether the tokenizer adds BOS, and the stop tokens (EOS and the generation
    config's end-of-sequence tokens), read from the model folder the GGUF was written from."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    except (OSError, ValueError) as exc:
        raise UserError("The model folder has no tokenizer that loads; the Modelfile needs its chat template.") from exc
    ids = tokenizer("a")["input_ids"]
    add_bos = tokenizer.bos_token_id is not None and bool(ids) and ids[0] == tokenizer.bos_token_id
    stops = [tokenizer.eos_token] if tokenizer.eos_token else []
    config_file = model_dir / "generation_config.json"
    if config_file.is_file():
        eos = json.loads(config_file.read_text(encoding="utf-8")).get("eos_token_id")
        eos = eos if isinstance(eos, list) else [eos] if isinstance(eos, int) else []
        stops += [token for token in tokenizer.convert_ids_to_tokens(eos) if token]
    return tokenizer.chat_template, add_bos, list(dict.fromkeys(stops))


def ollama_name(gguf_name: str) -> str:
    """A model name Ollama accepts, from the GGUF file name."""
    return re.sub(r"[^a-z0-9._-]+", "-", Path(gguf_name).stem.lower()).strip("-.") or "llama-space-model"


def _readme(gguf_name: str, chat: ChatFormat, adapter_name: str | None = None) -> str:
    name = ollama_name(adapter_name or gguf_name)
    template_note = (f"The Modelfile's TEMPLATE is the model's {chat.family} chat format in Ollama's syntax."
                     if chat.family else
                     "The model's chat template is neither ChatML nor Llama 3, so the Modelfile has no TEMPLATE; "
                     "Ollama falls back to the template in the GGUF's metadata. Add one by hand if needed.")
    if adapter_name:
        what = (f"`{adapter_name}` (a llama.cpp LoRA adapter GGUF), its base model `{gguf_name}` (GGUF, with the "
                "tokenizer and chat template in its metadata; every adapter of this base uses the same file) and an "
                "Ollama `Modelfile` that applies the adapter to the base (`FROM` the base, `ADAPTER` the adapter).")
        serve = f"llama-server -m {shlex.quote(gguf_name)} --lora {shlex.quote(adapter_name)} --port 8080"
    else:
        what = (f"`{gguf_name}` (GGUF, with the tokenizer and chat template in its metadata) and an Ollama "
                "`Modelfile`.")
        serve = f"llama-server -m {shlex.quote(gguf_name)} --port 8080"
    return f"""# {adapter_name or gguf_name}

Exported by Llama Space: {what} {template_note}

## Ollama

```bash
ollama create {name} -f Modelfile
ollama run {name}
```

## llama.cpp, and chatting through Llama Space

```bash
{serve}
python app.py --backend-url http://127.0.0.1:8080/v1
```

`llama-server` speaks the OpenAI API at `/v1`; `--backend-url` (or `LLAMA_SPACE_BACKEND_URL`) makes every
Llama Space surface (browser, `/chat`, `/generate`, `POST /`, `/v1`) chat through it.
"""
