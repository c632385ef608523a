"""bench/gpu_check.py --tiny runs every phase on CPU and reports every figure (the GPU check CI can run); the
benchmarks' transport-only app serves the real routes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO

pytestmark = pytest.mark.slow  # training, export or app runs of many seconds: make test-fast leaves them out

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


def test_the_transport_only_app_serves_every_route():
    """bench/chat.py times the transport alone against bench/serving.py's instant fake model: it must be the
    app's routes and queue (it broke once when the routes moved into the app's constructor)."""
    import httpx
    from gradio_client import Client

    from llama_space.inference.backend import ChatBackend
    from llama_space.settings import Settings

    sys.path.insert(0, str(REPO / "bench"))
    import serving

    assert isinstance(serving.FakeBackend(Settings()), ChatBackend)
    with serving.served_app("fake", fake=True) as url:
        rest = httpx.post(f"{url}/", json={"prompt": "Hi", "max_new_tokens": 3}, timeout=30)
        v1 = httpx.post(f"{url}/v1/chat/completions", timeout=30,
                        json={"model": "fake", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3})
        gradio = Client(url, verbose=False).predict(prompt="Hi", max_new_tokens=3, api_name="/generate")
    assert rest.status_code == 200 and rest.json()["response"] == "word " * 3, rest.text[:300]
    assert v1.status_code == 200 and v1.json()["choices"][0]["message"]["content"] == "word " * 3, v1.text[:300]
    assert gradio == "word " * 3
