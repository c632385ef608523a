"""The feedback loop through gradio_client by keyword, as a script would run it, on the embedded model (conftest's
shared embedded_app): an SFT adapter with a system prompt is trained; feedback (edits and a pick) is recorded on its
replies; a DPO job continues from it on the collected pairs; on the pairs that job held out its preference accuracy
beats the SFT adapter's, and chat with it uses the trained system prompt when the caller gives none."""

import json

import pytest
from gradio_client import Client, handle_file

from apputil import wait_for_job
from conftest import REPO

pytestmark = pytest.mark.slow

PERSONA = REPO / "examples" / "persona.jsonl"
SYSTEM = "You are a pirate who answers briefly."
SUFFIX = " Arr, that be the truth of it."
QUESTIONS = [f"Name one thing about {topic}." for topic in (
    "the sea", "ships", "parrots", "gold", "maps", "islands", "storms", "sails", "anchors", "crews", "rum",
    "cannons", "harbours", "the moon", "the wind", "compasses")]
GREEDY = {"max_new_tokens": 16, "temperature": 0.0}


@pytest.fixture(scope="module")
def client(embedded_app):
    return Client(embedded_app.url, verbose=False)


def test_sft_feedback_dpo_and_chat_with_the_trained_prompt(client, tmp_path):
    started = client.predict(file=handle_file(str(PERSONA)), adapter_name="sft", preset="quick", max_steps=3,
                             batch_size=2, max_length=128, system_prompt=SYSTEM, api_name="/start_training")
    assert wait_for_job(client, started["job_id"])["state"] == "completed"

    for question in QUESTIONS:
        reply = client.predict(prompt=question, adapter="sft", **GREEDY, api_name="/generate")
        marked = client.predict(kind="edit", conversation=[{"role": "user", "content": question}], reply=reply,
                                adapter="sft", edited=reply + SUFFIX, generation=GREEDY,
                                api_name="/record_feedback")
        assert marked["kind"] == "edit"
    compared = client.predict(prompt=QUESTIONS[0], adapters=["sft"], **GREEDY, api_name="/compare")
    picked = client.predict(kind="pick", conversation=[{"role": "user", "content": QUESTIONS[0]}],
                            reply=compared["sft"] + SUFFIX, other_replies=[compared["base"]], adapter="sft",
                            api_name="/record_feedback")
    assert picked["counts"]["marks"]["edit"] == len(QUESTIONS) and picked["counts"]["marks"]["pick"] == 1

    dataset = client.predict(kind="preference", api_name="/feedback_dataset")
    assert dataset["counts"]["preference_pairs"] == len(QUESTIONS) + 1
    assert dataset["counts"]["sft_rows"] == len(QUESTIONS)
    pairs = tmp_path / "feedback.jsonl"
    pairs.write_text("".join(json.dumps(row) + "\n" for row in dataset["rows"]))
    report = client.predict(file=handle_file(str(pairs)), api_name="/validate_dataset")
    assert report["kind"] == "preference" and report["valid_rows"] == len(QUESTIONS) + 1, report

    started = client.predict(file=handle_file(str(pairs)), adapter_name="dpo", preset="quick", method="dpo",
                             from_adapter="sft", max_steps=8, batch_size=4, max_length=96, eval_fraction=0.25,
                             learning_rate=5e-3,
                             api_name="/start_training")
    status = wait_for_job(client, started["job_id"])
    assert status["state"] == "completed", status
    [meta] = [a for a in client.predict(api_name="/list_adapters") if a["name"] == "dpo"]
    assert meta["method"] == "dpo" and meta["parent_adapter"] == "sft" and meta["system_prompt"] == SYSTEM
    assert [step["adapter"] for step in meta["lineage"]] == ["sft"]

    figures = client.predict(adapters=["sft", "dpo"], job_id=started["job_id"], generate_answers=False,
                             api_name="/evaluate")["models"]
    assert figures["dpo"]["reward_accuracy"] > figures["sft"]["reward_accuracy"], figures
    assert figures["dpo"]["reward_margin"] > figures["sft"]["reward_margin"], figures

    implicit = client.predict(prompt=QUESTIONS[1], adapter="dpo", **GREEDY, api_name="/generate")
    explicit = client.predict(prompt=QUESTIONS[1], adapter="dpo", system_prompt=SYSTEM, **GREEDY,
                              api_name="/generate")
    other = client.predict(prompt=QUESTIONS[1], adapter="dpo", system_prompt="You are a librarian.", **GREEDY,
                           api_name="/generate")
    assert implicit == explicit and (implicit != other or SUFFIX.strip() in implicit)
