"""Chat beside a shared training job: decode tok/s with and without a LoRA job training in the app process.

    python bench/shared_training.py [--model ID_OR_PATH] [--rounds 3] [--tokens 48] [--train-threads N] [--nice N]

Serves the model (default: the embedded SmolLM2-135M) with a ModelManager on CPU, times greedy replies
alone, then starts a shared job (placement shared, the persona data, quick preset) and times the same
replies while it trains, and the job's steps per second with and without chat. `--train-threads` and
`--nice` replace the training thread's CPU policy (training/shared.py: half the cores, nice 10), to
compare. Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, machine

PERSONA = REPO / "examples" / "persona.jsonl"
QUESTION = [{"role": "user", "content": "Explain how a bicycle works to a ten-year-old."}]


def chat_rate(manager, tokens: int, rounds: int) -> float:
    """Median decode tok/s of `rounds` greedy replies of `tokens` tokens."""
    from llama_space.inference.generation_params import GenerationParams

    params = GenerationParams(max_new_tokens=tokens, temperature=0.0)
    rates = []
    for _ in range(rounds):
        start = time.perf_counter()
        reply = manager.generate(QUESTION, params)
        rates.append(manager.count_tokens(reply) / (time.perf_counter() - start))
    return statistics.median(rates)


def step_rate(runner, job_id: str, seconds: float) -> float:
    """Training steps per second over the next `seconds`."""
    first = runner.status(job_id)["step"] or 0
    time.sleep(seconds)
    return ((runner.status(job_id)["step"] or 0) - first) / seconds


def steps_during(runner, job_id: str, work) -> tuple[object, float]:
    """(work(), training steps per second while it ran)."""
    first, start = runner.status(job_id)["step"] or 0, time.perf_counter()
    result = work()
    return result, ((runner.status(job_id)["step"] or 0) - first) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="", help="model id or path (default: the embedded SmolLM2-135M)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--train-threads", type=int, default=None, help="training thread's OpenMP threads")
    parser.add_argument("--nice", type=int, default=None, help="training thread's nice value")
    args = parser.parse_args()

    from llama_space.inference.manager import ModelManager
    from llama_space.settings import Settings
    from llama_space.training import JobRunner, TrainingParams, shared

    if args.train_threads is not None:
        shared.train_threads = lambda cores=None: args.train_threads
    if args.nice is not None:
        shared.TRAIN_NICE = args.nice
    root = Path(tempfile.mkdtemp(prefix="bench-shared-"))
    (root / "data").mkdir()
    if (REPO / "data" / "cache").is_dir():  # the converted embedded model, as the tests keep it
        (root / "data" / "cache").symlink_to((REPO / "data" / "cache").resolve(), target_is_directory=True)
    settings = Settings(model=args.model, data_dir=root / "data", adapters_dir=root / "adapters", device="cpu")
    manager = ModelManager(settings).load()
    chat_rate(manager, 8, 1)  # warm-up
    alone = chat_rate(manager, args.tokens, args.rounds)
    runner = JobRunner(settings, manager)
    params = TrainingParams.preset("quick", max_steps=100_000, save_steps=100_000, placement="shared")
    job_id = runner.start(PERSONA, "bench-shared", params)
    while (runner.status(job_id)["step"] or 0) < 2:
        time.sleep(0.5)
    train_alone = step_rate(runner, job_id, 10)
    during, train_with_chat = steps_during(runner, job_id, lambda: chat_rate(manager, args.tokens, args.rounds))
    runner.cancel(job_id)
    runner.wait(job_id, timeout=300)
    manager.close()
    result = {"bench": "shared_training", "model": manager.base_name, "chat_tok_s_alone": round(alone, 2),
              "chat_tok_s_during_training": round(during, 2), "chat_ratio": round(during / alone, 3),
              "train_steps_s_alone": round(train_alone, 3), "train_steps_s_with_chat": round(train_with_chat, 3),
              "train_ratio": round(train_with_chat / train_alone, 3) if train_alone else None,
              "train_threads": shared.train_threads(), "train_nice": shared.TRAIN_NICE, "machine": machine()}
    print(f"chat tok/s alone {alone:.1f}, during shared training {during:.1f} (ratio {during / alone:.2f}); "
          f"training steps/s alone {train_alone:.2f}, with chat {train_with_chat:.2f}", file=sys.stderr)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
