"""Loading on CPU with dtype="auto": the dtype is chosen by timing, and the served weights stay exact."""

import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from llama_space.errors import ModelLoadError
from llama_space.model import loading


def fake_step_seconds(fp32: float, bf16: float):
    """A stand-in for loading._measure_decode: seconds per step by the model's dtype."""
    return lambda model, steps=4: fp32 if model.dtype == torch.float32 else bf16


def checkpoint_weights(directory) -> dict[str, torch.Tensor]:
    return load_file(directory / "model.safetensors")


def test_fp32_choice_serves_the_checkpoint_weights_bit_for_bit(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(loading, "_measure_decode", fake_step_seconds(fp32=0.010, bf16=0.020))
    model, _, _ = loading.load_model(str(tiny_model_dir), "cpu", "auto", tmp_path)
    expected = checkpoint_weights(tiny_model_dir)
    served = model.state_dict()
    assert model.dtype == torch.float32 and set(expected) <= set(served)
    for name, weight in expected.items():
        assert served[name].dtype == torch.float32 and torch.equal(served[name], weight), name


def test_served_weights_never_require_grad_and_a_shared_lora_trains_only_its_own(tiny_model_dir, tmp_path):
    """A shared job's LoRA set-up flips no flag on the served weights (dynamo guards on requires_grad: a flip
    would recompile the served decode step), and only the LoRA weights train."""
    from llama_space.model.sharing import plain_copy
    from llama_space.training import TrainingParams
    from llama_space.training.lora import add_lora

    model, _, _ = loading.load_model(str(tiny_model_dir), "cpu", "float32", tmp_path)
    assert not any(p.requires_grad for p in model.parameters())
    tree = add_lora(plain_copy(model), TrainingParams())
    trainable = {name for name, p in tree.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in name for name in trainable)
    assert not any(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize(("capability", "dtype"), [((7, 0), torch.float16), ((7, 5), torch.float16),
                                                 ((8, 0), torch.bfloat16), ((8, 9), torch.bfloat16),
                                                 ((9, 0), torch.bfloat16)])
def test_auto_dtype_on_a_gpu_is_bf16_only_where_it_is_native(capability, dtype, monkeypatch):
    asked = []
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index: asked.append(index) or capability)
    assert loading.gpu_dtype("cuda") == loading.gpu_dtype("cuda:1") == dtype
    assert asked == [0, 1]


GIB = 2**30
LLAMA_8B_BF16 = 16_060_522_496  # Llama-3.1-8B's weights in bfloat16


def test_one_gpu_when_it_fits_spread_when_only_together_else_refused_with_the_numbers():
    place = loading.gpu_placement
    assert place("cuda", LLAMA_8B_BF16, [24 * GIB], offload=False) == {"device_map": "cuda:0"}
    assert place("cuda", LLAMA_8B_BF16, [20 * GIB, 79 * GIB], offload=False) == {"device_map": "cuda:1"}
    spread = place("cuda", LLAMA_8B_BF16, [10 * GIB, 10 * GIB], offload=False)
    assert spread == {"device_map": "auto", "max_memory": {0: 9 * GIB, 1: 9 * GIB}}
    with pytest.raises(ModelLoadError) as refused:
        place("cuda", LLAMA_8B_BF16, [15 * GIB], offload=False)
    assert "16.1 GB" in str(refused.value) and "cuda:0 16.1 GB" in str(refused.value)
    assert "17.1 GB free" in str(refused.value) and "--offload" in str(refused.value)
    with pytest.raises(ModelLoadError, match="cuda:1 10.7 GB"):  # the GPU asked for, not the roomier one
        place("cuda:1", LLAMA_8B_BF16, [79 * GIB, 10 * GIB], offload=False)
    offloaded = place("cuda", LLAMA_8B_BF16, [15 * GIB], offload=True)
    assert offloaded["device_map"] == "auto" and offloaded["max_memory"][0] == 14 * GIB
    assert offloaded["max_memory"]["cpu"] > 0


def test_a_cuda_load_sizes_the_weights_in_the_gpus_dtype_before_loading(tiny_model_dir, tmp_path, monkeypatch):
    """The placement is decided from the config before any weight is read: fp16 on a T4, the GPUs' free memory."""
    asked = []

    def record(device, weights, free, offload):
        asked.append((device, weights, free, offload))
        raise ModelLoadError("placement recorded")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index: (7, 5))
    monkeypatch.setattr(loading, "free_gpu_memory", lambda: [15 * GIB])
    monkeypatch.setattr(loading, "gpu_placement", record)
    with pytest.raises(ModelLoadError, match="placement recorded"):
        loading.load_model(str(tiny_model_dir), "cuda", "auto", tmp_path, offload=True)
    parameters = sum(t.numel() for t in checkpoint_weights(tiny_model_dir).values())
    assert asked == [("cuda", parameters * 2, [15 * GIB], True)]


def test_bf16_choice_serves_bf16(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(loading, "_measure_decode", fake_step_seconds(fp32=0.020, bf16=0.010))
    model, _, _ = loading.load_model(str(tiny_model_dir), "cpu", "auto", tmp_path)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    expected = checkpoint_weights(tiny_model_dir)["model.embed_tokens.weight"]
    assert torch.equal(model.get_input_embeddings().weight, expected.to(torch.bfloat16))


@pytest.mark.parametrize(("fp32", "bf16", "chosen"), [
    (0.0100, 0.0098, torch.float32),  # bf16 2% faster: within the margin, fp32 is exact
    (0.0100, 0.0100, torch.float32),
    (0.0100, 0.0120, torch.float32),
    (0.0100, 0.0090, torch.bfloat16),  # 10% faster
])
def test_bf16_must_be_clearly_faster(tiny_model_dir, monkeypatch, fp32, bf16, chosen):
    from transformers import AutoModelForCausalLM

    monkeypatch.setattr(loading, "_measure_decode", fake_step_seconds(fp32, bf16))
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    assert loading.choose_cpu_dtype(model) == chosen
    assert model.dtype == torch.float32  # choosing never changes the model it times


def test_timings_alternate_between_the_dtypes(tiny_model_dir, monkeypatch):
    from transformers import AutoModelForCausalLM

    order = []
    monkeypatch.setattr(loading, "_measure_decode", lambda model, steps=4: order.append(model.dtype) or 0.01)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    loading.choose_cpu_dtype(model, rounds=3)
    assert order == [torch.float32, torch.bfloat16] * 4  # one warm-up each, then 3 alternating rounds


def test_timing_copy_decodes_like_a_cast_model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    copy = loading._copy_in(model, torch.bfloat16)
    cast = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval().to(torch.bfloat16)
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.inference_mode():
        assert torch.equal(copy(ids).logits, cast(ids).logits)
    assert model.dtype == torch.float32
    assert copy.lm_head.weight.data_ptr() == copy.get_input_embeddings().weight.data_ptr()  # ties kept


class Machine:
    """A fake clock and CPU counters for the ThreadGovernor: advance time with our and others' use."""

    def __init__(self) -> None:
        self.wall = self.busy = self.ours = 0.0

    def run(self, seconds: float, ours: float, others: float) -> None:
        self.wall += seconds
        self.ours += ours * seconds
        self.busy += (ours + others) * seconds

    def sample(self) -> tuple[float, float, float]:
        return self.wall, self.busy, self.ours


def governor_on(machine: Machine, chosen: list):
    from llama_space.inference.fast_decode import ThreadGovernor

    return ThreadGovernor(cores=2, sample=machine.sample, set_threads=chosen.append, clock=lambda: machine.wall)


def decode(governor, machine: Machine, seconds: float, others: float, step: float = 0.05) -> None:
    ids = torch.ones((1, 3), dtype=torch.long)
    for _ in range(round(seconds / step)):
        machine.run(step, ours=2.0, others=others)
        governor(ids, None)


def test_governor_ignores_what_others_did_while_the_engine_was_idle():
    # The batch engine keeps one governor across requests; between them a client or a benchmark's plain
    # generate kept both cores busy. The next reply, on a quiet machine, must start on both cores.
    machine, chosen = Machine(), []
    governor = governor_on(machine, chosen)
    decode(governor, machine, 2.0, others=0.0)
    machine.run(10.0, ours=0.0, others=2.0)
    decode(governor, machine, 2.0, others=0.0)
    assert chosen == [2]


def test_governor_still_decides_when_every_step_is_slow():
    machine, chosen = Machine(), []
    governor = governor_on(machine, chosen)
    decode(governor, machine, 30.0, others=1.0, step=3.0)  # a large model: 3 s a step, a neighbour on a core
    assert chosen == [1]


DECODE_AFTER_LOAD = """
import sys, threading
from pathlib import Path
import torch
from llama_space.model.loading import load_model

load_model(sys.argv[1], "cpu", "auto", Path(sys.argv[2]))

def sleeps() -> int:
    lines = (line for task in Path("/proc/self/task").iterdir() for line in (task / "status").read_text().splitlines())
    return sum(int(line.split()[1]) for line in lines if line.startswith("voluntary_ctxt_switches"))

def decode_like(result: list) -> None:
    x, w = torch.randn(1, 576), torch.randn(8192, 576)
    torch.nn.functional.linear(x, w)
    before = sleeps()
    for _ in range(200):
        torch.nn.functional.linear(x, w)
    result.append((sleeps() - before) / 200)

result = []
thread = threading.Thread(target=decode_like, args=(result,))
thread.start()
thread.join()
print(result[0])
"""


@pytest.mark.skipif((os.cpu_count() or 1) < 2 or not os.path.exists("/proc/self/task"),
                    reason="needs 2+ cores (an OpenMP pool) and Linux /proc")
def test_a_thread_decoding_after_load_keeps_its_openmp_threads_spinning(tiny_model_dir, tmp_path):
    # The app loads in the main thread and decodes in the batch engine's. A pool left behind in the loading
    # thread made libgomp put the decoding thread's workers to sleep at every parallel region (2 context
    # switches per matmul), halving decode speed on 2 cores.
    out = subprocess.run([sys.executable, "-c", DECODE_AFTER_LOAD, str(tiny_model_dir), str(tmp_path)],
                         capture_output=True, text=True, check=True, timeout=300)
    assert float(out.stdout.strip().splitlines()[-1]) < 1.0
