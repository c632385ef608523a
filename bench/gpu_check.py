"""GPU check: Llama-3.1-8B's exact shape (random bf16 weights, a tokenizer trained here; nothing downloaded) served
and trained by the app's own layers in this process, with no web layer.

    python bench/gpu_check.py                   # one H100-class card, at most about 5 minutes
    python bench/gpu_check.py --gpu-mem-gb 40   # the smaller card of the last phase: 40 GB instead of 24
    python bench/gpu_check.py --tiny            # a 2-layer model with Llama 3's vocabulary on CPU, well under a minute

On a lent GPU machine (no network, no gradio, datasets or bitsandbytes): `bash bench/gpu_wheels.sh` here, then
the one-line command it prints, carrying dist/gpu-wheels.

Phases, in order (bench/gpu_model.py, gpu_decode.py, gpu_jobs.py):
1. build: the tokenizer and the model, made on the device and saved (the app and a job process load from disk);
2. eager: the app's ModelManager (compile off, batching up to 32 requests), built with the service layer as the
   web server builds it; plain greedy `generate` on its weights against its served path, one stream, and the
   memory-bandwidth limit of one stream;
3. streams: 1, 8 and 32 replies at once (aggregate tok/s, worst time to first token);
4. shared job: a LoRA job on the served weights (placement shared) while chat streams; chat tok/s alone vs
   during, training tok/s, the planner's estimate against the measured peak;
5. process job: the same job in its own process (placement process);
6. small card: the same job (placement auto) with the card filled but --gpu-mem-gb GB (default 24, an A10G);
7. QLoRA: the job in NF4 (where bitsandbytes imports; skipped otherwise);
8. compiled: the app's ModelManager with its compiled decode step (compile on), plain and served, one stream.
Every phase that fails is recorded with its message and the next one runs; a phase that would not fit in
what is left of --budget-s is skipped. The run always ends with a table (each target with pass or fail) and
one JSON line.
"""

from __future__ import annotations

import argparse
import gc
import json
import signal
import sys
import tempfile
import time
import traceback
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ is not a package
from gpu_report import print_table, targets
from gpu_run import Run, Terminated

import common


class Size(NamedTuple):
    """How much each phase does, and about how long each takes (the budget skips what would not fit)."""

    reply_tokens: int  # tokens of each chat reply
    rounds: int  # timed replies per one-stream figure
    answer_words: int  # words of each training row's answer
    steps: int  # optimizer steps of each job
    budget_s: float  # the whole run's default budget
    need_s: dict  # phase -> seconds it needs at least


# Estimates for one H100 (no GPU run has calibrated them yet): loading 16 GB, a 128-token eager reply of ~4 s, a job
# process's start and load, and the compiled app's warm-up (inductor and CUDA graphs, cold cache) are most of it.
FULL_NEEDS = {"build": 60, "eager": 40, "streams": 30, "shared job": 40, "process job": 60, "small card": 40,
              "qlora": 75, "compiled": 100}
TINY_NEEDS = {name: 2 for name in FULL_NEEDS}
# Full: rows of ~330 tokens (batch 4 x 384 tokens at most, as the defaults); the budget leaves 5 minutes with
# the interpreter's start, the imports and the teardown.
SIZES = {"full": Size(128, 2, 300, 8, 270, FULL_NEEDS), "tiny": Size(16, 2, 20, 2, 150, TINY_NEEDS)}
MAX_LENGTH = 384  # the jobs' max_length: TrainingParams' default
STREAMS = [1, 8, 32]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="a small config on CPU (what the tests run)")
    parser.add_argument("--gpu-mem-gb", type=float, default=24, help="GB of the smaller card of the small-card "
                        "phase (0 leaves the phase out)")
    parser.add_argument("--budget-s", type=float, default=None, help="seconds the phases may take together")
    parser.add_argument("--work", type=Path, default=common.REPO / "data" / "cache" / "gpu-check",
                        help="where the model is built (reused when complete)")
    parser.add_argument("--json-out", type=Path, default=None, help="also write the JSON line to this file")
    return parser.parse_args(argv)


def release() -> None:
    """Give the memory of dropped tensors back (module trees hold reference cycles), to the device too."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def serve(model_dir: Path, work: Path, device: str, dtype: str, compile_mode: str, concurrency: int):
    """The app's services over a loaded ModelManager, built as web.server.build_app builds them (no web layer)."""
    from llama_space.inference.backend import make_backend
    from llama_space.service.permissions import Permissions
    from llama_space.service.services import Services
    from llama_space.settings import Settings

    settings = Settings(model=str(model_dir), device=device, dtype=dtype, compile=compile_mode,
                        concurrency=concurrency, max_queue=2 * concurrency, data_dir=work / "data",
                        adapters_dir=work / "adapters")
    return Services.build(make_backend(settings).load(), Permissions(settings))


def job_params(placement: str, steps: int, quantization: str = "none"):
    """The jobs' parameters: the quick preset (batch 4, no accumulation), `steps` steps, no checkpoint."""
    from llama_space.service.actions import Actions

    return Actions.params("quick", {"max_steps": steps, "max_length": MAX_LENGTH, "save_steps": 10**6,
                                    "placement": placement, "quantization": quantization})


def bitsandbytes_missing() -> str:
    """Why QLoRA cannot run here ("" when bitsandbytes imports)."""
    try:
        import bitsandbytes  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - any failure to import means no QLoRA
        return f"bitsandbytes does not import ({type(exc).__name__})"
    return ""


def eager_phase(state: dict, model_dir: Path, work: Path, device: str, dtype: str, size: Size, result: dict) -> None:
    """The app on the model, decoding eagerly with batching: plain against served, one stream; the limit."""
    from gpu_decode import bandwidth, plain_generate, served_one_stream

    started = time.perf_counter()
    state["services"] = serve(model_dir, work, device, dtype, "off", max(STREAMS))
    manager = state["services"].backend
    result["eager"] = {"load_s": round(time.perf_counter() - started, 1)}
    result["bandwidth"] = bandwidth(manager)
    result["eager"]["plain_generate_tps"] = plain_generate(manager, size.reply_tokens, size.rounds)
    result["eager"]["served_tps"] = served_one_stream(manager, size.reply_tokens, size.rounds)


def shared_phase(services, rows: Path, size: Size, per_example: float, timeout: float, alone: float | None) -> dict:
    """A shared LoRA job with chat streaming beside it; chat alone is the eager phase's served figure (the same
    replies on the same app), measured here if that phase has none."""
    from gpu_decode import served_one_stream
    from gpu_jobs import train

    alone = alone or served_one_stream(services.backend, size.reply_tokens, size.rounds)
    job = train(services, rows, job_params("shared", size.steps), per_example, timeout, size.reply_tokens)
    return {**job, "chat_tps_alone": alone}


def small_card_phase(services, rows: Path, size: Size, per_example: float, timeout: float, gb: float,
                     device: str) -> dict:
    """The job with placement auto while the card is filled but `gb` GB (gpu_jobs.card_of)."""
    from gpu_jobs import card_of, train

    with card_of(gb, device) as held:
        job = train(services, rows, job_params("auto", size.steps), per_example, timeout)
    return {**job, "card_gb": gb, "held_gb": held}


def compiled_phase(state: dict, model_dir: Path, work: Path, device: str, dtype: str, size: Size,
                   result: dict) -> None:
    """The app with its decode step compiled (serving one request at a time): plain and served, one stream.
    Fails (after recording the figures) when compiling fell back to eager decoding."""
    from gpu_decode import plain_generate, served_one_stream

    started = time.perf_counter()
    with compile_backend("inductor" if device.startswith("cuda") else "eager"):
        state["services"] = serve(model_dir, work, device, dtype, "on", 1)
    manager = state["services"].backend
    compiled = manager.model.generation_config.compile_config is not None
    result["compiled"] = {"load_s": round(time.perf_counter() - started, 1), "compiled": compiled,
                          "plain_generate_tps": plain_generate(manager, size.reply_tokens, size.rounds),
                          "served_tps": served_one_stream(manager, size.reply_tokens, size.rounds)}
    if not compiled:
        raise RuntimeError("compiling the decode step failed and the app decodes eagerly (its log says why)")


@contextmanager
def compile_backend(backend: str):
    """The app's decode step compiled with torch.compile `backend` while the block loads a model. The app uses
    inductor everywhere; on CPU (--tiny) the check uses dynamo's eager backend: the static cache, dynamo's graph
    capture and the one-at-a-time serving run as on the GPU, without inductor's 80 s of C++ code generation."""
    from llama_space.inference import manager

    original = manager.prepare_decode
    manager.prepare_decode = partial(original, backend=backend)
    try:
        yield
    finally:
        manager.prepare_decode = original


def close(state: dict) -> None:
    """Close the app's services (a shared job checkpoints and stops) and free their memory."""
    services = state.pop("services", None)
    if services is not None:
        services.close()
        del services
    release()


def run_check(args: argparse.Namespace, run: Run, result: dict) -> None:
    """Every phase in order, each one's figures into `result`."""
    import torch
    from gpu_decode import streams
    from gpu_jobs import example_tokens, finished, train, write_rows
    from gpu_model import build_model

    size = SIZES["tiny" if args.tiny else "full"]
    device, dtype = ("cpu", "float32") if args.tiny else ("cuda", "bfloat16")
    no_cuda = "" if args.tiny or torch.cuda.is_available() else "no CUDA device (--tiny runs on CPU)"
    result["device"] = torch.cuda.get_device_name() if device == "cuda" and not no_cuda else common.machine()["cpu"]
    model_dir = run.phase("build", lambda: build_model(args.work / ("tiny" if args.tiny else "llama31-8b-random"),
                                                       args.tiny, device), skip=no_cuda)
    release()
    state: dict = {}
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as scratch:
        work = Path(scratch)
        rows = write_rows(work / "rows.jsonl", size.answer_words)
        no_model = "" if model_dir else "the model was not built"
        run.phase("eager", lambda: eager_phase(state, model_dir, work, device, dtype, size, result), skip=no_model)
        services = state.get("services")
        no_app = "" if services else "the app did not start"
        run.phase("streams", lambda: result.update(streams=streams(services.backend, STREAMS, size.reply_tokens)),
                  skip=no_app)
        per_example = example_tokens(services.backend.tokenizer, rows, MAX_LENGTH) if services else 0.0
        jobs = result.setdefault("jobs", {})

        def job_timeout() -> float:
            return max(30.0, run.left())

        def job(name: str, work, skip: str = "") -> None:
            run.phase(name, lambda: finished(jobs, name.removesuffix(" job"), work()), skip=no_app or skip)

        job("shared job", lambda: shared_phase(services, rows, size, per_example, job_timeout(),
                                               result.get("eager", {}).get("served_tps")))
        job("process job", lambda: train(services, rows, job_params("process", size.steps), per_example,
                                         job_timeout()))
        job("small card", lambda: small_card_phase(services, rows, size, per_example, job_timeout(),
                                                   args.gpu_mem_gb, device),
            skip=("" if args.gpu_mem_gb else "--gpu-mem-gb 0") if device == "cuda" else "no card to fill on CPU")
        job("qlora", lambda: train(services, rows, job_params("process", size.steps, "nf4"), per_example,
                                   job_timeout()), skip=bitsandbytes_missing())
        services = None  # the eager model's weights go with the last reference: the compiled app loads its own
        close(state)
        run.phase("compiled", lambda: compiled_phase(state, model_dir, work, device, dtype, size, result),
                  skip=no_model)
        close(state)


def main(argv: list[str] | None = None) -> int:
    """Run the check; print the table and the JSON line whatever happens. Exit status 1 when a phase failed."""
    from llama_space.settings import prepare_cuda_allocator

    prepare_cuda_allocator()  # as app.py does, before torch is imported
    args = parse_args(argv)
    size = SIZES["tiny" if args.tiny else "full"]
    run = Run(args.budget_s or size.budget_s, size.need_s)
    result: dict = {"tiny": args.tiny, "budget_s": run.budget_s}

    def terminate(_signum, _frame):
        raise Terminated("terminated (SIGTERM)")

    signal.signal(signal.SIGTERM, terminate)
    try:
        result["versions"] = versions()
        run_check(args, run, result)
    except (Exception, Terminated) as exc:  # noqa: BLE001 - outside any phase: still report what was measured
        traceback.print_exc()
        result["error"] = f"{type(exc).__name__}: {exc}"
    result["phases"] = run.phases
    result["elapsed_s"] = round(time.perf_counter() - run.started, 1)
    result["targets"] = targets(result)
    print_table(result)
    print(json.dumps(result), flush=True)
    if args.json_out:
        args.json_out.write_text(json.dumps(result, indent=1) + "\n")
    failed = "error" in result or any(p["state"] == "failed" for p in run.phases.values())
    return 1 if failed else 0


def versions() -> dict:
    """The versions the figures were measured with."""
    from importlib.metadata import PackageNotFoundError, version

    import torch

    found = {"python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.version.cuda}
    for name in ("transformers", "peft", "accelerate", "tokenizers", "huggingface_hub", "safetensors"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


if __name__ == "__main__":
    sys.exit(main())
