"""QLoRA on CPU: the trainer's base in NF4, a job trained through the API, its adapter served on the plain base."""

from __future__ import annotations

import time

import pytest
from gradio_client import Client, handle_file

from llama_space import adapters

from jobutil import one_thread_jobs, write_alpaca  # noqa: F401 - autouse fixture: job processes use one thread

pytestmark = pytest.mark.slow  # training, export or app runs of many seconds: make test-fast leaves them out

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
PROMPT = "What is 3 plus 3?"


def test_nf4_base_has_4bit_linear_layers_with_double_quant(tiny_model_dir, tmp_path):
    import bitsandbytes as bnb
    import torch

    from llama_space.training import TrainingParams
    from llama_space.training.lora import add_lora, load_base

    model, _ = load_base(str(tiny_model_dir), tmp_path, "nf4")
    quantized = {name: m for name, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)}
    assert sorted({name.rsplit(".", 1)[-1] for name in quantized}) == sorted(LORA_TARGETS)
    assert len(quantized) == 2 * len(LORA_TARGETS)  # every Linear of both layers
    for module in quantized.values():
        state = module.weight.quant_state
        assert state.quant_type == "nf4" and state.nested  # nested: the absmax values are quantized too
        assert module.weight.dtype == torch.uint8 and module.weight.numel() * 2 == module.in_features * module.out_features
    assert not isinstance(model.get_output_embeddings(), bnb.nn.Linear4bit) and model.config.use_cache is False
    peft = add_lora(model, TrainingParams())
    # Embeddings (tied to the head here) stay frozen in the compute dtype (peft's prepare_model_for_kbit_training
    # would make them fp32), and their output requires grad, as QLoRA under checkpointing needs.
    embed = peft.get_input_embeddings()
    assert embed.weight.dtype == torch.float32 and not embed.weight.requires_grad
    assert embed(torch.tensor([[1, 2, 3]])).requires_grad
    trainable = [name for name, p in peft.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)


@pytest.fixture(scope="module")
def app(tiny_app):
    return tiny_app


@pytest.fixture(scope="module")
def client(app):
    return Client(app.url, verbose=False)


@pytest.fixture(scope="module")
def trained(client, tmp_path_factory):
    """A QLoRA job started through /start_training and polled through /job_status until it ended."""
    data = write_alpaca(tmp_path_factory.mktemp("qlora-data") / "sums.jsonl")
    job_id = client.predict(file=handle_file(str(data)), adapter_name="sums-nf4", preset="quick", max_steps=3,
                            quantization="nf4", api_name="/start_training")["job_id"]
    deadline = time.monotonic() + 240
    while (status := client.predict(job_id=job_id, api_name="/job_status"))["state"] in ("queued", "running"):
        assert time.monotonic() < deadline, status
        time.sleep(0.5)
    return status


def test_qlora_job_through_the_api_publishes_an_nf4_adapter(trained, app):
    from safetensors.torch import load_file

    assert trained["state"] == "completed", trained
    assert trained["step"] == trained["total_steps"] == 3 and trained["adapter"] == "sums-nf4"
    path = app.settings.adapters_dir / "sums-nf4"
    meta = adapters.read_metadata(path)
    assert meta["base_quantization"] == "nf4" and meta["hyperparameters"]["quantization"] == "nf4"
    weights = load_file(path / adapters.WEIGHTS_FILE)
    assert weights and all("lora_A" in k or "lora_B" in k for k in weights)  # no (quantized) base weights
    lora_b = [v for k, v in weights.items() if "lora_B" in k]
    assert len(lora_b) == 2 * len(LORA_TARGETS) and all(v.abs().max() > 0 for v in lora_b)  # B starts at zero


def test_chat_serves_the_adapter_on_the_unquantized_base(trained, app, client):
    import torch

    assert trained["state"] == "completed", trained
    manager = app.backend
    assert not any(type(m).__name__ == "Linear4bit" for m in manager.model.modules())
    assert "sums-nf4" in [item["name"] for item in client.predict(api_name="/list_adapters")]
    answer = client.predict(prompt=PROMPT, adapter="sums-nf4", max_new_tokens=8, temperature=0.0,
                            api_name="/generate")
    assert isinstance(answer, str) and answer
    ids = manager.tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    with torch.no_grad(), manager.holding_model("sums-nf4") as (model, is_peft):
        assert is_peft
        tuned = model(input_ids=ids, adapter_names=["sums-nf4"]).logits
        base = model(input_ids=ids, adapter_names=["__base__"]).logits
    assert (tuned - base).abs().max() > 1e-4  # the trained LoRA changes what the plain base computes
