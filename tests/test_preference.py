"""Preference data and methods: the three row shapes are recognised and checked per row, the report previews both
sides, DPO and ORPO train a LoRA through our job (LoRA weights change, the base does not), a job continues from an
adapter with its lineage recorded, and the planner counts what a preference step holds."""

from __future__ import annotations

import json

import pytest

from llama_space import adapters
from llama_space.data import build_preference_examples, validate_any
from llama_space.data.preference import scan_preferences
from llama_space.errors import UserError
from llama_space.jobs import files as jobfiles
from llama_space.training import memory
from llama_space.training.job_config import TrainingJobConfig
from llama_space.training.params import TrainingParams

from conftest import REPO

REPO_PERSONA = REPO / "examples" / "persona.jsonl"
PAIRS = [{"prompt": f"Greet me, number {i}", "chosen": f"Ahoy, friend {i}!", "rejected": f"Go away {i}."}
         for i in range(8)]


def write_jsonl(path, rows):
    path.write_text("\n".join(json.dumps(row) for row in rows))
    return path


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_the_three_shapes_read_to_the_same_pair(tmp_path):
    messages = [{"chosen": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Ahoy!"}],
                 "rejected": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}],
                 "prompt": "Hi"}]
    hh = [{"chosen": "\n\nHuman: Hi\n\nAssistant: Ahoy!", "rejected": "\n\nHuman: Hi\n\nAssistant: Hello."}]
    pairs = [{"prompt": "Hi", "chosen": "Ahoy!", "rejected": "Hello."}]
    found = {}
    for name, rows in (("messages", messages), ("transcripts", hh), ("pairs", pairs)):
        scan = scan_preferences(write_jsonl(tmp_path / f"{name}.jsonl", rows))
        assert scan.data_format == name and not scan.errors
        found[name] = scan.pairs[0][1]
    assert found["messages"] == found["transcripts"] == found["pairs"]
    assert found["pairs"].prompt == [{"role": "user", "content": "Hi"}] and found["pairs"].chosen == "Ahoy!"


def test_rows_are_checked_one_by_one(tmp_path, tokenizer):
    rows = [PAIRS[0], {"prompt": "a", "chosen": "", "rejected": "b"}, {"prompt": "a", "chosen": "same",
            "rejected": "same"}, {"prompt": "word " * 200, "chosen": "x", "rejected": "y"}, PAIRS[0]]
    report = validate_any(write_jsonl(tmp_path / "p.jsonl", rows), tokenizer, 64)
    assert report["kind"] == "preference" and report["format"] == "pairs" and report["ok"]
    assert report["valid_rows"] == 1 and report["duplicates"] == 1 and report["skipped_rows"] == 4
    messages = {error["row"]: error["message"] for error in report["errors"]}
    assert "'chosen' is empty" in messages[2] and "identical" in messages[3] and "over max_length=64" in messages[4]
    [preview] = report["preview"]
    assert "masked" in preview and "chosen</b> (" in preview and "Go away 0." in preview and "Ahoy, friend 0!" in preview


def test_pairs_are_rendered_with_the_template_and_the_job_s_system_prompt(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "p.jsonl", PAIRS[:2])
    [example, _] = build_preference_examples(path, tokenizer, 64, system_prompt="You are a pirate.")
    prompt = tokenizer.decode(example["prompt_ids"])
    assert "You are a pirate." in prompt and prompt.rstrip().endswith("assistant")
    assert tokenizer.decode(example["chosen_ids"]).startswith("Ahoy, friend 0!<|im_end|>")
    with pytest.raises(UserError, match="None of the 1 preference rows is usable"):
        build_preference_examples(write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "a", "chosen": "b",
                                                                         "rejected": "b"}]), tokenizer, 64)


def test_a_preference_step_holds_two_sequences_and_a_reference_forward():
    config = memory.llama31_8b_config()
    way = {"placement": "process", "quantization": "none", "device": "cuda", "served_dtype": "bfloat16",
           "checkpointing": True}
    sft, dpo = (memory.estimate(config, TrainingParams(method=m), **way) for m in ("sft", "dpo"))
    orpo = memory.estimate(config, TrainingParams(method="orpo"), **way)
    assert dpo.parts["reference_forward"] > 0 and "reference_forward" not in orpo.parts
    assert dpo.parts["activations"] > 2 * sft.parts["activations"] and dpo.total_bytes > orpo.total_bytes > sft.total_bytes


def run_job(tmp_path, model_dir, data, name, **params):
    from llama_space.training import train

    job = tmp_path / f"job-{name}"
    job.mkdir()
    config = TrainingJobConfig(adapter=name, dataset=str(data), adapters_dir=str(tmp_path / "adapters"),
                               cache_dir=str(tmp_path / "cache"), model=str(model_dir),
                               params=TrainingParams(max_steps=2, batch_size=2, grad_accum=1, max_length=64,
                                                     learning_rate=1e-2, **params))
    (job / jobfiles.JOB_FILE).write_text(json.dumps(config.to_dict()))
    (job / jobfiles.STATUS_FILE).write_text(json.dumps({"state": "queued"}))
    assert train.run(job, False) == 0, (job / jobfiles.STATUS_FILE).read_text()
    return tmp_path / "adapters" / name


def test_dpo_and_orpo_train_a_lora_and_continue_from_an_adapter(tmp_path, tiny_model_dir):
    from safetensors.torch import load_file

    data = write_jsonl(tmp_path / "pairs.jsonl", PAIRS)
    first = run_job(tmp_path, tiny_model_dir, data, "dpo-1", method="dpo", system_prompt="You are a pirate.")
    assert sorted(p.name for p in first.iterdir()) == [adapters.CONFIG_FILE, adapters.WEIGHTS_FILE,
                                                       adapters.METADATA_FILE]
    weights = load_file(first / adapters.WEIGHTS_FILE)
    assert any("lora_B" in key and value.abs().sum() > 0 for key, value in weights.items())  # B starts at zero
    meta = adapters.read_metadata(first)
    assert (meta["method"], meta["system_prompt"], meta["lineage"]) == ("dpo", "You are a pirate.", [])

    second = run_job(tmp_path, tiny_model_dir, data, "orpo-2", method="orpo", from_adapter="dpo-1")
    meta = adapters.read_metadata(second)
    assert meta["parent_adapter"] == "dpo-1" and [a["adapter"] for a in meta["lineage"]] == ["dpo-1"]
    assert meta["lineage"][0]["method"] == "dpo"
    assert load_file(second / adapters.WEIGHTS_FILE).keys() == weights.keys()
    changed = load_file(second / adapters.WEIGHTS_FILE)
    assert any(not changed[key].equal(weights[key]) for key in weights)


def test_continuing_from_a_missing_adapter_is_refused(tmp_path):
    with pytest.raises(UserError, match="no adapter named 'ghost'"):
        adapters.lineage_of(tmp_path, "ghost", "m")
    with pytest.raises(UserError, match="Invalid adapter name"):
        TrainingParams(from_adapter="../x")
    assert TrainingParams(from_adapter="base").from_adapter == ""


@pytest.mark.parametrize("method", ["dpo", "orpo"])
def test_preference_trains_on_shared_weights_and_leaves_the_served_model_as_it_was(tmp_path, tiny_model_dir, method):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llama_space.model.sharing import plain_copy
    from llama_space.training import train
    from llama_space.training.shared import SharedBase

    served = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    before = {name: tensor.clone() for name, tensor in served.state_dict().items()}
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.inference_mode():
        logits = served(ids).logits
    copy = plain_copy(served)
    copy.config.use_cache = False
    job = tmp_path / "job"
    job.mkdir()
    config = TrainingJobConfig(adapter=f"shared-{method}", dataset=str(write_jsonl(tmp_path / "p.jsonl", PAIRS)),
                               adapters_dir=str(tmp_path / "adapters"), cache_dir=str(tmp_path / "cache"),
                               model=str(tiny_model_dir), params=TrainingParams(
                                   method=method, max_steps=2, batch_size=2, grad_accum=1, max_length=64,
                                   learning_rate=1e-2, placement="shared"))
    (job / jobfiles.JOB_FILE).write_text(json.dumps(config.to_dict()))
    (job / jobfiles.STATUS_FILE).write_text(json.dumps({"state": "queued"}))
    assert train.run(job, False, SharedBase(copy, AutoTokenizer.from_pretrained(tiny_model_dir))) == 0
    assert adapters.is_complete(tmp_path / "adapters" / f"shared-{method}")
    assert all(served.state_dict()[name].equal(tensor) for name, tensor in before.items())
    with torch.inference_mode():
        assert served(ids).logits.equal(logits)  # its forward is its own: the trained tree's LM head was patched


@pytest.mark.parametrize("method", ["dpo", "orpo"])
def test_preference_trains_a_qlora_job(tmp_path, tiny_model_dir, method):
    path = run_job(tmp_path, tiny_model_dir, write_jsonl(tmp_path / "p.jsonl", PAIRS), f"qlora-{method}",
                   method=method, quantization="nf4")
    assert adapters.read_metadata(path)["base_quantization"] == "nf4" and adapters.is_complete(path)


def test_a_hub_dataset_of_message_pairs_reads_like_a_file(tmp_path, tokenizer):
    from llama_space.data import hub_dataset, load_split

    folder = tmp_path / "datasets" / "owner" / "prefs"
    folder.mkdir(parents=True)
    rows = [{"prompt": f"Hi {i}", "chosen": [{"role": "user", "content": f"Hi {i}"},
                                            {"role": "assistant", "content": f"Ahoy {i}!"}],
             "rejected": [{"role": "user", "content": f"Hi {i}"}, {"role": "assistant", "content": "Hello."}]}
            for i in range(3)]
    write_jsonl(folder / "train.jsonl", rows)
    (tmp_path / "out").mkdir()
    path = load_split(hub_dataset("owner/prefs"), tmp_path / "out", 2**20, tmp_path / "datasets")
    report = validate_any(path, tokenizer, 64)
    assert report["format"] == "messages" and report["valid_rows"] == 3, report


def test_sft_on_preference_data_says_which_method_to_choose(tmp_path, tokenizer):
    from llama_space.training.methods import get_method

    with pytest.raises(UserError, match="set method to dpo or orpo"):
        get_method("sft").build_examples(write_jsonl(tmp_path / "p.jsonl", PAIRS), tokenizer, TrainingParams(), 2**20)
    with pytest.raises(UserError, match="Preference data needs 'chosen' and 'rejected' columns"):
        get_method("dpo").build_examples(REPO_PERSONA, tokenizer, TrainingParams(), 2**20)
