"""GPU check: Llama-3.1-8B's exact shape (random bf16 weights, nothing downloaded) served and trained by the app.

    python bench/gpu_check.py                   # the whole GPU, about 6-9 minutes on an H100-class card
    python bench/gpu_check.py --gpu-mem-gb 24   # leave the app only 24 GB of the card free (an A10G)
    python bench/gpu_check.py --tiny            # a 2-layer model with Llama 3's vocabulary, on CPU, 1-2 minutes

The model is built once into data/cache/gpu-check/ (meta-free: initialised on the device, then saved). Phases:
1. plain `generate` decode tok/s of one stream in this process, against the memory-bandwidth limit (weight
   bytes read per token over the bandwidth of a large on-device tensor copy);
2. the app (bench/serving.py's served_app: `app.py`'s launch in a child process) and N = 1, 8, 32 streamed chat
   completions at once: aggregate tok/s, per-stream decode tok/s, time to first token;
3. a LoRA job through gradio_client (/start_training, placement="auto", quantization="none") while one chat
   stream after another runs: the planner's placement, peak memory of the app and its job, training tok/s
   (from the job's per-step metrics), chat tok/s during training; 4. the same for QLoRA (quantization="nf4").
`--gpu-mem-gb G` allocates, in this process, all of the card's free memory but G GB before the app starts: the
app, its planner (torch.cuda.mem_get_info) and a job's own process all see a G GB card, as on that hardware.
Memory is polled from here (mem_get_info on CUDA, the app's process tree RSS on CPU). Prints a table, then one
JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ is not a package
from concurrency import burst
from gpu_jobs import MemoryPoll, example_tokens, train_with_chat, write_rows

import common
import serving
from common import REPO, median

sys.path.insert(0, str(REPO / "tests"))
TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2}
class Size(NamedTuple):
    """How much each phase does."""

    reply_tokens: int  # tokens of each chat reply
    answer_words: int  # words of each training row's answer
    lora_steps: int
    qlora_steps: int


# Full: rows of ~330 tokens (batch 4 x 384 tokens at most, as the defaults), steps that fit the 10 minutes.
SIZES = {"full": Size(128, 300, 30, 20), "tiny": Size(32, 20, 4, 3)}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="a small config on CPU (what CI runs)")
    parser.add_argument("--gpu-mem-gb", type=float, default=0, help="GB of the card left free for the app")
    parser.add_argument("--streams", default="1,8,32")
    return parser.parse_args()


def build_model(tiny: bool, device: str) -> Path:
    """Llama-3.1-8B's config (TINY's sizes with --tiny) with random weights, saved once with a Llama-3.1-style
    tokenizer; rows of ids the tokenizer lacks and of its end tokens are zero, so greedy replies run full length."""
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    from llama_space.model.source import embedded_checkpoint
    from llama_space.training.memory import llama31_8b_config

    from llama31 import EOT, save_tokenizer

    out = REPO / "data" / "cache" / "gpu-check" / ("tiny" if tiny else "llama31-8b-random")
    if (out / "complete").exists():
        return out
    tokenizer = AutoTokenizer.from_pretrained(save_tokenizer(Path(embedded_checkpoint(REPO / "data" / "cache")),
                                                             out))
    config = llama31_8b_config()
    if tiny:
        config.update(TINY)
    ends = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(EOT)]
    config.bos_token_id, config.eos_token_id = tokenizer.bos_token_id, ends
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM._from_config(config, dtype=torch.bfloat16)
    with torch.no_grad():
        model.lm_head.weight[len(tokenizer):] = 0
        model.lm_head.weight[ends] = 0
    model.generation_config.eos_token_id = ends
    model.save_pretrained(out)
    (out / "complete").write_text("")
    del model
    return out


def bandwidth(device: str) -> float:
    """Bytes per second of a large tensor copy on `device` (read + write), best of 5."""
    import torch

    if device == "cpu":
        return common.memory_bandwidth()
    src = torch.ones(2**31, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(6):
        torch.cuda.synchronize()
        started = time.perf_counter()
        dst.copy_(src)
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - started)
    del src, dst
    release(device)
    return 2 * 2**31 / best


def plain_generate(model_dir: Path, device: str, dtype: str, tokens: int) -> dict:
    """Plain greedy `generate` decode tok/s of one stream (median of 3), and the weight bytes one token reads."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype), device_map=device).eval()
    ids = tokenizer.apply_chat_template([{"role": "user", "content": common.PROMPTS[0]}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)["input_ids"].to(device)

    def timed(n: int) -> tuple[float, int]:
        """(seconds, new tokens) of one greedy generate of up to n tokens; the head never picks an end token,
        so no min_new_tokens processor (which the served path does not run either) is needed."""
        started = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                                 pad_token_id=tokenizer.eos_token_id)
        if device != "cpu":
            torch.cuda.synchronize()
        return time.perf_counter() - started, out.shape[1] - ids.shape[1]

    timed(4)
    rates = []
    for _ in range(3):
        (whole, made), (first, _one) = timed(tokens), timed(1)
        rates.append((made - 1) / (whole - first))
    return {"plain_generate_tps": round(median(rates), 2), "weight_bytes": common.weight_bytes_per_token(model)}


def release(device: str) -> None:
    """Give the memory of this process's dropped tensors back to the device, so the app can have it."""
    import gc

    import torch

    gc.collect()  # module trees hold reference cycles
    if device != "cpu":
        torch.cuda.empty_cache()


def card_used() -> int:
    """Bytes of the CUDA card in use (this process's context and ballast included)."""
    import torch

    free, total = torch.cuda.mem_get_info()
    return total - free


def streams(url: str, counts: list[int], tokens: int) -> dict:
    """N streamed chat completions at once for each N: aggregate tok/s, per-stream decode tok/s and TTFT."""
    burst(url, 1, 4)  # warm-up
    out = {}
    for n in counts:
        wall, samples = burst(url, n, tokens)
        out[str(n)] = {"aggregate_tps": round(sum(s.tokens for s in samples) / wall, 2),
                       "per_stream_decode_tps": round(median([s.decode_tps for s in samples]), 2),
                       "ttft_median_ms": round(median([s.ttft for s in samples]) * 1e3),
                       "ttft_max_ms": round(max(s.ttft for s in samples) * 1e3)}
    return out


@contextmanager
def phase(name: str, elapsed: dict):
    """Time a phase and say so as it ends (the whole check must fit in one 10-minute call)."""
    started = time.perf_counter()
    yield
    elapsed[name] = round(time.perf_counter() - started, 1)
    print(f"[{name}: {elapsed[name]} s]", flush=True)


def ballast(gb: float):
    """A tensor holding all of the card's free memory but `gb` GB, so every process sees a `gb` GB card."""
    import torch

    torch.cuda.empty_cache()
    free, _total = torch.cuda.mem_get_info()
    spare = int(free - gb * 1e9)
    if spare <= 0:
        print(f"only {free / 1e9:.1f} GB free: no ballast needed for --gpu-mem-gb {gb}", flush=True)
        return None
    return torch.empty(spare, dtype=torch.uint8, device="cuda")


def run_check(args: argparse.Namespace) -> dict:
    """Every phase in order; the figures as one dict."""
    import torch

    device = "cpu" if args.tiny else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA device: run with --tiny on a machine without a GPU")
    dtype = "float32" if args.tiny else "bfloat16"
    elapsed: dict[str, float] = {}
    result = {"device": torch.cuda.get_device_name() if device == "cuda" else common.machine()["cpu"],
              "tiny": args.tiny, "gpu_mem_gb": args.gpu_mem_gb or None, "elapsed_s": elapsed}
    size = SIZES["tiny" if args.tiny else "full"]
    with phase("build model", elapsed):
        model_dir = build_model(args.tiny, device)
    with phase("plain generate", elapsed):
        result.update(plain_generate(model_dir, device, dtype, size.reply_tokens))
        release(device)  # the model is gone with plain_generate's frame
        speed = bandwidth(device)
    result["bandwidth_gb_s"] = round(speed / 1e9, 1)
    result["bandwidth_limit_tps"] = round(speed / result["weight_bytes"], 2)
    held = ballast(args.gpu_mem_gb) if args.gpu_mem_gb and device == "cuda" else None
    result.update(served_phases(model_dir, device, dtype, [int(n) for n in args.streams.split(",")], size,
                                elapsed))
    result["served_vs_plain"] = round(result["served_one_stream_tps"] / result["plain_generate_tps"], 2)
    result["served_vs_limit"] = round(result["served_one_stream_tps"] / result["bandwidth_limit_tps"], 3)
    del held
    return result


def served_phases(model_dir: Path, device: str, dtype: str, counts: list[int], size: Size, elapsed: dict) -> dict:
    """Start the app on the model, then the streams, the LoRA job and the QLoRA job against it."""
    baseline = card_used() if device == "cuda" else 0  # this process's context and ballast
    result: dict = {}
    with tempfile.TemporaryDirectory() as work:
        rows = write_rows(Path(work) / "rows.jsonl", size.answer_words)
        per_example = example_tokens(model_dir, rows)
        data_dir = Path(work) / "data"  # the app's jobs, apart from any other app's on this machine
        info: dict = {}
        started = time.perf_counter()
        with serving.served_app(str(model_dir), dtype=dtype, info=info, concurrency=max(counts),
                               max_queue=2 * max(counts), data_dir=data_dir) as url:
            elapsed["app start"] = round(time.perf_counter() - started, 1)
            print(f"[app start: {elapsed['app start']} s]", flush=True)
            poll = MemoryPoll(device, info["pid"], baseline)
            result["app_memory_gb"] = round(poll.used() / 1e9, 2)
            with phase("streams", elapsed):
                result["streams"] = streams(url, counts, size.reply_tokens)
            result["served_one_stream_tps"] = result["streams"][str(counts[0])]["per_stream_decode_tps"]
            for name, quantization, steps in (("lora", "none", size.lora_steps), ("qlora", "nf4", size.qlora_steps)):
                with phase(f"{name} job", elapsed):
                    result[name] = train_with_chat(url, data_dir, rows, poll, quantization, steps,
                                                   size.reply_tokens, per_example)
    return result


def print_table(r: dict) -> None:
    """The figures for a person; the JSON line after it has them all."""
    cap = f", the app left {r['gpu_mem_gb']} GB of the card" if r["gpu_mem_gb"] else ""
    print(f"\n{r['device']}{' (--tiny)' if r['tiny'] else ''}{cap}")
    print(f"decode, one stream: served {r['served_one_stream_tps']} tok/s = {r['served_vs_plain']}x plain generate "
          f"({r['plain_generate_tps']} tok/s), {r['served_vs_limit']:.0%} of the bandwidth limit "
          f"{r['bandwidth_limit_tps']} tok/s ({r['weight_bytes'] / 1e9:.2f} GB of weights per token at "
          f"{r['bandwidth_gb_s']} GB/s)")
    print(f"{'streams':>8}{'aggregate tok/s':>17}{'per-stream tok/s':>18}{'TTFT median ms':>16}{'TTFT max ms':>13}")
    for n, s in r["streams"].items():
        print(f"{n:>8}{s['aggregate_tps']:>17}{s['per_stream_decode_tps']:>18}{s['ttft_median_ms']:>16}"
              f"{s['ttft_max_ms']:>13}")
    print(f"{'job':>6}{'state':>11}{'placement':>11}{'estimate GB':>13}{'peak GB':>9}{'train tok/s':>13}"
          f"{'chat tok/s':>12}")
    for name in ("lora", "qlora"):
        j = r[name]
        print(f"{name:>6}{j['state']:>11}{j['placement']!s:>11}{j['estimate_gb']!s:>13}{j['peak_memory_gb']:>9}"
              f"{j['train_tokens_per_s']:>13}{j['chat_tps_during_training']:>12}")
        if j["error"]:
            print(f"       {j['error']}")
    print("elapsed: " + ", ".join(f"{k} {v} s" for k, v in r["elapsed_s"].items()))


def main() -> int:
    result = run_check(parse_args())
    print_table(result)
    print(json.dumps(result))
    return 0 if all(result[name]["state"] == "completed" for name in ("lora", "qlora")) else 1


if __name__ == "__main__":
    sys.exit(main())
