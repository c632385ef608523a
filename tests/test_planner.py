"""The memory arithmetic and the planner on Llama-3.1-8B's config (built on the meta device, nothing downloaded)."""

from __future__ import annotations

import pytest

from llama_space.errors import UserError
from llama_space.model import device_memory
from llama_space.training import TrainingParams, memory, planner

GiB, MiB = 2**30, 2**20
A10G, L40S, H100 = 23028 * MiB, 46068 * MiB, 81559 * MiB  # what nvidia-smi reports for the 24, 48 and 80 GB cards


@pytest.fixture(scope="module")
def config():
    return memory.llama31_8b_config()


def beside_chat(config, total: int) -> int:
    """Free memory on a GPU of `total` bytes once chat serves the 8B model in bf16 there."""
    return total - memory.served_bytes(config, "bfloat16", "cuda")


def test_8b_sizes_match_the_published_arithmetic(config):
    shape = memory.model_shape(config)
    assert shape.params == 8_030_261_248  # Llama-3.1-8B: 8.03 B parameters
    assert memory.served_bytes(config, "bfloat16", "cpu") == pytest.approx(16.06e9, abs=0.005e9)
    assert memory.kv_bytes_per_token(shape, "bfloat16") == 128 * 1024
    assert memory.lora_parameters(shape, TrainingParams(lora_r=8)) == 20_971_520
    assert memory.lora_parameters(shape, TrainingParams(lora_r=16, target_modules=["q_proj"])) == 32 * 16 * 8192
    process = memory.estimate(config, TrainingParams(), placement="process", quantization="none", device="cuda",
                              served_dtype="bfloat16")
    assert process.parts["base_weights"] == shape.params * 2
    assert process.parts["lora_state"] == pytest.approx(0.34e9, abs=0.005e9)  # fp32 weights, grads, AdamW


def test_activations_at_4_by_384_are_about_4_gb_mostly_logits(config):
    """Batch 4 x 384 with checkpointing: ~4 GB, most of it the 1536 x 128,256 logits (full, unchunked loss)."""
    full = memory.estimate(config, TrainingParams(), placement="shared", quantization="none", device="cuda",
                           served_dtype="bfloat16", checkpointing=True, logits_budget=None)
    dynamic = full.parts["activations"] + full.parts["logits"]
    assert 3.5e9 <= dynamic <= 4.5e9, dynamic
    assert full.parts["logits"] > 3 * full.parts["activations"]
    # The bf16 logits and their gradient beside the saved fp32 log-softmax and its gradients in and out.
    assert full.parts["logits"] >= 1536 * 128256 * (12 + 4)
    chunked = memory.estimate(config, TrainingParams(), placement="shared", quantization="none", device="cuda",
                              served_dtype="bfloat16", checkpointing=True)  # SFT's chunked loss
    assert chunked.parts["logits"] < full.parts["logits"] / 4
    no_checkpointing = memory.estimate(config, TrainingParams(), placement="shared", quantization="none",
                                       device="cuda", served_dtype="bfloat16", checkpointing=False)
    assert no_checkpointing.parts["activations"] > 8 * chunked.parts["activations"]


def test_nf4_base_is_4_127_bits_for_linear_weights_bf16_for_the_rest(config):
    shape = memory.model_shape(config)
    qlora = memory.estimate(config, TrainingParams(), placement="process", quantization="nf4", device="cuda",
                            served_dtype="bfloat16")
    embeddings = 2 * 128256 * 4096  # input embeddings and the untied lm_head stay in bf16
    assert shape.params - shape.quantizable == embeddings + 65 * 4096  # + 65 RMSNorm weight vectors
    assert qlora.parts["base_weights"] == pytest.approx(shape.quantizable * 4.127 / 8 + 2 * (shape.params -
                                                                                            shape.quantizable))
    assert 5.6e9 < qlora.parts["base_weights"] < 5.8e9


def test_24_gb_gpu_serving_8b_trains_shared(config):
    free = beside_chat(config, A10G)
    assert 7e9 < free < 8e9
    chosen = planner.plan(config, TrainingParams(), free_bytes=free, device="cuda", served_dtype="bfloat16")
    assert (chosen.placement, chosen.quantization) == ("shared", "none")
    assert chosen.estimate.total_bytes <= free and chosen.estimate.parts["base_weights"] == 0
    assert [c.name for c in chosen.candidates] == ["process", "shared", "QLoRA"]
    assert chosen.candidates[0].total_bytes > free  # no room for a second bf16 copy
    assert "served weights" in chosen.reason and f"{free / 1e9:.1f} GB free" in chosen.reason


def test_80_gb_gpu_trains_in_its_own_process(config):
    chosen = planner.plan(config, TrainingParams(), free_bytes=beside_chat(config, H100), device="cuda",
                          served_dtype="bfloat16")
    assert (chosen.placement, chosen.quantization) == ("process", "none")
    assert not chosen.estimate.checkpointing  # auto: the job fits without recomputing activations
    tight = planner.plan(config, TrainingParams(), free_bytes=beside_chat(config, L40S), device="cuda",
                         served_dtype="bfloat16")
    assert tight.placement == "process" and tight.estimate.checkpointing  # 48 GB: only with checkpointing


def test_qlora_when_only_it_fits_and_12_gb_refuses_a_bf16_copy(config):
    """A 12 GB GPU with chat on a remote backend: the bf16 base (16 GB) cannot fit, NF4 can."""
    free, remote = 12 * GiB - memory.CUDA_CONTEXT, {"served_in_process": False}
    chosen = planner.plan(config, TrainingParams(), free_bytes=free, device="cuda", served_dtype="bfloat16",
                          **remote)
    assert (chosen.placement, chosen.quantization) == ("process", "nf4")
    assert [c.name for c in chosen.candidates] == ["process", "QLoRA"]  # nothing served here to share
    assert chosen.estimate.parts["kv_reserve"] == 0 and "NF4" in chosen.reason
    with pytest.raises(UserError) as refused:
        planner.plan(config, TrainingParams(placement="process"), free_bytes=free, device="cuda",
                     served_dtype="bfloat16", **remote)
    need = chosen.candidates[0].total_bytes
    assert f"needs about {need / 1e9:.1f} GB, {free / 1e9:.1f} GB free" in str(refused.value)
    assert "lower max_length or batch_size" in str(refused.value) and "QLoRA" in str(refused.value)


def test_nothing_fits_is_refused_with_every_way_s_numbers(config):
    params = TrainingParams(max_length=4096, batch_size=8, gradient_checkpointing="off")
    with pytest.raises(UserError) as refused:
        planner.plan(config, params, free_bytes=beside_chat(config, A10G), device="cuda", served_dtype="bfloat16")
    text = str(refused.value)
    assert text.count(" GB") == 5 and "process" in text and "shared" in text and "QLoRA" in text
    assert "gradient_checkpointing" in text and "choose QLoRA" not in text  # QLoRA was tried


def test_placement_and_quantization_constrain_the_choice(config):
    free = beside_chat(config, H100)
    shared = planner.plan(config, TrainingParams(placement="shared"), free_bytes=free, device="cuda",
                          served_dtype="bfloat16")
    assert shared.placement == "shared" and len(shared.candidates) == 1
    nf4 = planner.plan(config, TrainingParams(quantization="nf4"), free_bytes=free, device="cuda",
                       served_dtype="bfloat16")
    assert (nf4.placement, nf4.quantization) == ("process", "nf4")
    with pytest.raises(UserError, match="cannot share the served weights"):
        planner.plan(config, TrainingParams(placement="shared", quantization="nf4"), free_bytes=free,
                     device="cuda", served_dtype="bfloat16")
    with pytest.raises(UserError, match="remote backend"):
        planner.plan(config, TrainingParams(placement="shared"), free_bytes=free, device="cuda",
                     served_dtype="bfloat16", served_in_process=False)


def test_cpu_estimates_fp32_copies_and_free_memory_is_available_ram(config):
    cpu = memory.estimate(config, TrainingParams(), placement="process", quantization="none", device="cpu",
                          served_dtype="float32")
    assert cpu.parts["base_weights"] == memory.model_shape(config).params * 4  # lora.load_base: fp32 on CPU
    assert cpu.parts["overhead"] >= memory.CPU_PROCESS
    with open("/proc/meminfo") as f:
        meminfo = dict(line.split(":", 1) for line in f)
    available = int(meminfo["MemAvailable"].split()[0]) * 1024
    assert abs(device_memory.free_memory("cpu") - available) < 0.2 * available


def test_importing_the_planner_and_the_methods_loads_nothing_heavy():
    import subprocess
    import sys

    code = ("import sys, llama_space.training.planner, llama_space.training.methods; "
            "print(sorted(m for m in ('torch', 'transformers', 'peft', 'gradio') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
