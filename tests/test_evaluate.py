"""Evaluate: loss/perplexity on the trained tokens equal a direct masked computation, answers are matched against
references, figures land in each adapter's metadata (and the Adapters tab), and a cancel stops the run."""

from __future__ import annotations

import json
import math
import threading

import pytest

from llama_space import adapters
from llama_space.data import build_examples
from llama_space.errors import UserError
from llama_space.inference.manager import ModelManager
from llama_space.inference.prompting import normalize_messages
from llama_space.service.compare import Comparer, greedy
from llama_space.service.eval_scoring import batches
from llama_space.service.evaluate import Evaluator
from llama_space.service.evaluation_jobs import EvalOptions
from llama_space.settings import Settings

from adapterutil import random_adapter
from jobutil import write_alpaca


@pytest.fixture(scope="module")
def manager(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    settings = Settings(model=str(tiny_model_dir), dtype="float32", device="cpu", data_dir=root / "data",
                        adapters_dir=root / "adapters", concurrency=8)
    for seed, name in enumerate(["one", "two"], 1):
        random_adapter(tiny_model_dir, settings.adapters_dir / name, seed=seed)
    manager = ModelManager(settings).load()
    yield manager
    manager.close()


def direct_loss(model_dir, examples, adapter_dir=None) -> float:
    """Mean cross-entropy over every trained token, one example at a time through transformers' own loss."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter_dir))
    model.eval()
    total, tokens = 0.0, 0
    with torch.no_grad():
        for example in examples:
            labels = torch.tensor([example["labels"]])
            n = int((labels[:, 1:] != -100).sum())
            total += float(model(input_ids=torch.tensor([example["input_ids"]]), labels=labels).loss) * n
            tokens += n
    return total / tokens


def test_loss_equals_a_direct_masked_computation(manager, tiny_model_dir, tmp_path):
    data = write_alpaca(tmp_path / "sums.jsonl", rows=11)
    evaluator = Evaluator(Comparer(manager))
    result = evaluator.evaluate(["one"], file=str(data), options=EvalOptions(generate_answers=False))
    examples = build_examples(data, manager.tokenizer, 384)
    assert result["state"] == "completed" and result["examples"] == 11
    base, one = result["models"]["base"], result["models"]["one"]
    assert base["loss"] == pytest.approx(direct_loss(tiny_model_dir, examples), rel=1e-5)
    assert one["loss"] == pytest.approx(
        direct_loss(tiny_model_dir, examples, manager.settings.adapters_dir / "one"), rel=1e-5)
    assert one["loss"] != pytest.approx(base["loss"], rel=1e-3)
    assert one["perplexity"] == pytest.approx(math.exp(one["loss"]))
    assert base["tokens"] == sum(sum(label != -100 for label in e["labels"][1:]) for e in examples)
    assert base.get("exact_match") is None  # no answers were asked for


def test_batches_stay_within_the_token_budget():
    rows = [{"input_ids": [0] * n} for n in (10, 30, 30, 5, 100, 2)]
    groups = list(batches(rows, max_tokens=64, max_rows=3))
    assert [[len(r["input_ids"]) for r in g] for g in groups] == [[10, 30], [30, 5], [100], [2]]


def alone(manager, prompt: str, adapter: str = "") -> str:
    return manager.generate(normalize_messages([], prompt), greedy(8), adapter)


def normal(text: str) -> str:
    return " ".join(text.split())


def test_answers_are_matched_and_figures_saved_next_to_the_base(manager, tmp_path):
    prompts = ["Name a fruit.", "Name a tree.", "Name a bird."]
    answer = [alone(manager, p, "one") for p in prompts]  # (the tiny base answers blank lines)
    assert all(normal(a) for a in answer)
    references = [answer[0], answer[1][2:-2], "zebra crossing"]  # for adapter one: exact; contained; neither
    data = tmp_path / "refs.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": p},
                                                     {"role": "assistant", "content": r}]}) + "\n"
                            for p, r in zip(prompts, references)))
    meta_file = manager.settings.adapters_dir / "one" / adapters.METADATA_FILE
    before = json.loads(meta_file.read_text())
    evaluator = Evaluator(Comparer(manager))
    result = evaluator.evaluate(["one", "two"], file=str(data), options=EvalOptions(max_new_tokens=8))
    figures = result["models"]
    assert (figures["one"]["exact_match"], figures["one"]["contains"]) == (pytest.approx(1 / 3), pytest.approx(2 / 3))
    for model, adapter in (("base", ""), ("two", "two")):
        theirs = [alone(manager, p, adapter) for p in prompts]
        assert figures[model]["exact_match"] == sum(normal(a) == normal(r) for a, r in zip(theirs, references)) / 3
        assert figures[model]["contains"] == sum(normal(r).casefold() in normal(a).casefold()
                                                 for a, r in zip(theirs, references)) / 3
    assert figures["base"]["references"] == 3 and result["saved"] == ["one", "two"]
    saved = json.loads(meta_file.read_text())
    before.pop("evaluation", None)  # the earlier test's, replaced by this one
    assert {key: saved[key] for key in before} == before and "base_model" in before  # the rest is kept
    evaluation, base = saved["evaluation"], figures["base"]
    assert evaluation["loss"] == figures["one"]["loss"] and evaluation["exact_match"] == pytest.approx(1 / 3)
    assert evaluation["base"] == {key: base[key] for key in ("loss", "perplexity", "exact_match", "contains")}
    assert evaluation["examples"] == 3 and evaluation["dataset_fingerprint"] == result["dataset_fingerprint"]
    assert not [p.name for p in meta_file.parent.iterdir() if ".tmp" in p.name]

    from llama_space.service.actions import Actions
    from llama_space.service.permissions import Permissions
    from llama_space.web.ui.adapters_tab import COLUMNS, adapter_rows, details_html

    actions = Actions(manager, None, Permissions(manager.settings))
    shown = dict(zip(COLUMNS, next(row for row in adapter_rows(actions) if row[0] == "one")))
    assert shown["evaluation"] == f"perplexity {figures['one']['perplexity']:.4g} (base {base['perplexity']:.4g})"
    details = details_html(actions, "one")
    assert "refs.jsonl" in details and "latest evaluation" in details and "exact_match" in details


def test_an_unreadable_metadata_file_is_left_alone(manager, tmp_path):
    meta_file = manager.settings.adapters_dir / "one" / adapters.METADATA_FILE
    original = meta_file.read_text()
    meta_file.write_text("{half a file")
    try:
        data = write_alpaca(tmp_path / "d.jsonl", rows=3)
        evaluator = Evaluator(Comparer(manager))
        result = evaluator.evaluate(["one"], file=str(data), options=EvalOptions(generate_answers=False))
        assert result["saved"] == [] and "cannot be read" in result["not_saved"]["one"]
        assert meta_file.read_text() == "{half a file"
    finally:
        meta_file.write_text(original)


def loss_batch_sizes(manager, data) -> list[int]:
    return [len(group) for group in batches(build_examples(data, manager.tokenizer, 384))]


def test_cancel_stops_the_run_after_the_batch_under_way_and_saves_nothing(manager, tmp_path):
    data = write_alpaca(tmp_path / "many.jsonl", rows=60)
    before = {name: adapters.read_metadata(manager.settings.adapters_dir / name) for name in ("one", "two")}
    evaluator = Evaluator(Comparer(manager))
    assert evaluator.cancel() == {"cancelling": False, "evaluation_id": ""}
    updates, cancelled_at = [], None
    for update in evaluator.run(["one", "two"], file=str(data)):
        updates.append(update)
        if update["stage"] == "loss" and cancelled_at is None:
            with pytest.raises(UserError, match="already running"):
                evaluator.start(["one"], file=str(data))
            cancelled_at = update["done"]
            assert evaluator.cancel()["cancelling"] is True
    assert updates[-1]["state"] == "cancelled" and updates[-1]["models"]["one"] == {}
    status = evaluator.status(updates[-1]["evaluation_id"])
    assert status["state"] == "cancelled" and status["result"]["state"] == "cancelled"
    # It stopped after at most the batch under way when the cancel came.
    sizes = loss_batch_sizes(manager, data)
    assert status["done"] <= cancelled_at + max(sizes) < sum(sizes)
    assert {name: adapters.read_metadata(manager.settings.adapters_dir / name) for name in before} == before
    assert not (evaluator.store.job_dir(status["evaluation_id"]) / "data.jsonl").exists()  # its data copy went
    again = evaluator.start(["one"], file=str(data), options=EvalOptions(generate_answers=False))  # free again
    assert again["stage"] == "data" and again["state"] in ("queued", "running")
    assert evaluator.cancel(again["evaluation_id"])["cancelling"] is True
    assert list(evaluator.follow(again["evaluation_id"]))[-1]["state"] == "cancelled"


def test_an_evaluation_outlives_its_follower_and_a_reload_finds_it(manager, tmp_path):
    """Closing the stream (a page reload) leaves the job running; following it again ends with its result."""
    data = write_alpaca(tmp_path / "many.jsonl", rows=30)
    evaluator = Evaluator(Comparer(manager))
    follower = evaluator.run(["one"], file=str(data), options=EvalOptions(generate_answers=False))
    first = next(follower)
    follower.close()
    latest = evaluator.latest()
    assert latest["evaluation_id"] == first["evaluation_id"]
    result = list(evaluator.follow(latest["evaluation_id"]))[-1]
    assert result["state"] == "completed" and result["saved"] == ["one"]
    assert evaluator.latest()["result"]["models"]["one"]["loss"] == result["models"]["one"]["loss"]


def test_an_evaluation_the_app_end_cut_short_is_interrupted_not_running(manager, tmp_path):
    """Another app process (a restart) finds an evaluation whose thread is gone marked interrupted, saying so."""
    from llama_space.jobs import files as jobfiles

    evaluator = Evaluator(Comparer(manager))
    evaluation_id = evaluator.store.new_id()
    evaluator.store.write_job(evaluation_id, {"models": ["base", "one"], "options": {}}, {"stage": "loss"})
    job_dir = evaluator.store.job_dir(evaluation_id)
    # As the thread of an app that has exited left it: running, in a process that is gone.
    jobfiles.update_status(job_dir, state="running", pid=4194300, runs_in="thread", process_start=1)
    status = evaluator.status(evaluation_id)
    assert status["state"] == "interrupted" and "start it again" in status["error"]
    with pytest.raises(UserError, match="start it again"):
        list(evaluator.follow(evaluation_id))


def test_close_stops_a_running_evaluation_and_returns_once_it_ended(manager, tmp_path):
    """The app's end (Services.close) stops an evaluation before the backend closes the model under it."""
    data = write_alpaca(tmp_path / "many.jsonl", rows=60)
    evaluator = Evaluator(Comparer(manager))
    updates, in_loss = [], threading.Event()

    def client():  # reads the updates as Gradio does, in its own thread
        for update in evaluator.run(["one", "two"], file=str(data)):
            updates.append(update)
            if update["stage"] == "loss" and not in_loss.is_set():
                in_loss.set()

    reader = threading.Thread(target=client)
    reader.start()
    assert in_loss.wait(60)
    evaluator.close()
    evaluation_id = updates[0]["evaluation_id"]
    assert evaluator.status(evaluation_id)["state"] == "cancelled"  # the run had ended when close() returned
    reader.join(10)
    assert updates[-1]["state"] == "cancelled"


def test_evaluation_needs_an_adapter_and_data(manager):
    evaluator = Evaluator(Comparer(manager))
    with pytest.raises(UserError, match="at least one adapter"):
        evaluator.evaluate([])
    with pytest.raises(UserError, match="Upload a dataset file or choose a training job"):
        evaluator.evaluate(["one"])
    with pytest.raises(UserError, match="max_examples must be"):
        EvalOptions(max_examples=0)
