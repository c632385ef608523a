"""Training memory on CPU: a LoRA job's measured peak RSS against the memory planner's estimate.

Each case runs the real job (llama_space.training.train, process placement, fp32 on CPU) for a few steps in a
child process on rows that fill max_length, so every micro-batch holds batch_size x max_length tokens, the
planner's worst case. The child reports its RSS once torch, transformers and peft are imported (what
memory.py's CPU_PROCESS stands for) and its peak RSS (ru_maxrss); the growth between them is compared with the
estimate less CPU_PROCESS, and the peak with the whole estimate.

    .venv/bin/python bench/train_memory.py                      # tiny, tiny-128k and the embedded SmolLM2-135M
    .venv/bin/python bench/train_memory.py --models embedded --steps 3

docs/fine-tuning.md's GPU table comes from the same planner: `.venv/bin/python bench/train_memory.py --gpu-table`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# (model, gradient_checkpointing, quantization) measured by default
CASES = [("tiny", "off", "none"), ("tiny-128k", "off", "none"), ("embedded", "off", "none"),
         ("embedded", "on", "none"), ("embedded", "off", "nf4")]
GPUS = [("16 GB (T4, V100)", 15360), ("24 GB (A10G, L4)", 23028), ("48 GB (L40S, A6000)", 46068), ("80 GB (A100, H100)", 81559)]  # MiB


def rss() -> int:
    """This process's resident set now, in bytes."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def child(job_dir: Path) -> None:
    """Train the job in `job_dir` here; print {"baseline", "peak", "state"} as one JSON line."""
    import logging

    import peft  # noqa: F401 - imported before the baseline, as the job imports it
    import torch  # noqa: F401
    import transformers  # noqa: F401

    from llama_space.jobs import files as jobfiles
    from llama_space.training import lora, train, trainer  # noqa: F401
    from llama_space.training.methods import sft_trainer  # noqa: F401

    logging.basicConfig(level=logging.WARNING)
    baseline = rss()
    train.run(job_dir, resume=False)
    state = jobfiles.read_json(job_dir / jobfiles.STATUS_FILE)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"baseline": baseline, "peak": peak, "state": state["state"], "error": state.get("error")}))


def full_rows(path: Path, count: int) -> Path:
    """Alpaca rows with a short prompt and an answer far longer than max_length: every row is truncated full."""
    words = ["the", "river", "mountain", "harbour", "lantern", "engine", "garden", "signal", "market", "winter"]
    with open(path, "w") as f:
        for i in range(count):
            answer = " ".join(words[(i + j) % len(words)] for j in range(600))
            f.write(json.dumps({"instruction": f"Describe item {i}.", "output": answer}) + "\n")
    return path


def measure(model_dir: str, checkpointing: str, quantization: str, args, work: Path) -> dict:
    """Run one case in a child process; its measured figures beside the planner's estimate."""
    from transformers import AutoConfig

    from llama_space.training import TrainingParams, memory

    params = TrainingParams(max_steps=args.steps, batch_size=args.batch, grad_accum=1, max_length=args.max_length,
                            save_steps=10**6, gradient_checkpointing=checkpointing, placement="process",
                            quantization=quantization)
    job_dir = Path(tempfile.mkdtemp(dir=work))
    data = full_rows(job_dir / "data.jsonl", 4 * args.batch)
    job = {"model": model_dir, "adapter": "memory", "dataset": str(data), "adapters_dir": str(job_dir / "out"),
           "cache_dir": str(REPO / "data" / "cache"), "params": params.to_dict()}
    (job_dir / "job.json").write_text(json.dumps(job))
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    done = subprocess.run([sys.executable, __file__, "--child", str(job_dir)], capture_output=True, text=True,
                          env=env, check=True)
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    if measured["state"] != "completed":
        raise SystemExit(f"{model_dir}: the job ended {measured['state']}: {measured['error']}")
    estimate = memory.estimate(AutoConfig.from_pretrained(model_dir), params, placement="process",
                               quantization=quantization, device="cpu", served_dtype="float32",
                               served_in_process=False, checkpointing=checkpointing == "on")
    growth = measured["peak"] - measured["baseline"]
    predicted = estimate.total_bytes - memory.CPU_PROCESS
    return {"peak": measured["peak"], "baseline": measured["baseline"], "growth": growth,
            "estimate": estimate.total_bytes, "estimated_growth": predicted,
            "growth_error": round(predicted / growth - 1, 3), "peak_error": round(estimate.total_bytes /
                                                                                   measured["peak"] - 1, 3),
            "parts": estimate.parts}


def run_cases(args) -> list[dict]:
    from train_efficiency import model_path  # the tiny and embedded models, built as that benchmark does

    from common import machine

    print(json.dumps({"machine": machine()}))
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, checkpointing, quantization in CASES:
            if name not in args.models:
                continue
            result = measure(model_path(name, Path(tmp)), checkpointing, quantization, args, Path(tmp))
            result = {"model": name, "checkpointing": checkpointing, "quantization": quantization, **result}
            results.append(result)
            print(json.dumps(result))
    mib = 2**20
    print(f"\n{args.batch} x {args.max_length} tokens per step, {args.steps} steps, fp32 CPU, process placement")
    print(f"{'model':<10} {'ckpt':<4} {'quant':<5} {'peak MiB':>9} {'est MiB':>8} {'err':>6} "
          f"{'growth MiB':>11} {'est MiB':>8} {'err':>6}")
    for r in results:
        print(f"{r['model']:<10} {r['checkpointing']:<4} {r['quantization']:<5} {r['peak'] / mib:>9.0f} "
              f"{r['estimate'] / mib:>8.0f} {r['peak_error']:>+6.0%} {r['growth'] / mib:>11.0f} "
              f"{r['estimated_growth'] / mib:>8.0f} {r['growth_error']:>+6.0%}")
    return results


def gpu_table() -> None:
    """A Markdown table of where Llama-3.1-8B LoRA and QLoRA jobs fit (docs/fine-tuning.md's), from the planner."""
    from llama_space.training import memory

    config = memory.llama31_8b_config()
    ways = [("LoRA, own bf16 copy", {"placement": "process"}), ("LoRA on the served weights", {"placement": "shared"}),
            ("QLoRA (NF4)", {"quantization": "nf4"}), ("auto chooses", {})]
    print("| GPU | chat served by the app | " + " | ".join(name for name, _ in ways) + " |")
    print("|---" * (len(ways) + 2) + "|")
    for gpu, mib in GPUS:
        for chat in (True, False):
            free = mib * 2**20 - (memory.served_bytes(config, "bfloat16", "cuda") if chat else 0)
            if free < 0:
                print(f"| {gpu} | the 8B in bf16 does not fit |" + " - |" * len(ways))
                continue
            cells = [table_cell(config, fields, free, chat, name == "auto chooses") for name, fields in ways]
            where = f"yes, bf16 ({free / 1e9:.1f} GB left)" if chat else "no, remote backend"
            print(f"| {gpu} | {where} | " + " | ".join(cells) + " |")
    print("\nDefaults: batch_size 4 x max_length 384, LoRA r=8 on all linear layers, gradient_checkpointing auto "
          "(ckpt: on); KV for 4096 chat tokens kept free when chat is served.")


def table_cell(config, fields: dict, free: int, chat: bool, auto: bool) -> str:
    """One cell: the planner's estimate where the job fits, else what it would need."""
    from llama_space.errors import UserError
    from llama_space.training import TrainingParams, memory, planner

    if fields.get("placement") == "shared" and not chat:
        return "n/a"
    params = TrainingParams(**fields)
    try:
        chosen = planner.plan(config, params, free_bytes=free, device="cuda", served_dtype="bfloat16",
                              served_in_process=chat).estimate
    except UserError:
        if auto:
            return "nothing fits"
        need = memory.estimate(config, params, placement=fields.get("placement", "process"),
                               quantization=fields.get("quantization", "none"), device="cuda",
                               served_dtype="bfloat16", served_in_process=chat)
        return f"no (needs {need.total_bytes / 1e9:.1f} GB)"
    what = f"{chosen.name}, " if auto else ""
    return f"{what}{chosen.total_bytes / 1e9:.1f} GB{', ckpt' if chosen.checkpointing else ''}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["tiny", "tiny-128k", "embedded"])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--gpu-table", action="store_true", help="print docs/fine-tuning.md's table of 8B jobs per GPU")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
    elif args.gpu_table:
        gpu_table()
    else:
        run_cases(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
