"""DPO step time: Llama Space's DPO job against a plain TRL script on the same pairs, model, LoRA and batch.

ours:  the job's path (training.train.prepare_trainer on a job folder): pairs rendered and checked by
       data/preference.py, TRL's DPOTrainer under our JobTrainer (atomic checkpoints, progress callback).
trl:   the script from TRL's documentation: DPOTrainer(model, args=DPOConfig(...), train_dataset=conversational
       rows, processing_class=tokenizer, peft_config=LoraConfig(...)), TRL tokenizing the rows itself.

Both: LoRA r=8 on every linear layer, batch 4 pairs, no accumulation, lr 5e-4, beta 0.1, max_length 128, fp32 on
CPU, no activation checkpointing. Each runs in its own process; the first step (warm-up) is left out of the mean.

    .venv/bin/python bench/dpo_step.py                 # the embedded SmolLM2-135M
    .venv/bin/python bench/dpo_step.py --model tiny    # smoke run on a 2-layer random Llama
    .venv/bin/python bench/dpo_step.py --threads 1 --ways trl,ours   # fairer on a machine shared with other work

Measured on 2 shared CPU cores, embedded model, --threads 1 --steps 4: ours 14.59 s, trl 13.83 s per step, ratio
1.05 (BENCHMARKS.md, "DPO step").
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

TOPICS = ["the sea", "ships", "parrots", "gold", "maps", "islands", "storms", "sails", "anchors", "crews", "rum",
          "cannons", "harbours", "the moon", "the wind", "compasses"]


def pairs() -> list[dict]:
    """Conversational pairs: the chosen reply a pirate's, the rejected one plain."""
    return [{"prompt": [{"role": "user", "content": f"Tell me one thing about {topic}."}],
             "chosen": [{"role": "assistant", "content": f"Ahoy! {topic.capitalize()} be a fine thing, matey."}],
             "rejected": [{"role": "assistant", "content": f"{topic.capitalize()} is a thing."}]}
            for topic in TOPICS]


def step_timer():
    """A TrainerCallback recording each optimizer step's wall time in its `times`."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self.start = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append(time.perf_counter() - self.start)

    return StepTimer()


def model_dir(name: str, cache: Path) -> str:
    """The embedded model's checkpoint, or a 2-layer random Llama with its tokenizer."""
    from llama_space.model.source import embedded_checkpoint

    embedded = embedded_checkpoint(cache)
    if name != "tiny":
        return str(embedded)
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = Path(tempfile.mkdtemp(prefix="dpo-bench-tiny-"))
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(embedded)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                                 num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                 tie_word_embeddings=True)).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)


def run_ours(model: str, steps: int, work: Path) -> list[float]:
    from llama_space.training.job_config import TrainingJobConfig
    from llama_space.training.params import TrainingParams
    from llama_space.training.train import prepare_trainer

    data = work / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": row["prompt"], "chosen": row["chosen"][0]["content"],
                                        "rejected": row["rejected"][0]["content"]}) + "\n" for row in pairs()))
    params = TrainingParams(method="dpo", max_steps=steps, batch_size=4, grad_accum=1, learning_rate=5e-4,
                            max_length=128, gradient_checkpointing="off", save_steps=10**6, lora_dropout=0.0)
    config = TrainingJobConfig(adapter="bench", dataset=str(data), adapters_dir=str(work / "adapters"),
                               cache_dir=str(work / "cache"), model=model, max_bytes=2**20, params=params)
    (work / "job").mkdir()
    trainer, _ = prepare_trainer(work / "job", config, params)
    timer = step_timer()
    trainer.add_callback(timer)
    trainer.train()
    return timer.times


def run_trl(model: str, steps: int, work: Path) -> list[float]:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(model)
    base = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    args = DPOConfig(output_dir=str(work / "out"), per_device_train_batch_size=4, gradient_accumulation_steps=1,
                     learning_rate=5e-4, max_steps=steps, beta=0.1, max_length=128, use_cpu=True, bf16=False,
                     gradient_checkpointing=False, logging_steps=1, save_strategy="no", report_to="none",
                     disable_tqdm=True)
    lora = LoraConfig(r=8, lora_alpha=32, lora_dropout=0.0, task_type="CAUSAL_LM",
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    timer = step_timer()
    trainer = DPOTrainer(base, args=args, train_dataset=Dataset.from_list(pairs()), processing_class=tokenizer,
                         peft_config=lora, callbacks=[timer])
    trainer.train()
    return timer.times


def child(way: str, model: str, steps: int, threads: int) -> None:
    import torch

    if threads:
        torch.set_num_threads(threads)
    work = Path(tempfile.mkdtemp(prefix=f"dpo-bench-{way}-"))
    times = (run_ours if way == "ours" else run_trl)(model, steps, work)
    print(json.dumps({"way": way, "times": times}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="embedded", help="embedded or tiny")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--cache", type=Path, default=REPO / "data" / "cache", help="where the embedded model is")
    parser.add_argument("--ways", default="ours,trl", help="the order to run them in")
    parser.add_argument("--child", default="")
    parser.add_argument("--model-dir", default="")
    args = parser.parse_args()
    if args.child:
        child(args.child, args.model_dir, args.steps, args.threads)
        return
    model = model_dir(args.model, args.cache)
    means = {}
    for way in args.ways.split(","):
        out = subprocess.run([sys.executable, __file__, "--child", way, "--model-dir", model, "--steps",
                              str(args.steps), "--threads", str(args.threads)], capture_output=True, text=True,
                             check=True).stdout
        times = json.loads(out.strip().splitlines()[-1])["times"][1:]  # the first step warms up
        means[way] = statistics.mean(times)
        print(f"{way}: {means[way]:.3f} s per DPO step (mean of {len(times)} after warm-up)")
    print(f"ratio ours/trl: {means['ours'] / means['trl']:.2f}")


if __name__ == "__main__":
    main()
