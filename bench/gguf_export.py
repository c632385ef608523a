"""GGUF export time and peak memory (llama_space/export/gguf.py) for each type, with an 8B estimate.

Each type is exported from the embedded SmolLM2-135M (fp32 safetensors checkpoint) in its own process, so its
peak RSS is its own; the baseline is that process's RSS after its imports (torch, transformers, gguf).

    .venv/bin/python bench/gguf_export.py                    # f16, bf16, q8_0, q4_0, q4_k_m, q5_k_m, q6_k
    .venv/bin/python bench/gguf_export.py --qtypes q8_0 --model path/to/merged

Peak memory is anonymous memory (RssAnon, sampled every 5 ms): RSS also counts the checkpoint's memory-mapped
pages, which the kernel drops at will. It ends with the Llama-3.1-8B estimate: time at the measured parameters
per second, and memory as the baseline plus the vocabulary's share scaled to Llama 3's plus the largest tensor
as read (bf16) and encoded, since the writer holds one tensor at a time (estimated, not measured: no 8B
checkpoint on this machine).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Self

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Llama-3.1-8B (DESIGN.md): the largest tensors are the 128256 x 4096 embedding and output head.
LLAMA_8B = {"params": 8.03e9, "largest": 128256 * 4096}


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _anon_mib() -> float:
    """This process's anonymous resident memory: RSS less the pages of mapped files (reclaimable cache)."""
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("RssAnon:"))
    return int(line.split()[1]) / 1024


class AnonPeak:
    """The highest RssAnon seen, sampled every 5 ms in a thread while the block runs."""

    def __enter__(self) -> Self:
        self.peak, self._done = _anon_mib(), threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._done.wait(0.005):
            self.peak = max(self.peak, _anon_mib())

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()
        self.peak = max(self.peak, _anon_mib())


def child(model: str, qtype: str, out_dir: str) -> None:
    """Export once in this process; print one JSON line."""
    import torch  # noqa: F401  (the imports count as baseline)
    import transformers  # noqa: F401
    from transformers import AutoConfig, AutoTokenizer  # noqa: F401

    from llama_space.export import gguf
    from llama_space.export.gguf_vocab import read_vocab

    baseline = _anon_mib()
    with AnonPeak() as vocab_peak:  # the tokenizer half alone: it scales with the vocabulary, not the weights
        vocab = read_vocab(Path(model), AutoConfig.from_pretrained(model).vocab_size)
    del vocab
    started = time.perf_counter()
    with AnonPeak() as peak:
        out = gguf.write_gguf(Path(model), Path(out_dir) / f"model-{qtype}.gguf", qtype)
    seconds = time.perf_counter() - started
    from safetensors import safe_open

    params, largest = 0, 0
    for file in Path(model).glob("*.safetensors"):
        with safe_open(file, framework="pt") as handle:
            for name in handle.keys():  # noqa: SIM118 - a safetensors handle, not a dict
                size = math.prod(handle.get_slice(name).get_shape())
                params, largest = params + size, max(largest, size)
    print(json.dumps({"qtype": qtype, "seconds": round(seconds, 2), "baseline_mib": round(baseline),
                      "peak_anon_mib": round(peak.peak), "vocab_mib": round(vocab_peak.peak - baseline),
                      "peak_rss_mib": round(_rss_mib()), "file_mib": round(out.stat().st_size / 2**20, 1),
                      "params": params, "largest": largest}))


def estimate_8b(row: dict) -> dict:
    """Time at the measured rate; anonymous peak = baseline + the vocabulary's share scaled to Llama 3's
    (128k tokens, 280k merges vs SmolLM2's 49k and 49k) + the largest tensor read in bf16 + encoded."""
    from gguf import GGML_QUANT_SIZES
    from gguf_kquants import llama_8b_shapes

    from llama_space.export.gguf_types import mix_bytes, tensor_type

    rate = row["params"] / row["seconds"]
    largest = LLAMA_8B["largest"]
    block, size = GGML_QUANT_SIZES[tensor_type("token_embd.weight", (128256, 4096), row["qtype"], 32, tied=False)]
    vocab = row["vocab_mib"] * (128256 + 280147) / (49152 + 48900)
    peak = row["baseline_mib"] + vocab + (largest * 2 + largest // block * size) / 2**20
    return {"qtype": row["qtype"], "minutes": round(LLAMA_8B["params"] / rate / 60, 1),
            "peak_anon_gib": round(peak / 1024, 1),
            "file_gib": round(mix_bytes(llama_8b_shapes(), row["qtype"], 32, tied=False) / 2**30, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="", help="merged model folder (default: the embedded checkpoint)")
    parser.add_argument("--qtypes", default="f16,bf16,q8_0,q4_0,q4_k_m,q5_k_m,q6_k")
    parser.add_argument("--child", nargs=3, metavar=("MODEL", "QTYPE", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(*args.child)
    model = args.model
    if not model:
        from llama_space.model.source import embedded_checkpoint

        model = embedded_checkpoint(REPO / "data" / "cache")
    rows = []
    with tempfile.TemporaryDirectory() as out_dir:
        for qtype in args.qtypes.split(","):
            result = subprocess.run([sys.executable, __file__, "--child", model, qtype, out_dir],
                                    capture_output=True, text=True, check=True)
            rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
            Path(out_dir, f"model-{qtype}.gguf").unlink()
    print("| type | seconds | peak anonymous MiB (baseline after imports; vocabulary alone) | peak RSS MiB "
          "(with mapped checkpoint pages) | file MiB |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['qtype']} | {row['seconds']} | {row['peak_anon_mib']} ({row['baseline_mib']}; "
              f"+{row['vocab_mib']}) | {row['peak_rss_mib']} | {row['file_mib']} |")
    print("\nLlama-3.1-8B estimate:")
    for row in rows:
        print(json.dumps(estimate_8b(row)))
    print(json.dumps({"rows": rows}))


if __name__ == "__main__":
    main()
