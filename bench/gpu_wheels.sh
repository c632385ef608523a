#!/usr/bin/env bash
# Gathers into dist/gpu-wheels/ (ignored by git) exactly the wheels bench/gpu_check.py needs on a lent GPU machine,
# and checks that they fit in what one device call may carry (64 MiB).
#
# The lent machines (one H100 or H200, no network) have Python 3.12, torch 2.11, transformers 5.17, accelerate
# 1.15, peft, safetensors, tokenizers, numpy, pandas, pyarrow, psutil and tensorboard, and no gradio, datasets,
# bitsandbytes, gguf, trl or embedded model package; the check needs none of those. Our code does not run on
# transformers 5.17 (its TrainingArguments has no activation_checkpointing, its prefill cache layers differ), so:
# - transformers and peft at requirements.txt's pins;
# - huggingface_hub 1.33.0, the last 1.x: transformers 5.24 needs >= 1.31, the machine's (under transformers
#   5.17's < 2.0) may be older, and requirements.txt's 2.x would bring its own HTTP stack (httpx2) along.
# Their other requirements (tokenizers 0.23, safetensors >= 0.8, accelerate, httpx, ...) are the machine's own.
#
# Run the check on the device from the repository root, carrying dist/gpu-wheels (one line):
#   python3 -m pip install -q --no-deps --no-index --target /tmp/gpu-site dist/gpu-wheels/*.whl && PYTHONPATH=/tmp/gpu-site python3 bench/gpu_check.py --json-out "$OUT/gpu_check.json"
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
OUT=dist/gpu-wheels
LIMIT=$((64 * 1024 * 1024))

pins=$(grep -E '^(transformers|peft)==' requirements.txt)
rm -rf "$OUT"
mkdir -p "$OUT"
# shellcheck disable=SC2086 # one argument per pin
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --platform manylinux2014_x86_64 --dest "$OUT" $pins huggingface_hub==1.33.0

total=$(du -cb "$OUT"/*.whl | tail -1 | cut -f1)
ls -l "$OUT"
echo "total: $total bytes ($((total / 1024 / 1024)) MiB of the $((LIMIT / 1024 / 1024)) MiB a call may carry)"
if [ "$total" -gt "$LIMIT" ]; then
    echo "too large to carry in one call" >&2
    exit 1
fi
echo 'on the device (carry ["dist/gpu-wheels"]):'
echo '  python3 -m pip install -q --no-deps --no-index --target /tmp/gpu-site dist/gpu-wheels/*.whl && PYTHONPATH=/tmp/gpu-site python3 bench/gpu_check.py --json-out "$OUT/gpu_check.json"'
