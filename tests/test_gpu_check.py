"""bench/gpu_check.py --tiny runs every phase on CPU and reports every figure (the GPU check CI can run)."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO

STREAM_FIGURES = ("aggregate_tps", "per_stream_decode_tps", "ttft_median_ms", "ttft_max_ms")
JOB_FIGURES = ("estimate_gb", "peak_memory_gb", "train_tokens_per_s", "chat_tps_during_training")


def test_tiny_gpu_check_reports_every_figure(embedded_dir):
    done = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_check.py"), "--tiny"], cwd=REPO,
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    for key in ("plain_generate_tps", "bandwidth_gb_s", "bandwidth_limit_tps", "weight_bytes",
                "served_one_stream_tps", "served_vs_plain", "served_vs_limit", "app_memory_gb"):
        assert result[key] > 0, key
    assert sorted(result["streams"], key=int) == ["1", "8", "32"]
    for n, figures in result["streams"].items():
        assert all(figures[key] > 0 for key in STREAM_FIGURES), (n, figures)
    for name, quantization in (("lora", "none"), ("qlora", "nf4")):
        job = result[name]
        assert job["state"] == "completed" and job["error"] is None, job
        assert job["placement"] in ("process", "shared") and job["quantization"] == quantization, job
        assert job["reason"] and job["chat_replies"] >= 1 and job["chat_failures"] == 0, job
        assert all(job[key] > 0 for key in JOB_FIGURES), (name, job)
    assert set(result["elapsed_s"]) == {"build model", "plain generate", "app start", "streams", "lora job",
                                        "qlora job"}
