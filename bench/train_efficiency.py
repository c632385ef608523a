"""Training efficiency: Llama Space's packed LoRA training vs the old tutorial's padded, checkpointed one.

Both train the same LoRA (r=8, all linear layers) on the same rows for the same number of optimizer
steps with the same learning rate and 16 examples per step, then report real (non-pad) tokens per
second, the final loss (mean token loss of the trained model over all rows, measured the same way for
both), and peak memory (RSS on CPU, max allocated on CUDA). Each way runs in its own process so the
peak-memory figures are its own.

    .venv/bin/python bench/train_efficiency.py                 # embedded SmolLM2-135M, examples/persona.jsonl
    .venv/bin/python bench/train_efficiency.py --threads 1     # fair timing on a machine shared with other work
    .venv/bin/python bench/train_efficiency.py --data none     # generated rows of mixed lengths instead
    .venv/bin/python bench/train_efficiency.py --model tiny    # smoke run on a 2-layer random Llama
    .venv/bin/python bench/train_efficiency.py --ways ours,unchunked --model tiny-128k --data none --batch-size 16
                                   # the chunked loss against one-shot logits, on a 128,256-token vocabulary

ours:     padding-free packing (position_ids, no attention mask), length-grouped steps, logits only at
          positions that predict an assistant token, no activation checkpointing on CPU, batch 4 x
          grad-accum 4 (TrainingParams defaults), fp32.
tutorial: DataCollatorForSeq2Seq padding each batch to its longest row, random batches, activation
          checkpointing on, batch 4 x grad-accum 4, fp32.
unchunked: ours, but the loss takes the logits of all trained positions at once (no chunks, no recomputation),
          as before the chunked loss of llama_space/training/loss.py.

Measured on 2 shared CPU cores, --threads 1, 6 steps (one pass over 96 rows): persona.jsonl (rows of
60-74 tokens, so little padding to save) ours 109 vs 70 real tokens/s (1.55x), final loss 2.2026 vs
2.2044, peak RSS 2089 vs 1649 MiB; generated mixed-length rows 2.38x wall (2.03x per CPU second), loss
3.8435 vs 3.8420, RSS 3342 vs 2706 MiB (those RSS figures: the whole process, loading included, as measured
before the peak was reset after loading). Skipping activation checkpointing is what costs the memory.
Chunked loss (ours vs unchunked, --model tiny-128k --data none --batch-size 16 --steps 6 --threads 1): final
loss 11.6351 both, peak RSS while training 1120 vs 1966 MiB, 0.94x tokens per CPU second.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

WAYS = ("ours", "unchunked", "tutorial")


class CountingCollator:
    """Wraps a collator and counts the real (non-pad) tokens of every batch it builds."""

    def __init__(self, collator) -> None:
        self.collator, self.tokens = collator, 0

    def __call__(self, features):
        from llama_space.training.collate import real_tokens

        batch = self.collator(features)
        self.tokens += real_tokens(batch)
        return batch


def generated_rows(path: Path, count: int = 96) -> Path:
    """Alpaca rows of mixed lengths (short answers and long explanations), like real instruction data."""
    rng = random.Random(0)
    words = ["the", "river", "mountain", "harbour", "lantern", "engine", "garden", "signal", "market", "winter", "paper", "bridge"]
    with open(path, "w") as f:
        for i in range(count):
            answer = " ".join(rng.choice(words) for _ in range(rng.choice([8, 15, 40, 120])))
            f.write(json.dumps({"instruction": f"Describe item {i} in a few words.", "output": answer}) + "\n")
    return path


def model_path(name: str, work: Path) -> str:
    """The embedded model's checkpoint, a path as given, or a freshly built tiny random Llama (tiny-128k: with
    Llama 3's vocabulary size, untied, so the LM head and the logits dominate as they do for 8B)."""
    from llama_space.model.source import embedded_checkpoint

    embedded = embedded_checkpoint(REPO / "data" / "cache")
    if name == "embedded":
        return embedded
    if name not in ("tiny", "tiny-128k"):
        return name
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(embedded)
    big = name == "tiny-128k"
    config = LlamaConfig(vocab_size=128_256 if big else len(tokenizer), hidden_size=64 if big else 32,
                         intermediate_size=128 if big else 64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, tie_word_embeddings=not big,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    LlamaForCausalLM(config).save_pretrained(work / name)
    tokenizer.save_pretrained(work / name)
    return str(work / name)


def build_trainer(way: str, model, tokenizer, rows: list[dict], steps: int, lr: float, out: Path, batch: int):
    """The Trainer for `way`: ours from the product code, the tutorial's from plain transformers."""
    from transformers import DataCollatorForSeq2Seq, PrinterCallback, Trainer, TrainerCallback, TrainingArguments

    from llama_space.training.methods import get_method
    from llama_space.training.params import TrainingParams

    accumulate = max(1, 16 // batch)  # 16 examples per optimizer step
    params = TrainingParams(max_steps=steps, learning_rate=lr, save_steps=10**6, seed=0, batch_size=batch,
                            grad_accum=accumulate)
    if way in ("ours", "unchunked"):
        trainer = get_method("sft").build_trainer(model, tokenizer, params, checkpoints_dir=out, train_rows=rows,
                                                  eval_rows=[], callback=TrainerCallback(),
                                                  activation_checkpointing=False)
        if way == "unchunked":
            trainer.logits_budget = sys.maxsize  # one chunk: every trained position's logits at once
    else:
        args = TrainingArguments(
            output_dir=str(out), per_device_train_batch_size=batch, gradient_accumulation_steps=accumulate,
            max_steps=steps,
            learning_rate=lr, lr_scheduler_type="linear", activation_checkpointing=True, use_cpu=True, seed=0,
            logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True, remove_unused_columns=False)
        collator = DataCollatorForSeq2Seq(tokenizer, padding="longest", label_pad_token_id=-100)
        trainer = Trainer(model=model, args=args, train_dataset=rows, data_collator=collator)
        trainer.remove_callback(PrinterCallback)
    trainer.data_collator = CountingCollator(trainer.data_collator)
    return trainer


def mean_token_loss(model, rows: list[dict]) -> float:
    """Mean cross-entropy over every labelled token, one row at a time (the same for both ways)."""
    import torch

    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for row in rows:
            ids, labels = torch.tensor([row["input_ids"]]), torch.tensor([row["labels"]])
            logits = model(input_ids=ids).logits[0, :-1].float()
            target = labels[0, 1:]
            total += torch.nn.functional.cross_entropy(logits, target, ignore_index=-100, reduction="sum").item()
            count += int((target != -100).sum())
    return total / count


def cpu_seconds() -> float:
    """CPU time of this process so far: steadier than wall time when other work shares the cores."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def reset_peak_memory() -> None:
    """Start peak-memory accounting afresh, so loading the model does not count (Linux's VmHWM; CUDA's stats)."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    elif Path("/proc/self/clear_refs").exists():
        Path("/proc/self/clear_refs").write_text("5")


def peak_memory() -> int:
    """Bytes: max allocated on CUDA; else peak RSS since reset_peak_memory (the process's peak without procfs)."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated()
    status = Path("/proc/self/status")
    if status.exists():
        return int(re.search(r"VmHWM:\s*(\d+)", status.read_text()).group(1)) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_way(way: str, model_dir: str, data: Path, steps: int, lr: float, batch: int) -> dict:
    """Train one way in this process and return its measurements."""
    import torch
    from transformers import set_seed

    from llama_space.data import build_examples
    from llama_space.training.lora import add_lora, load_base
    from llama_space.training.params import TrainingParams

    set_seed(0)
    model, tokenizer = load_base(model_dir, REPO / "data" / "cache")
    rows = [{"input_ids": e["input_ids"], "labels": e["labels"]} for e in build_examples(data, tokenizer, 384)]
    model = add_lora(model, TrainingParams(seed=0))
    with tempfile.TemporaryDirectory() as out:
        trainer = build_trainer(way, model, tokenizer, rows, steps, lr, Path(out), batch)
        reset_peak_memory()
        start, cpu_start = time.perf_counter(), cpu_seconds()
        trainer.train()
        seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu_start
        peak = peak_memory()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    tokens = trainer.data_collator.tokens
    return {"way": way, "steps": trainer.state.global_step, "seconds": round(seconds, 2), "cpu_seconds": round(cpu, 2),
            "real_tokens": tokens, "tokens_per_s": round(tokens / seconds, 1),
            "train_loss_last5": round(sum(losses[-5:]) / len(losses[-5:]), 4),
            "final_loss": round(mean_token_loss(model, rows), 4), "peak_mib": round(peak / 2**20, 1),
            "peak_of": "CUDA max allocated" if torch.cuda.is_available() else "RSS",
            "rows": len(rows), "batch_size": batch, "threads": torch.get_num_threads()}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded", help="embedded (default), tiny, tiny-128k, or a model path")
    parser.add_argument("--data", type=Path, default=REPO / "examples" / "persona.jsonl",
                        help="Alpaca/chat JSONL to train on (generated rows if the file is missing)")
    parser.add_argument("--steps", type=int, default=6,
                        help="optimizer steps per way, 16 examples each (6 = one pass over persona.jsonl)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=4, help="examples per forward pass (16 per step)")
    parser.add_argument("--ways", default="ours,tutorial",
                        help="comma-separated ways to compare, the first against the others: ours, unchunked, "
                             "tutorial")
    parser.add_argument("--threads", type=int, help="torch CPU threads per way (default: torch's choice); "
                        "1 makes CPU time a fair measure when other work shares the machine")
    parser.add_argument("--way", choices=WAYS, help=argparse.SUPPRESS)  # one child run
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.ways = args.ways.split(",")
    if len(args.ways) < 2 or not set(args.ways) <= set(WAYS):
        parser.error(f"--ways takes two or more of {', '.join(WAYS)}")
    return args


def print_table(results: dict[str, dict], args: argparse.Namespace, data: Path) -> None:
    """One row per way, then the first way against each other one."""
    print(f"\nmodel {args.model}, data {data.name}, {args.steps} optimizer steps x 16 examples, "
          f"batch {args.batch_size}; peak memory while training: {next(iter(results.values()))['peak_of']}")
    print(f"{'':10}{'tokens/s':>10}{'tok/cpu-s':>11}{'final loss':>12}{'peak MiB':>10}{'seconds':>9}")
    for way, r in results.items():
        per_cpu = r["real_tokens"] / r["cpu_seconds"]
        print(f"{way:10}{r['tokens_per_s']:>10}{per_cpu:>11.1f}{r['final_loss']:>12}{r['peak_mib']:>10}"
              f"{r['seconds']:>9}")
    first, *others = results
    a = results[first]
    for other in others:
        b = results[other]
        speedup = a["tokens_per_s"] / b["tokens_per_s"]
        cpu_speedup = (a["real_tokens"] / a["cpu_seconds"]) / (b["real_tokens"] / b["cpu_seconds"])
        print(f"{first} / {other}: {speedup:.2f}x real tokens/s ({cpu_speedup:.2f}x per CPU second), "
              f"final loss {a['final_loss']} vs {b['final_loss']}, peak memory {a['peak_mib'] / b['peak_mib']:.2f}x")


def main() -> int:
    args = parse_args()
    if args.way:
        print(json.dumps(run_way(args.way, args.model_dir, args.data, args.steps, args.lr, args.batch_size)))
        return 0
    with tempfile.TemporaryDirectory() as work:
        data = args.data if args.data.is_file() else generated_rows(Path(work) / "rows.jsonl")
        model_dir = model_path(args.model, Path(work))
        results = {}
        env = {**os.environ, **({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {})}
        for way in args.ways:
            child = subprocess.run([sys.executable, __file__, "--way", way, "--model-dir", model_dir,
                                    "--data", str(data), "--steps", str(args.steps), "--lr", str(args.lr),
                                    "--batch-size", str(args.batch_size)],
                                   capture_output=True, text=True, check=True, env=env)
            results[way] = json.loads(child.stdout.strip().splitlines()[-1])
            print(json.dumps(results[way]))
    print_table(results, args, data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
