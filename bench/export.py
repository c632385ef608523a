"""Merge time and peak memory: the streamed merge (llama_space/export/merge.py) vs PEFT's load + merge_and_unload.

Each way merges the same random LoRA (r=16, all linear layers) into the embedded SmolLM2-135M (fp32 checkpoint)
in its own process, so its peak RSS is its own; the baseline is that process's RSS after its imports.

    .venv/bin/python bench/export.py                  # both ways, the embedded model
    .venv/bin/python bench/export.py --ways streamed

It ends with the 8B estimate: the plan's memory formula for Llama-3.1-8B's largest LoRA-targeted weight, and
the time at the measured bytes per second (estimated, not measured: no 8B checkpoint on this machine).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
LLAMA_8B = {"hidden": 4096, "intermediate": 14336, "bytes": 16.06e9}  # bf16 weights (DESIGN.md)


def rss_mib(field: str = "VmRSS") -> float:
    return int(Path("/proc/self/status").read_text().split(f"{field}:")[1].split()[0]) / 1024


class Sampler(threading.Thread):
    """The largest anonymous (heap) and file-backed (mapped files) resident memory seen, every 5 ms."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.anon = self.file = 0.0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.005):
            self.anon, self.file = max(self.anon, rss_mib("RssAnon")), max(self.file, rss_mib("RssFile"))


def peak_mib() -> float:
    """VmHWM: the peak RSS of this process image (ru_maxrss would start at the forking parent's RSS)."""
    return rss_mib("VmHWM")


def child(way: str, base: Path, adapter: Path, out: Path) -> dict:
    """One merge in this process: seconds, baseline and peak RSS."""
    import torch  # noqa: F401 - imported before the baseline, as the export process has it loaded

    from llama_space.export import merge

    baseline, anon_baseline = rss_mib(), rss_mib("RssAnon")
    sampler = Sampler()
    sampler.start()
    start = time.perf_counter()
    if way == "streamed":
        merge.merge_adapter(merge.plan_merge(base, adapter), out)
    else:
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter).merge_and_unload()
        model.save_pretrained(out)
    seconds = time.perf_counter() - start
    sampler.stop.set()
    sampler.join()
    size = sum(p.stat().st_size for p in out.glob("*.safetensors"))
    return {"way": way, "seconds": round(seconds, 2), "baseline_rss_mib": round(baseline),
            "peak_rss_mib": round(peak_mib()), "peak_above_baseline_mib": round(peak_mib() - baseline),
            "peak_heap_above_baseline_mib": round(sampler.anon - anon_baseline), "peak_mapped_files_mib": round(sampler.file),
            "written_mb": round(size / 1e6), "mb_per_s": round(size / 1e6 / seconds)}


def estimate_8b(streamed: dict | None) -> dict:
    from llama_space.export import merge

    largest = LLAMA_8B["hidden"] * LLAMA_8B["intermediate"] * 4  # gate/up/down_proj in float32
    memory = 3 * largest + merge.PROCESS_BYTES
    estimate = {"model": "Llama-3.1-8B (bf16)", "estimated_peak_memory_gib": round(memory / 2**30, 2),
                "estimated_disk_gb": round(LLAMA_8B["bytes"] / 1e9, 1)}
    if streamed:
        estimate["estimated_seconds_at_measured_rate"] = round(LLAMA_8B["bytes"] / 1e6 / streamed["mb_per_s"])
    return estimate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ways", default="streamed,peft")
    parser.add_argument("--child", nargs=4, metavar=("WAY", "BASE", "ADAPTER", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        way, base, adapter, out = args.child
        print(json.dumps(child(way, Path(base), Path(adapter), Path(out))))
        return
    from bench.common import machine
    from llama_space.model.source import embedded_checkpoint

    from adapterutil import random_adapter

    base = Path(embedded_checkpoint(REPO / "data" / "cache"))
    results = {"machine": machine(), "model": base.name}
    with tempfile.TemporaryDirectory() as tmp:
        adapter = random_adapter(base, Path(tmp) / "lora", r=16, targets=ALL_LINEAR)
        for way in args.ways.split(","):
            line = subprocess.run([sys.executable, __file__, "--child", way, str(base), str(adapter),
                                   str(Path(tmp) / f"merged-{way}")], check=True, capture_output=True,
                                  text=True).stdout.strip().splitlines()[-1]
            results[way] = json.loads(line)
    results["8b"] = estimate_8b(results.get("streamed"))
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
