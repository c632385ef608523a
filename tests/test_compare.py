"""Compare: the base model and adapters answer one prompt together, in one mixed-adapter batch, each exactly as it
would alone; a file of prompts (or a job's held-out split) gives a table and CSV/JSONL downloads.

float32 throughout: batched greedy replies equal unbatched ones only there (see test_batching).
"""

from __future__ import annotations

import csv
import itertools
import json
import threading
import time
import tracemalloc
from pathlib import Path

import pytest

from llama_space.data import build_examples
from llama_space.errors import NotFoundError, UserError
from llama_space.inference.manager import ModelManager
from llama_space.inference.prompting import normalize_messages
from llama_space.service import eval_data
from llama_space.service.compare import Comparer, FileRun, greedy, matches
from llama_space.settings import Settings
from llama_space.training import JobRunner
from llama_space.training.collate import split_examples
from llama_space.training.params import TrainingParams

from adapterutil import random_adapter
from jobutil import write_alpaca

PARAMS = greedy(max_new_tokens=10)


@pytest.fixture(scope="module")
def manager(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    settings = Settings(model=str(tiny_model_dir), dtype="float32", device="cpu", data_dir=root / "data",
                        adapters_dir=root / "adapters", concurrency=8)
    for seed, name in enumerate(["one", "two", "three"], 1):
        random_adapter(tiny_model_dir, settings.adapters_dir / name, seed=seed)
    manager = ModelManager(settings).load()
    yield manager
    manager.close()


def alone(manager, prompt: str, adapter: str, system_prompt: str = "") -> str:
    return manager.generate(normalize_messages([], prompt, system_prompt), PARAMS, adapter)


def test_each_answer_equals_that_model_alone_and_all_decode_in_one_batch(manager):
    comparer = Comparer(manager)
    models = comparer.models(["one", "two", "three"])
    assert models == ["base", "one", "two", "three"]
    manager._engine.largest_batch = 0
    snapshots = list(comparer.stream("Tell me about rivers.", models, "Be brief.", PARAMS))
    assert manager._engine.largest_batch == 4  # all four rows decoded together, each with its own adapter
    final = snapshots[-1]
    for model in models:
        texts = [snapshot[model] for snapshot in snapshots]
        assert all(later.startswith(earlier) for earlier, later in itertools.pairwise(texts))  # it streamed
        assert final[model] == alone(manager, "Tell me about rivers.", "" if model == "base" else model, "Be brief.")
    assert len(set(final.values())) == 4  # the adapters change the answers (else the test proves nothing)


def test_model_choice_is_checked(manager):
    comparer = Comparer(manager)
    assert comparer.models(["two", "two", "base"], include_base=False) == ["base", "two"]
    assert comparer.models(["one"], include_base=False) == ["one"]
    with pytest.raises(NotFoundError, match="Unknown adapter 'nope'"):
        comparer.models(["nope"])
    with pytest.raises(UserError, match="at most 4 adapters"):
        comparer.models(["one", "two", "three", "four", "five"])
    with pytest.raises(UserError, match="Choose the base model or at least one adapter"):
        comparer.models([], include_base=False)


def test_matching_normalizes_whitespace_and_contains_ignores_case():
    assert matches("  Paris\n", "Paris") == (True, True)
    assert matches("The capital is  Paris.", "paris") == (False, True)
    assert matches("Lyon", "Paris") == (False, False)
    assert matches("Paris", "") == (False, False)


def test_prompts_file_gives_table_and_downloads(manager, tmp_path):
    rows = [{"prompt": "Name a colour.", "reference": "Blue"}, {"prompt": "Count to three.", "system": "Be terse."},
            {"prompt": ""}, {"prompt": "Say hi.", "reference": "hi"}]
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    comparer = Comparer(manager)
    models = comparer.models(["two"])
    progress = []
    for run in comparer.run_file(models, file=str(path), params=PARAMS):
        progress.append((run.done, run.total, run.paths is not None))
    assert progress[0] == (0, 3, False) and progress[-1] == (3, 3, True)
    assert [done for done, _, _ in progress] == sorted(done for done, _, _ in progress)  # progress only grows
    expected = [{"base": alone(manager, r["prompt"], "", r.get("system", "")),
                 "two": alone(manager, r["prompt"], "two", r.get("system", ""))} for r in (rows[0], rows[1], rows[3])]
    csv_path, jsonl_path = run.paths
    with open(csv_path, newline="") as handle:
        table = list(csv.reader(handle))
    assert table[0] == ["prompt", "system", "reference", "base", "two"]
    assert table[1:] == [["Name a colour.", "", "Blue", *expected[0].values()],
                         ["Count to three.", "Be terse.", "", *expected[1].values()],
                         ["Say hi.", "", "hi", *expected[2].values()]]
    records = [json.loads(line) for line in Path(jsonl_path).read_text().splitlines()]
    assert [r["answers"] for r in records] == expected
    assert [r["reference"] for r in records] == ["Blue", "", "hi"]
    headers, shown = run.table()
    assert headers == ["prompt", "reference", "base", "two"] and len(shown) == 3
    assert run.scores()["base"]["references"] == 2


def test_a_training_file_and_a_jobs_held_out_split_give_prompts_with_references(manager, tmp_path):
    data = write_alpaca(tmp_path / "sums.jsonl", rows=12)
    found = eval_data.from_prompts_file(data, 2**20)
    assert found.rows[3].prompt == [{"role": "user", "content": "What is 3 plus 3?"}]
    assert found.rows[3].reference == "3 plus 3 is 6."
    params = TrainingParams(eval_fraction=0.25, seed=7, max_length=64)
    runner = JobRunner(manager.settings)
    job_id = runner.registry.create(data, "sums", params)
    held_out = Comparer(manager, runner).prompts(job_id=job_id)
    # Exactly the rows the training process holds out of this job (same data, split and masking).
    _, expected = split_examples(build_examples(data, manager.tokenizer, 64), 0.25, 7)
    assert [row.example for row in held_out.rows] == expected and len(expected) == 3
    for row in held_out.rows:
        number = row.prompt[-1]["content"].split()[2]
        assert row.reference == f"{number} plus {number} is {2 * int(number)}."
    with pytest.raises(UserError, match="held out no rows"):
        Comparer(manager, runner).prompts(job_id=runner.registry.create(data, "none", TrainingParams()))
    with pytest.raises(UserError, match="a prompts file needs a 'prompt' column"):
        bad = tmp_path / "bad.csv"
        bad.write_text("question,x\nhi,1\n")
        eval_data.from_prompts_file(bad, 2**20)


def test_a_cancelled_file_run_stops_every_reply(manager):
    rows = [eval_data.EvalRow([{"role": "user", "content": f"Say {i}."}]) for i in range(6)]
    run = FileRun(["base", "one"], rows, "test")
    cancel = threading.Event()
    started = time.monotonic()
    for _ in Comparer(manager).run_rows(run, greedy(max_new_tokens=400), cancel=cancel):
        cancel.set()  # at the first progress update, a second in
    assert run.done < 6 and time.monotonic() - started < 10
    assert manager.admission.in_flight == 0  # every stream was stopped and gave its place back


def test_compare_and_evaluate_by_keyword_through_the_launched_app(tiny_model_dir, tmp_path):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    from apputil import launched_app

    settings = Settings(model=str(tiny_model_dir), dtype="float32", device="cpu", data_dir=tmp_path / "data",
                        adapters_dir=tmp_path / "adapters")
    random_adapter(tiny_model_dir, settings.adapters_dir / "one", seed=1)
    prompts = tmp_path / "prompts.csv"
    prompts.write_text("prompt,reference\nName a colour.,Blue\nSay hi.,\n")
    data = write_alpaca(tmp_path / "sums.jsonl", rows=4)
    with launched_app(settings) as app:
        client = Client(app.url, verbose=False)
        endpoints = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
        assert [p["parameter_name"] for p in endpoints["/compare"]["parameters"]] == [
            "prompt", "adapters", "system_prompt", "max_new_tokens", "temperature", "top_p", "include_base"]
        assert {p["parameter_name"]: p["parameter_default"] for p in endpoints["/evaluate"]["parameters"]
                if p["parameter_has_default"]} == {"file": None, "job_id": "", "max_examples": 200,
                                                   "generate_answers": True, "max_new_tokens": 128}
        replies = client.predict(prompt="Name a colour.", adapters=["one"], max_new_tokens=10, api_name="/compare")
        assert replies == {"base": alone(app.backend, "Name a colour.", ""),
                           "one": alone(app.backend, "Name a colour.", "one")}
        streamed = list(client.submit(prompt="Name a colour.", adapters=["one"], max_new_tokens=10,
                                      api_name="/compare_stream"))
        assert streamed[-1] == replies
        table, csv_file, jsonl_file = client.predict(file=handle_file(prompts), adapters=["one"], max_new_tokens=10,
                                                     api_name="/compare_file")
        assert table["headers"] == ["prompt", "reference", "base", "one"]
        assert table["rows"][0] == ["Name a colour.", "Blue", replies["base"], replies["one"]]
        with open(csv_file, newline="") as handle:
            assert list(csv.reader(handle))[1] == ["Name a colour.", "", "Blue", replies["base"], replies["one"]]
        assert len(Path(jsonl_file).read_text().splitlines()) == 2
        result = client.predict(adapters=["one"], file=handle_file(data), generate_answers=False,
                                api_name="/evaluate")
        assert result["state"] == "completed" and result["saved"] == ["one"] and result["examples"] == 4
        assert result["models"]["one"]["loss"] > 0
        assert client.predict(api_name="/cancel_evaluation") == {"cancelling": False, "evaluation_id": ""}
        with pytest.raises(AppError, match="not a path on the server"):
            client.predict(adapters=["one"], file={"path": str(data)}, api_name="/evaluate")
        with pytest.raises(AppError, match="at most 4 adapters"):
            client.predict(prompt="hi", adapters=list("abcde"), api_name="/compare")


def test_csv_cells_that_start_like_formulas_are_quoted():
    from llama_space.service.compare import inert

    assert inert("=HYPERLINK(\"http://x\")") == "'=HYPERLINK(\"http://x\")"
    assert inert("@SUM(A1)") == "'@SUM(A1)"
    assert inert("Blue") == "Blue"
    assert inert(None) == ""


def test_a_prompts_file_is_read_a_row_at_a_time_keeping_only_the_prompts(tmp_path):
    # 1000 rows with 8 KB of notes each (8 MB): before, every row stayed in memory as a dict until the end.
    rows = [{"prompt": f"Question {n}?", "system": "Be brief.", "answer": f"{n}", "notes": "n" * 8192}
            for n in range(1000)]
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows) + '{"prompt": ""}\n')
    tracemalloc.start()
    try:
        found = eval_data.from_prompts_file(path, 2**24)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (len(found.rows), found.skipped) == (1000, 1)
    assert found.rows[7] == eval_data.EvalRow([{"role": "system", "content": "Be brief."},
                                               {"role": "user", "content": "Question 7?"}], "7")
    assert peak < 4 * 2**20, f"{peak / 2**20:.1f} MiB of Python allocations for an 8 MB file"
