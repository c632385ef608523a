"""Chat's KV cache is bounded when the model loads: the context one request may use (the model's window, or what fits
in the memory left free) and the cache all replies may hold together, counted as the batch really keeps it."""

from __future__ import annotations

import ctypes
import threading

import pytest

from llama_space.errors import ModelLoadError, QueueFullError, UserError
from llama_space.inference.admission import Admission, MemoryBoundError, one_at_a_time, padded_batch
from llama_space.inference.context import KV_SHARE, kv_bytes_per_token, plan_context
from llama_space.inference.generation_params import GenerationParams
from llama_space.inference.manager import ModelManager
from llama_space.inference.prompting import normalize_messages
from llama_space.model import device_memory
from llama_space.settings import Settings
from llama_space.training.memory import llama31_8b_config

KIB = 1024


def test_llama31_8b_keeps_128_kib_of_cache_a_token_in_bf16():
    assert kv_bytes_per_token(llama31_8b_config(), 2) == 2 * 32 * 8 * 128 * 2 == 128 * KIB


def test_the_context_is_the_window_or_what_fits_and_a_setting_beyond_either_is_refused():
    per_token = 128 * KIB
    roomy = plan_context(131072, per_token, 60 * 2**30, "cuda")  # an 8B on an 80 GB card
    assert roomy.max_context == 131072 and roomy.kv_tokens > 131072 and "window" in roomy.reason
    small = plan_context(131072, per_token, 7 * 2**30, "cuda")  # an 8B on a 24 GB card
    assert small.max_context == small.kv_tokens == (int(7 * 2**30 * KV_SHARE["cuda"]) - 2**30) // per_token
    assert 30_000 < small.max_context < 40_000 and "fits in memory" in small.reason
    assert plan_context(131072, per_token, 7 * 2**30, "cuda", requested=8192).max_context == 8192
    with pytest.raises(ModelLoadError, match=r"--max-context 200000 is beyond the model's window of 131072"):
        plan_context(131072, per_token, 60 * 2**30, "cuda", requested=200_000)
    with pytest.raises(ModelLoadError, match=rf"--max-context 65536 does not fit: only {small.kv_tokens} tokens"):
        plan_context(131072, per_token, 7 * 2**30, "cuda", requested=65536)
    with pytest.raises(ModelLoadError, match="too little memory for chat"):
        plan_context(131072, per_token, 2**30, "cuda")


def test_a_batch_holds_rows_times_its_longest_row_and_waits_for_room():
    admission = Admission(limit=8, memory_wait=0.2)
    admission.measure(padded_batch)
    admission.set_capacity(1000)
    admission.enter(100)
    admission.enter(300)
    assert admission.tokens_in_use == 600  # two rows padded to 300, not 400
    with pytest.raises(QueueFullError, match="memory for chat on this server is taken by other replies"):
        admission.enter(400)  # 3 x 400 > 1000, though 100 + 300 + 400 would fit
    with pytest.raises(MemoryBoundError, match="needs KV cache for 1001 tokens"):
        admission.enter(1001)
    admitted = threading.Event()
    admission.memory_wait = 10
    waiter = threading.Thread(target=lambda: (admission.enter(400), admitted.set()))
    waiter.start()
    assert not admitted.wait(0.2)
    admission.leave(300)  # 2 x 400 fits now
    assert admitted.wait(5)
    waiter.join()
    assert (admission.in_flight, admission.tokens_in_use) == (2, 800)
    admission.bound_tokens(500)  # a shared job leaves less: the lower bound rules
    assert admission.token_limit == 500 and admission.capacity == 1000
    admission.bound_tokens(None)
    assert admission.token_limit == 1000


def test_replies_decoded_one_at_a_time_hold_the_largest():
    admission = Admission(limit=8)
    admission.measure(one_at_a_time)
    admission.set_capacity(1000)
    for size in (900, 800, 700):
        admission.enter(size)
    assert admission.tokens_in_use == 900


@pytest.fixture
def squeezed(tiny_model_dir, tmp_path, monkeypatch):
    """The tiny model (window 512) loaded where only 300 tokens of KV cache fit in the free memory's share."""
    probe = ModelManager(Settings(model=str(tiny_model_dir), dtype="float32", device="cpu", data_dir=tmp_path,
                                  adapters_dir=tmp_path / "adapters"))
    from transformers import AutoConfig

    per_token = kv_bytes_per_token(AutoConfig.from_pretrained(tiny_model_dir), 4)
    monkeypatch.setattr(device_memory, "free_memory", lambda device: int(300 * per_token / KV_SHARE["cpu"]) + 1)
    manager = probe.load()
    yield manager
    manager.close()


def test_a_model_whose_cache_would_not_fit_serves_a_smaller_context(squeezed):
    assert squeezed.context.max_context == squeezed.context_window == 300
    assert squeezed.admission.capacity == 300 and squeezed.admission.held is padded_batch
    greedy = GenerationParams(temperature=0, max_new_tokens=20)
    assert squeezed.generate(normalize_messages([], "Hello"), greedy)
    with pytest.raises(UserError, match=r"max_new_tokens \(300\) must be smaller than the model's context window "
                                        r"\(300 tokens\)"):
        squeezed.generate(normalize_messages([], "Hello"), GenerationParams(temperature=0, max_new_tokens=300))
    with pytest.raises(UserError, match=r"only 200 fit \(context window 300 minus max_new_tokens 100\)"):
        squeezed.generate(normalize_messages([], "word " * 400), GenerationParams(temperature=0, max_new_tokens=100))
    history = []
    for _ in range(6):
        history += [{"role": "user", "content": "tell me more " * 10}, {"role": "assistant", "content": "ok " * 20}]
    stream = squeezed.stream(normalize_messages(history, "and now?"), greedy)
    "".join(stream)
    assert stream.dropped_messages > 0 and stream.prompt_tokens + 20 <= 300


def test_max_context_beyond_the_window_stops_start_up_with_the_numbers(tiny_model_dir, tmp_path):
    settings = Settings(model=str(tiny_model_dir), dtype="float32", device="cpu", data_dir=tmp_path,
                        adapters_dir=tmp_path / "adapters", max_context=1000)
    with pytest.raises(ModelLoadError, match="--max-context 1000 is beyond the model's window of 512 tokens"):
        ModelManager(settings).load()
    with pytest.raises(UserError, match="max_context must be 0"):
        Settings(max_context=-1)


class FakeNvml:
    """libnvidia-ml's calls as ctypes makes them, for one GPU with `free` bytes free."""

    def __init__(self, free: int, count: int = 1) -> None:
        self.free, self.count, self.asked = free, count, []

    def nvmlInit_v2(self):
        return 0

    def nvmlShutdown(self):
        return 0

    def nvmlDeviceGetCount_v2(self, count):
        count._obj.value = self.count
        return 0

    def nvmlDeviceGetHandleByIndex_v2(self, index, handle):
        self.asked.append(index.value)
        return 0

    def nvmlDeviceGetHandleByUUID(self, uuid, handle):
        self.asked.append(uuid)
        return 0

    def nvmlDeviceGetMemoryInfo(self, handle, memory):
        memory._obj.free = self.free
        return 0


def test_free_gpu_memory_is_read_without_a_cuda_context(monkeypatch):
    """An app whose chat is remote plans jobs on the GPU without creating a CUDA context of its own (0.5 GB)."""
    import torch

    nvml = FakeNvml(free=70 * 2**30)
    monkeypatch.setattr(device_memory, "_load_nvml", lambda: nvml)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)

    def no_context(*args, **kwargs):
        raise AssertionError("torch.cuda.mem_get_info creates a CUDA context")

    monkeypatch.setattr(torch.cuda, "mem_get_info", no_context)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert device_memory.free_memory("cuda") == 70 * 2**30 and nvml.asked == [0]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-5a1e")
    assert device_memory.free_memory("cuda:0") == 70 * 2**30 and nvml.asked[-1] == b"GPU-5a1e"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    assert device_memory.free_memory("cuda:0") == 70 * 2**30 and nvml.asked[-1] == 3
    # Two GPUs in CUDA's own order (fastest first) need not be NVML's: torch is asked, context or not.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    nvml.count = 4
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda index: (5 * 2**30, 80 * 2**30))
    assert device_memory.free_memory("cuda:1") == 5 * 2**30
    monkeypatch.setenv("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    assert device_memory.free_memory("cuda:1") == 70 * 2**30 and nvml.asked[-1] == 3
    # With a context already made (chat served here), torch's own figure is used.
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    assert device_memory.free_memory("cuda:1") == 5 * 2**30
    # No driver library: torch.
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    monkeypatch.setattr(device_memory, "_load_nvml", lambda: None)
    assert device_memory.free_memory("cuda:1") == 5 * 2**30


def test_the_structure_matches_nvml_s_memory_record():
    assert [name for name, _ in device_memory._Memory._fields_] == ["total", "free", "used"]
    assert ctypes.sizeof(device_memory._Memory) == 24


def test_the_planner_counts_the_workspaces_and_an_optimizer_step_larger_than_backward():
    """Terms a CUDA job's measured peak holds: cuBLAS/cuBLASLt workspaces; and AdamW's temporaries, which matter only
    when they outgrow what backward freed (a large adapter over a short micro-batch)."""
    from llama_space.training import TrainingParams, memory

    config = llama31_8b_config()
    usual = memory.estimate(config, TrainingParams(), placement="shared", quantization="none", device="cuda",
                            served_dtype="bfloat16")
    assert usual.parts["cublas_workspace"] == memory.CUBLAS_WORKSPACE and usual.parts["optimizer_step"] == 0
    cpu = memory.estimate(config, TrainingParams(), placement="process", quantization="none", device="cpu",
                          served_dtype="float32")
    assert "cublas_workspace" not in cpu.parts
    wide = TrainingParams(lora_r=256, batch_size=1, max_length=16)
    big = memory.estimate(config, wide, placement="shared", quantization="none", device="cuda",
                          served_dtype="bfloat16")
    lora = memory.lora_parameters(memory.model_shape(config), wide)
    assert big.parts["optimizer_step"] == 4 * lora - big.parts["activations"] - big.parts["logits"] > 0
