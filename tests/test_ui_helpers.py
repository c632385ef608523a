"""The UI's pure helpers: conversations and reply versions as the browser keeps them, the run estimate before
Start, the job log's filter and the loss plot's series."""

from __future__ import annotations

from llama_space.web.ui import chat_history
from llama_space.web.ui.finetune_tab import estimate_text, seconds_per_step
from llama_space.web.ui.jobs_view import clean_log, loss_frame


def _chat(*texts: str) -> list[dict]:
    return [{"role": "user" if i % 2 == 0 else "assistant", "content": text} for i, text in enumerate(texts)]


def test_a_conversation_is_kept_named_reopened_renamed_and_deleted():
    store = chat_history.save(chat_history.EMPTY_STORE, _chat("What is   the capital of France?", "Paris."))
    conversation = chat_history.current(store)
    assert conversation["title"] == "What is the capital of France?" and store["current"] == conversation["id"]
    store = chat_history.new_conversation(store)
    store = chat_history.save(store, [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}])
    assert [title for title, _ in chat_history.choices(store)] == ["Hi", "What is the capital of France?"]
    store, messages = chat_history.open_conversation(store, conversation["id"])
    assert messages == _chat("What is   the capital of France?", "Paris.")  # the text as typed
    store = chat_history.rename(store, conversation["id"], "  Capitals ")
    assert chat_history.current(store)["title"] == "Capitals"
    store = chat_history.delete(store, conversation["id"])
    assert store["current"] == "" and [t for t, _ in chat_history.choices(store)] == ["Hi"]
    assert chat_history.current("not a store") is None  # whatever the browser sent back


def test_regenerated_replies_keep_their_versions_until_an_edit():
    store = chat_history.save(chat_history.EMPTY_STORE, _chat("Q", "first"))
    store = chat_history.remember_before_regenerating(store, _chat("Q", "first"))
    store = chat_history.add_version(store, _chat("Q", "second"))
    assert chat_history.versions(store, _chat("Q", "second")) == (1, 2)
    store, messages = chat_history.show_version(store, _chat("Q", "second"), -1)
    assert messages == _chat("Q", "first") and chat_history.versions(store, messages) == (0, 2)
    store, messages = chat_history.show_version(store, messages, -1)  # no further back than the first
    assert messages == _chat("Q", "first")
    store = chat_history.forget_from(store, 0)
    assert chat_history.versions(store, messages) == (0, 1)


def test_the_estimate_counts_steps_and_uses_the_measured_step_time():
    values = {"max_steps": 0, "num_epochs": 3, "batch_size": 4, "grad_accum": 4, "eval_fraction": 0.0}
    assert estimate_text(96, values, None) == "About 18 steps; the time shows once the first steps are measured."
    per_step = seconds_per_step([{"step": 1, "time": 100.0}, {"step": 11, "time": 120.0}])
    assert per_step == 2.0
    assert "About 60 steps, roughly 2 min 00 s" in estimate_text(96, {**values, "max_steps": 60}, per_step)
    assert estimate_text(0, values, per_step) == "" and seconds_per_step([{"step": 1, "time": 1.0}]) is None


def test_the_log_keeps_the_apps_lines_and_the_plot_has_whole_steps():
    log = "step 1 loss=2.1\n/x/trainer.py:12: UserWarning: something\n  warnings.warn(\nstep 2 loss=1.9"
    assert clean_log(log) == "step 1 loss=2.1\nstep 2 loss=1.9"
    frame = loss_frame([{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.0, "eval_loss": 1.5}])
    assert set(frame["series"]) == {"training loss", "training loss (smoothed)", "eval loss"}
    assert frame["step"].dtype.kind == "i"
