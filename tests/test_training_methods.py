"""Training methods behind one interface: the registry and TrainingParams refuse an unknown method by name, SFT
through the interface reads, splits and collates exactly as the data and batch modules do, and a method
registered here (no other code edited) changes what the memory planner estimates and what a job trains on."""

from __future__ import annotations

from typing import ClassVar

import pytest

from llama_space.data import build_examples
from llama_space.errors import UserError
from llama_space.training import memory, planner
from llama_space.training.collate import split_examples
from llama_space.training.methods import METHODS, StepMemory, TrainingMethod, get_method
from llama_space.training.methods.sft import SFT
from llama_space.training.params import TrainingParams

from conftest import REPO

PERSONA = REPO / "examples" / "persona.jsonl"
REFERENCE_BYTES = 3 * 10**9


class PairwiseToy(SFT):
    """SFT with a preference method's memory: two sequences per example, their full logits and a reference model's
    forward."""

    name: ClassVar[str] = "pairwise-toy"
    description: ClassVar[str] = "a toy with a preference method's memory terms"
    sequences_per_row: ClassVar[int] = 2
    seen: list[StepMemory]

    def __init__(self) -> None:
        self.seen = []

    def logits_budget(self, shape) -> None:
        return None  # every position's logits at once, as TRL's preference losses take them

    def memory_terms(self, step: StepMemory) -> dict[str, int]:
        self.seen.append(step)
        return {"reference_forward": REFERENCE_BYTES}


class FirstRowsToy(SFT):
    """SFT on the first three trainable rows, the last of them held out."""

    name: ClassVar[str] = "first-rows-toy"
    description: ClassVar[str] = "a toy that trains on three rows"

    def build_examples(self, dataset, tokenizer, params, max_bytes):
        return super().build_examples(dataset, tokenizer, params, max_bytes)[:3]

    def split(self, examples, params):
        return examples[:2], examples[2:]


@pytest.fixture(scope="module")
def config():
    return memory.llama31_8b_config()


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_sft_is_registered_and_the_default():
    assert list(METHODS) == ["sft", "dpo", "orpo"] and isinstance(METHODS["sft"], TrainingMethod)
    assert get_method("sft") is METHODS["sft"] and TrainingParams().method == "sft"
    assert all(method.name == name and method.description and method.accepts for name, method in METHODS.items())


def test_an_unknown_method_is_refused_by_name():
    with pytest.raises(UserError, match=r"Unknown training method 'nope'; the known methods are: sft, dpo, orpo\."):
        get_method("nope")
    with pytest.raises(UserError, match=r"method must be one of sft, dpo, orpo, got 'nope'"):
        TrainingParams(method="nope")
    with pytest.raises(UserError, match="method must be one of sft"):
        TrainingParams.from_dict({"method": ["sft"]})


def test_a_registered_method_is_a_choice_of_training_params(monkeypatch):
    monkeypatch.setitem(METHODS, PairwiseToy.name, PairwiseToy())
    assert TrainingParams(method=PairwiseToy.name).method == PairwiseToy.name
    with pytest.raises(UserError, match=f"one of sft, dpo, orpo, {PairwiseToy.name}, got"):
        TrainingParams(method="kto")


def test_sft_reads_splits_and_collates_as_the_data_and_batch_modules_do(tokenizer):
    from transformers import DataCollatorWithFlattening

    sft, params = get_method("sft"), TrainingParams(max_length=64, eval_fraction=0.25, seed=7)
    examples = sft.build_examples(PERSONA, tokenizer, params, 2**20)
    assert examples == build_examples(PERSONA, tokenizer, 64, max_bytes=2**20)
    assert all(set(example) == {"input_ids", "labels"} for example in examples)

    train, held_out = sft.split(examples, params)
    assert (train, held_out) == split_examples(examples, 0.25, 7)
    assert len(held_out) == round(len(examples) * 0.25) and len(train) + len(held_out) == len(examples)
    assert sorted(map(str, train + held_out)) == sorted(map(str, examples))
    # The held-out rows are those a job's eval split names by index (service/eval_data.py rebuilds it that way).
    _, by_index = split_examples([{"index": i} for i in range(len(examples))], 0.25, 7)
    assert held_out == [examples[row["index"]] for row in by_index]

    batch, reference = sft.collator(tokenizer)(train[:3]), DataCollatorWithFlattening(
        return_position_ids=True, separator_id=-100)(train[:3])
    assert batch.keys() == reference.keys() == {"input_ids", "labels", "position_ids"}
    assert all(batch[key].tolist() == reference[key].tolist() for key in batch)


def test_sft_builds_its_packed_chunked_loss_trainer(tiny_model_dir, tmp_path, tokenizer):
    from transformers import DataCollatorWithFlattening, TrainerCallback

    from llama_space.training.lora import add_lora, load_base
    from llama_space.training.methods.sft_trainer import SFTTrainer
    from llama_space.training.trainer import JobTrainer

    model, _ = load_base(str(tiny_model_dir), tmp_path / "cache")
    params = TrainingParams(max_steps=1)
    rows = [{"input_ids": [1, 2, 3], "labels": [1, 2, 3]}]
    trainer = get_method("sft").build_trainer(add_lora(model, params), tokenizer, params,
                                              checkpoints_dir=tmp_path / "job" / "checkpoints", train_rows=rows,
                                              eval_rows=[], callback=TrainerCallback(),
                                              activation_checkpointing=False)
    assert isinstance(trainer, SFTTrainer) and isinstance(trainer, JobTrainer)
    assert isinstance(trainer.data_collator, DataCollatorWithFlattening) and trainer.eval_dataset is None
    assert trainer.logits_budget == get_method("sft").logits_budget(memory.model_shape(model.config))


def test_a_registered_method_s_memory_terms_change_the_estimate(config, monkeypatch):
    toy = PairwiseToy()
    monkeypatch.setitem(METHODS, toy.name, toy)
    way = {"placement": "process", "quantization": "none", "device": "cuda", "served_dtype": "bfloat16",
           "checkpointing": True}
    sft = memory.estimate(config, TrainingParams(), **way)
    pairs = memory.estimate(config, TrainingParams(method=toy.name), **way)

    assert "reference_forward" not in sft.parts and pairs.parts["reference_forward"] == REFERENCE_BYTES
    [step] = toy.seen
    assert step.tokens == 2 * 4 * 384 and step.checkpointing and step.cuda and step.act == 2
    assert pairs.parts["activations"] > 2 * sft.parts["activations"]  # twice the tokens, and their attention mask
    assert pairs.parts["logits"] > sft.parts["logits"]  # all of twice the tokens' logits
    assert pairs.parts["base_weights"] == sft.parts["base_weights"]
    step_growth = sum(pairs.parts[part] - sft.parts.get(part, 0) for part in ("activations", "logits",
                                                                                "reference_forward"))
    assert pairs.total_bytes - sft.total_bytes == pytest.approx(step_growth * (1 + memory.SLACK), abs=2)  # + slack
    assert memory.step_bytes(config, TrainingParams(method=toy.name), device="cuda", dtype="bfloat16",
                             checkpointing=True) > memory.step_bytes(config, TrainingParams(), device="cuda",
                                                                     dtype="bfloat16", checkpointing=True)


def test_a_registered_method_s_memory_changes_the_planner_s_choice(config, monkeypatch):
    monkeypatch.setitem(METHODS, PairwiseToy.name, PairwiseToy())
    free = 24 * 10**9  # room for a second bf16 copy of the 8B beside its SFT step, not beside the toy's
    kwargs = {"free_bytes": free, "device": "cuda", "served_dtype": "bfloat16", "served_in_process": False}
    assert planner.plan(config, TrainingParams(), **kwargs).quantization == "none"
    chosen = planner.plan(config, TrainingParams(method=PairwiseToy.name), **kwargs)
    assert (chosen.placement, chosen.quantization) == ("process", "nf4")
    assert chosen.candidates[0].total_bytes > free and "reference_forward" in chosen.estimate.parts


def test_a_method_may_not_rename_the_core_s_terms(config, monkeypatch):
    class Overwriting(SFT):
        name: ClassVar[str] = "overwriting-toy"

        def memory_terms(self, step):
            return {"logits": 0}

    monkeypatch.setitem(METHODS, Overwriting.name, Overwriting())
    with pytest.raises(ValueError, match="'overwriting-toy' names its memory terms \\['logits'\\]"):
        memory.estimate(config, TrainingParams(method=Overwriting.name), placement="process", quantization="none",
                        device="cuda", served_dtype="bfloat16")


def test_a_job_reads_and_splits_its_data_through_its_method(tiny_model_dir, tmp_path, monkeypatch, tokenizer):
    from llama_space.jobs import files as jobfiles
    from llama_space.training.job_config import TrainingJobConfig
    from llama_space.training.train import prepare_trainer

    monkeypatch.setitem(METHODS, FirstRowsToy.name, FirstRowsToy())
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    params = TrainingParams(method=FirstRowsToy.name, max_length=64, max_steps=1)
    config = TrainingJobConfig(adapter="toy", dataset=str(PERSONA), adapters_dir=str(tmp_path / "adapters"),
                               cache_dir=str(tmp_path / "cache"), model=str(tiny_model_dir), max_bytes=2**20,
                               params=params)
    trainer, _progress = prepare_trainer(job_dir, config, params)
    first = build_examples(PERSONA, tokenizer, 64)[:3]
    assert list(trainer.train_dataset) == first[:2] and list(trainer.eval_dataset) == first[2:]
    assert trainer.args.output_dir == str(job_dir / jobfiles.CHECKPOINTS_DIR)


def test_the_fine_tune_form_offers_the_registered_methods():
    from llama_space.web.ui.finetune_tab import CHOICE_FIELDS, form_values

    assert tuple(CHOICE_FIELDS["method"]) == tuple(METHODS) and form_values("standard")["method"] == "sft"
