"""The Ollama Modelfile beside a GGUF: ChatML and Llama 3 templates in Go syntax, stop tokens, the README."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from llama_space.errors import UserError
from llama_space.export.ollama import CHATML, LLAMA3, ollama_name, template_family, write_modelfile


def _out(tmp_path: Path, name: str = "model-q8_0.gguf") -> tuple[Path, Path]:
    # write_modelfile only points at the GGUF; its contents are tested in test_gguf_export.
    out = tmp_path / "export"
    out.mkdir()
    gguf_file = out / name
    gguf_file.write_bytes(b"GGUF")
    return gguf_file, out


def _parse(modelfile: Path) -> tuple[str, str | None, str | None, list[str]]:
    text = modelfile.read_text(encoding="utf-8")
    source = re.search(r"^FROM (.+)$", text, re.MULTILINE).group(1)
    template = re.search(r'^TEMPLATE """(.*?)"""', text, re.MULTILINE | re.DOTALL)
    system = re.search(r'^SYSTEM """(.*?)"""', text, re.MULTILINE | re.DOTALL)
    stops = re.findall(r'^PARAMETER stop "(.*)"$', text, re.MULTILINE)
    return source, template and template.group(1), system and system.group(1), stops


def _balanced(template: str) -> bool:
    """Every {{ if }} and {{ range }} has its {{ end }}, in order."""
    depth = 0
    for action in re.findall(r"\{\{-?\s*(if|range|end)\b", template):
        depth += -1 if action == "end" else 1
        if depth < 0:
            return False
    return depth == 0


def test_chatml_modelfile_for_smollm2(tiny_model_dir, tmp_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert template_family(tokenizer.chat_template) == CHATML
    gguf_file, out = _out(tmp_path)
    modelfile = write_modelfile(gguf_file, tiny_model_dir, out)
    assert modelfile == out / "Modelfile"
    source, template, system, stops = _parse(modelfile)
    assert source == "./model-q8_0.gguf"
    # Each turn is <|im_start|>role, newline, content, <|im_end|>; the reply opens an assistant turn.
    assert "<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n" in template
    assert "{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n" in template.replace("{{- ", "{{ ")
    assert template.endswith("<|im_start|>assistant\n")
    assert _balanced(template)
    # SmolLM2's template adds its own system turn to conversations without one: that becomes SYSTEM.
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert system and f"<|im_start|>system\n{system}<|im_end|>" in rendered
    assert stops == ["<|im_end|>"]


def test_llama3_modelfile(llama31_model_dir, tmp_path):
    from transformers import AutoTokenizer

    from llama31 import DATED

    tokenizer = AutoTokenizer.from_pretrained(llama31_model_dir)
    assert template_family(tokenizer.chat_template) == LLAMA3
    gguf_file, out = _out(tmp_path, "llama.gguf")
    _, template, system, stops = _parse(write_modelfile(gguf_file, llama31_model_dir, out))
    turn = "<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>"
    assert turn in template
    # The system turn carries the dated block the real template always writes, then the system prompt.
    assert f"<|start_header_id|>system<|end_header_id|>\n\n{DATED}{{{{ .System }}}}<|eot_id|>" in template
    assert template.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n") and _balanced(template)
    # The GGUF's tokenizer adds <|begin_of_text|> (add_bos_token), so the template must not write it again.
    assert "<|begin_of_text|>" not in template
    assert system is None
    assert stops == ["<|eot_id|>", "<|end_of_text|>"]  # end of turn, then EOS from the generation config


def test_other_templates_get_no_template_and_a_note(tiny_model_dir, tmp_path):
    model_dir = tmp_path / "other"
    shutil.copytree(tiny_model_dir, model_dir)
    (model_dir / "chat_template.jinja").write_text(
        "{% for m in messages %}### {{ m['role'] }}: {{ m['content'] }}\n{% endfor %}### assistant:")
    gguf_file, out = _out(tmp_path)
    modelfile = write_modelfile(gguf_file, model_dir, out)
    _, template, _, stops = _parse(modelfile)
    assert template is None
    assert "# The model's chat template is neither ChatML nor Llama 3" in modelfile.read_text()
    assert stops == ["<|im_end|>"]  # EOS still stops
    assert "no TEMPLATE" in (out / "README.md").read_text()
    assert template_family(None) is None


def test_readme_has_the_commands(tiny_model_dir, tmp_path):
    gguf_file, out = _out(tmp_path, "My Model-Q8_0.gguf")
    write_modelfile(gguf_file, tiny_model_dir, out)
    readme = (out / "README.md").read_text()
    name = ollama_name(gguf_file.name)
    assert name == "my-model-q8_0"
    for command in (f"ollama create {name} -f Modelfile", f"ollama run {name}",
                    "llama-server -m 'My Model-Q8_0.gguf' --port 8080",
                    "python app.py --backend-url http://127.0.0.1:8080/v1"):
        assert command in readme


def test_modelfile_beside_another_folder_points_back(tiny_model_dir, tmp_path):
    gguf_file, _ = _out(tmp_path)
    source, *_ = _parse(write_modelfile(gguf_file, tiny_model_dir, tmp_path / "elsewhere"))
    assert source == "../export/model-q8_0.gguf"
    with pytest.raises(UserError, match="GGUF file first"):
        write_modelfile(tmp_path / "missing.gguf", tiny_model_dir, tmp_path)


def test_plain_llama3_template_writes_the_system_turn_only_when_given():
    from llama_space.export.ollama import chat_format

    from llama31 import TEMPLATE

    # Llama 3.0's format: no dated block; a tokenizer that does not add BOS gets it from the template.
    plain = TEMPLATE.replace("Cutting Knowledge Date: December 2023\\nToday Date: ' + date_string + '\\n\\n", "")
    assert "Cutting Knowledge" not in plain
    chat = chat_format(plain, add_bos=False, stops=["<|end_of_text|>"])
    assert chat.family == LLAMA3 and _balanced(chat.template)
    assert chat.template.startswith("<|begin_of_text|>{{- if .System }}<|start_header_id|>system<|end_header_id|>"
                                    "\n\n{{ .System }}<|eot_id|>\n{{- end }}")
    assert chat.stops == ["<|eot_id|>", "<|end_of_text|>"]
