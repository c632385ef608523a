"""K-quant GGUF export: error and speed of each block format, file size and time of each export type, 8B estimate.

    .venv/bin/python bench/gguf_kquants.py                 # every type, the embedded SmolLM2-135M
    .venv/bin/python bench/gguf_kquants.py --qtypes q4_k_m,q8_0 --model path/to/merged

1. Formats: relative RMS error (error RMS / weight RMS) and CPU time per weight of each block format on three
   sets: the embedded model's embedding (stored at Q8_0 in the file it ships as: finer than any format here), its
   ffn_down matrices (stored at Q4_1: already on a 16-level grid per 32 weights, which flatters Q4_1 and the
   formats with 32-weight sub-blocks and a min) and Gaussian weights. Q4_K, Q5_K, Q6_K are llama_space/export/
   kquants.py; the others the gguf package's encoders.
2. Exports: `write_gguf` of the model for each type, each in a fresh process: wall and CPU seconds, file size and
   the tensor types the mix chose.
3. Llama-3.1-8B: the file size of each mix over its tensor shapes (gguf_types.mix_bytes, tensor data only), and
   the encoding time as each type's weights times its measured CPU time per weight (estimated, not measured: no
   8B checkpoint on this machine; reading 16 GB of bf16 from disk comes on top).
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
FORMATS = ("Q8_0", "Q6_K", "Q5_1", "Q5_K", "Q5_0", "Q4_1", "Q4_K", "Q4_0")
QTYPES = ("f16", "q8_0", "q6_k", "q5_k_m", "q4_k_m", "q4_0")


def llama_8b_shapes() -> dict[str, tuple[int, ...]]:
    """Llama-3.1-8B's tensors by llama.cpp name (DESIGN.md: hidden 4096, intermediate 14336, 32 layers, 8 KV
    heads of 128, vocabulary 128256, head untied)."""
    shapes = {"token_embd.weight": (128256, 4096), "output.weight": (128256, 4096), "output_norm.weight": (4096,)}
    parts = {"attn_q": (4096, 4096), "attn_k": (1024, 4096), "attn_v": (1024, 4096), "attn_output": (4096, 4096),
             "ffn_gate": (14336, 4096), "ffn_up": (14336, 4096), "ffn_down": (4096, 14336), "attn_norm": (4096,),
             "ffn_norm": (4096,)}
    for layer in range(32):
        shapes |= {f"blk.{layer}.{part}.weight": shape for part, shape in parts.items()}
    return shapes


def encode(rows, name: str):
    """`rows` as bytes of block format `name`, and the CPU seconds it took."""
    from gguf import GGMLQuantizationType
    from gguf.quants import quantize

    from llama_space.export import kquants

    kind = GGMLQuantizationType[name]
    started = time.process_time()
    data = (kquants.quantize if name in kquants.TYPES else quantize)(rows, kind)
    return data, time.process_time() - started


def formats(model: Path) -> dict[str, dict]:
    """Relative RMS error on each set and CPU ns per weight, for each block format."""
    import numpy as np
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize
    from safetensors import safe_open

    with safe_open(model / "model.safetensors", "np") as handle:
        keys = list(handle.keys())
        embedding = handle.get_slice("model.embed_tokens.weight")[:16384].astype(np.float32).reshape(-1, 1536)
        down = np.concatenate([handle.get_tensor(k).astype(np.float32) for k in keys if "down_proj" in k])
    gaussian = np.random.default_rng(0).standard_normal((4096, 1024)).astype(np.float32)
    sets = {"embedding": embedding, "ffn_down": down, "gaussian": gaussian}
    rows = {}
    for name in FORMATS:
        errors, seconds, weights = {}, 0.0, 0
        for label, x in sets.items():
            data, took = encode(x, name)
            decoded = dequantize(data, GGMLQuantizationType[name]).reshape(x.shape)
            errors[label] = float(np.sqrt(np.mean((decoded - x) ** 2) / np.mean(x**2)))
            seconds, weights = seconds + took, weights + x.size
        rows[name] = {**errors, "ns_per_weight": seconds / weights * 1e9}
    return rows


def child(model: str, qtype: str, out_dir: str) -> None:
    """Export once in this process; print one JSON line."""
    from gguf import GGUFReader

    from llama_space.export.gguf import write_gguf

    wall, cpu = time.perf_counter(), time.process_time()
    out = write_gguf(Path(model), Path(out_dir) / f"model-{qtype}.gguf", qtype)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    types = collections.Counter(t.tensor_type.name for t in GGUFReader(out).tensors if len(t.shape) > 1)
    print(json.dumps({"qtype": qtype, "seconds": round(wall, 1), "cpu_seconds": round(cpu, 1),
                      "file_mib": round(out.stat().st_size / 2**20, 1), "types": dict(types.most_common())}))


def estimate_8b(qtype: str, ns_per_weight: dict[str, float]) -> dict:
    """File size and encoding CPU time of Llama-3.1-8B in `qtype`, from the 8B mix and the measured rates."""
    from llama_space.export.gguf_types import mix_bytes, tensor_type

    shapes = llama_8b_shapes()
    weights = collections.Counter()
    for name, shape in shapes.items():
        if len(shape) > 1:
            weights[tensor_type(name, shape, qtype, 32, tied=False).name] += math.prod(shape)
    seconds = sum(count * ns_per_weight[kind] for kind, count in weights.items() if kind in ns_per_weight) / 1e9
    return {"qtype": qtype, "file_gib": round(mix_bytes(shapes, qtype, 32, tied=False) / 2**30, 2),
            "encode_cpu_minutes": round(seconds / 60, 1) if seconds else None,
            "weights": {kind: round(count / 1e9, 2) for kind, count in weights.most_common()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="", help="merged model folder (default: the embedded checkpoint)")
    parser.add_argument("--qtypes", default=",".join(QTYPES))
    parser.add_argument("--child", nargs=3, metavar=("MODEL", "QTYPE", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(*args.child)
    model = args.model
    if not model:
        from llama_space.model.source import embedded_checkpoint

        model = embedded_checkpoint(REPO / "data" / "cache")
    table = formats(Path(model))
    print("| format | bits/weight | embedding | ffn_down (Q4_1 grid) | Gaussian | CPU ns/weight |")
    print("|---|---|---|---|---|---|")
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    for name, row in table.items():
        block, size = GGML_QUANT_SIZES[GGMLQuantizationType[name]]
        print(f"| {name} | {size * 8 / block:.2f} | {row['embedding']:.4f} | {row['ffn_down']:.4f} | "
              f"{row['gaussian']:.4f} | {row['ns_per_weight']:.0f} |")
    rows = []
    with tempfile.TemporaryDirectory() as out_dir:
        for qtype in args.qtypes.split(","):
            result = subprocess.run([sys.executable, __file__, "--child", model, qtype, out_dir],
                                    capture_output=True, text=True, check=True)
            rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
            Path(out_dir, f"model-{qtype}.gguf").unlink()
    print("\n| type | seconds (CPU seconds) | file MiB | matrices by type |")
    print("|---|---|---|---|")
    for row in rows:
        types = ", ".join(f"{kind} {count}" for kind, count in row["types"].items())
        print(f"| {row['qtype']} | {row['seconds']} ({row['cpu_seconds']}) | {row['file_mib']} | {types} |")
    rates = {name: row["ns_per_weight"] for name, row in table.items()}
    print("\nLlama-3.1-8B estimate (tensor data; encoding on one core; reading the checkpoint not counted):\n")
    print("| type | file GiB | encoding CPU minutes | billions of weights by type |")
    print("|---|---|---|---|")
    for row in rows:
        estimate = estimate_8b(row["qtype"], rates)
        minutes = estimate["encode_cpu_minutes"] or "- (a conversion)"
        weights = ", ".join(f"{kind} {count}" for kind, count in estimate["weights"].items())
        print(f"| {row['qtype']} | {estimate['file_gib']} | {minutes} | {weights} |")
    print(json.dumps({"formats": table, "exports": rows}))


if __name__ == "__main__":
    main()
