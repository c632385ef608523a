"""The Compare tab: base and up to four adapters side by side on one prompt (streaming together), on a file of
prompts (a table with CSV/JSONL downloads), and evaluated on a dataset (loss, perplexity, answer matching)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import gradio as gr

from llama_space.errors import UserError
from llama_space.service.compare import MAX_ADAPTERS, greedy
from llama_space.service.evaluation_jobs import EvalOptions
from llama_space.web.error_boundary import user_facing
from llama_space.web.i18n import L, core_text, t
from llama_space.web.ui.compare_api import register_compare_api, results_dir
from llama_space.web.ui.feedback import add_compare_picks

if TYPE_CHECKING:
    from llama_space.service.actions import Actions
    from llama_space.service.compare import Comparer
    from llama_space.service.evaluate import Evaluator
    from llama_space.service.feedback import Feedback
    from llama_space.service.services import Services

SLOTS = 1 + MAX_ADAPTERS  # reply boxes: the base and each adapter
HIDDEN = {"api_visibility": "private"}
EVAL_COLUMNS = ("model", "loss", "perplexity", "exact", "contains", "tokens", "reward_accuracy", "reward_margin")


def job_dropdown(actions: Actions, **layout) -> gr.Dropdown:
    """A dropdown of every job (label, job id), newest first, for picking a held-out split; empty, saying why,
    for a visitor who may not see jobs. With no `layout` it is an update of the choices alone."""
    try:
        choices = [(f"{job['job_id']} · {job.get('adapter') or ''} · {job.get('state')}", job["job_id"])
                   for job in actions.jobs()]
        hidden = None
    except UserError as exc:
        choices, hidden = [], core_text(str(exc))
    return gr.Dropdown(choices=choices, info=hidden, **layout)


def _slots(replies: dict[str, str]) -> list:
    """One update per reply box: the first len(replies) show a model's reply, the rest are hidden."""
    items = list(replies.items())
    return [gr.Textbox(value=items[i][1], label=items[i][0], visible=True) if i < len(items)
            else gr.Textbox(value="", visible=False) for i in range(SLOTS)]


def _eval_table(rows: list[list]) -> gr.Dataframe:
    """The figures with headers in the visitor's language; hidden while there are none."""
    return gr.Dataframe(rows, headers=[t(f"cmp.col.{c}") for c in EVAL_COLUMNS], visible=bool(rows))


def _eval_rows(result: dict) -> list[list]:
    def figure(value):
        return "" if value is None else round(value, 4)

    return [[model, figure(f.get("loss")), figure(f.get("perplexity")), figure(f.get("exact_match")),
             figure(f.get("contains")), f.get("tokens", ""), figure(f.get("reward_accuracy")),
             figure(f.get("reward_margin"))] for model, f in result.get("models", {}).items()]


def _eval_message(result: dict) -> str:
    if result["state"] == "cancelled":
        return t("cmp.cancelled")
    text = t("cmp.evaluated", examples=result["examples"], source=result["source"], references=result["references"])
    if result.get("saved"):
        text += t("cmp.saved", names=", ".join(result["saved"]))
    for name, why in (result.get("not_saved") or {}).items():
        text += f" {name}: {core_text(why)}"
    return text


def _side_by_side(comparer: Comparer, models: dict[str, gr.Component], feedback: Feedback | None = None) -> dict[str, gr.Component]:
    """One prompt answered by every chosen model; returns the sampling fields, which a file of prompts uses too.
    `models` and the returned fields are named as the callbacks' (and the /compare endpoint's) parameters."""
    prompt = gr.Textbox(label=L("cmp.prompt"), lines=2, elem_id="compare-prompt")
    with gr.Row():
        sampling = {
            "system_prompt": gr.Textbox(label=L("common.system_prompt"), lines=1, elem_id="compare-system",
                                        scale=3),
            "max_new_tokens": gr.Slider(1, comparer.backend.settings.max_new_tokens_limit, value=256, step=1,
                                        label=L("common.max_new_tokens")),
            "temperature": gr.Slider(0, 2, value=0.0, step=0.05, label=L("common.temperature")),
            "top_p": gr.Slider(0.05, 1, value=1.0, step=0.05, label=L("common.top_p"))}
    with gr.Row():
        run = gr.Button(L("cmp.run"), variant="primary", elem_id="compare-run")
        stop = gr.Button(L("common.stop"), elem_id="compare-stop")
    with gr.Row():
        boxes = [gr.Textbox(label=L("cmp.base"), lines=8, interactive=False, visible=i == 0, elem_id=f"compare-reply-{i}")
                 for i in range(SLOTS)]
    if feedback is not None:
        add_compare_picks(feedback, comparer, prompt, boxes, models, sampling)

    def on_compare(prompt, adapters, include_base, system_prompt, max_new_tokens, temperature, top_p):
        chosen = comparer.models(adapters, include_base)
        params = greedy(int(max_new_tokens), temperature, top_p)
        for replies in comparer.stream(prompt, chosen, system_prompt, params):
            yield _slots(replies)

    event = run.click(user_facing(on_compare, "comparing models"),
                      inputs_kwargs={"prompt": prompt, **models, **sampling}, outputs=boxes, **HIDDEN)
    stop.click(None, None, None, cancels=[event], queue=False, **HIDDEN)
    return sampling


def _prompts_file(comparer: Comparer, actions: Actions, models: dict, sampling: dict, jobs: list):
    with gr.Accordion(L("cmp.file"), open=False):
        gr.Markdown(L("cmp.file_help"))
        with gr.Row():
            file = gr.File(label=L("cmp.prompts_file"), file_types=[".jsonl", ".json", ".csv", ".parquet"],
                           elem_id="compare-file")
            job = job_dropdown(actions, label=L("cmp.job_split"), value=None, elem_id="compare-job")
            max_prompts = gr.Number(100, label=L("cmp.max_prompts"), precision=0, minimum=1)
        with gr.Row():
            run = gr.Button(L("cmp.file_run"), variant="primary", elem_id="compare-file-run")
            stop = gr.Button(L("common.stop"), elem_id="compare-file-stop")
        progress = gr.Markdown(elem_id="compare-file-progress")
        table = gr.Dataframe(interactive=False, wrap=True, label=L("cmp.answers"), elem_id="compare-file-table",
                             visible=False)
        downloads = gr.File(label=L("cmp.downloads"), file_count="multiple", interactive=False)
    jobs.append(job)

    def on_run(file, job_id, max_prompts, adapters, include_base, system_prompt, max_new_tokens, temperature, top_p):
        chosen = comparer.models(adapters, include_base)
        params = greedy(int(max_new_tokens), temperature, top_p)
        for run in comparer.run_file(chosen, file, job_id or "", system_prompt, params, int(max_prompts),
                                     results_dir()):
            headers, rows = run.table()
            files = list(run.paths) if run.paths else None
            text = t("cmp.progress", done=run.done, total=run.total, source=run.source) + (
                " · " + t("cmp.done") if run.paths else "")
            yield text, gr.Dataframe(value=rows, headers=headers, visible=bool(rows)), files

    event = run.click(user_facing(on_run, "comparing models on a file"),
                      inputs_kwargs={"file": file, "job_id": job, "max_prompts": max_prompts, **models, **sampling},
                      outputs=[progress, table, downloads], **HIDDEN)
    stop.click(None, None, None, cancels=[event], queue=False, **HIDDEN)


def _evaluate(evaluator: Evaluator, actions: Actions, adapters, jobs: list) -> tuple[Callable, list]:
    """The Evaluate section; returns its page-load hook and the components that hook updates."""
    allowed = actions.permissions.controls_on
    with gr.Accordion(L("cmp.evaluate"), open=False):
        gr.Markdown(L("cmp.evaluate_help"))
        with gr.Row():
            file = gr.File(label=L("cmp.dataset_file"), file_types=[".jsonl", ".json", ".csv", ".parquet"],
                           elem_id="evaluate-file")
            job = job_dropdown(actions, label=L("cmp.job_split"), value=None, elem_id="evaluate-job")
        with gr.Row():
            max_examples = gr.Number(200, label=L("cmp.max_rows"), precision=0, minimum=1)
            answers = gr.Checkbox(True, label=L("cmp.answer_refs"))
            max_new_tokens = gr.Number(128, label=L("cmp.max_tokens_answer"), precision=0, minimum=1)
        with gr.Row():
            run = gr.Button(L("cmp.evaluate_run"), variant="primary", interactive=allowed, elem_id="evaluate-run")
            cancel = gr.Button(L("cmp.evaluate_cancel"), interactive=allowed, elem_id="evaluate-cancel")
        # Why evaluating is off: a function, which Gradio renders on each page load, in that visitor's language.
        why_off = None if allowed else lambda: core_text(actions.permissions.disabled_reason)
        progress = gr.Markdown(why_off, elem_id="evaluate-progress")
        table = gr.Dataframe(interactive=False, label=L("cmp.figures"), elem_id="evaluate-table", visible=False)
    jobs.append(job)

    def shown(updates):
        for update in updates:
            if update["state"] == "running":
                yield core_text(update["message"]), gr.skip()
            else:
                yield _eval_message(update), _eval_table(_eval_rows(update))

    def on_evaluate(adapters, file, job_id, max_examples, generate_answers, max_new_tokens):
        options = EvalOptions(max_examples=int(max_examples), generate_answers=generate_answers,
                              max_new_tokens=int(max_new_tokens))
        yield from shown(evaluator.run(adapters, file, job_id or "", options))

    def on_cancel():
        return t("cmp.cancelling") if evaluator.cancel()["cancelling"] else t("cmp.not_running")

    def on_page_load():
        """A reloaded page follows the running evaluation again, or shows how the latest one ended."""
        try:
            latest = evaluator.latest()
        except UserError:  # a visitor who may not evaluate sees none
            latest = None
        if not latest:
            yield gr.skip(), gr.skip()
            return
        try:
            yield from shown(evaluator.follow(latest["evaluation_id"]))
        except UserError as exc:  # it failed or was interrupted: say so, as a click would have
            yield core_text(str(exc)), gr.skip()

    run.click(user_facing(on_evaluate, "evaluating adapters"),
              inputs_kwargs={"adapters": adapters, "file": file, "job_id": job, "max_examples": max_examples,
                             "generate_answers": answers, "max_new_tokens": max_new_tokens},
              outputs=[progress, table], **HIDDEN)
    cancel.click(user_facing(on_cancel, "cancelling the evaluation"), None, progress, queue=False, **HIDDEN)
    return user_facing(on_page_load, "showing the latest evaluation"), [progress, table]


def build_compare_tab(services: Services) -> tuple[Callable, list]:
    """The Compare tab and its endpoints (see compare_api); returns the evaluation's page-load hook, the
    components it updates and the adapters choice (which the Adapters tab fills)."""
    backend, actions = services.backend, services.actions
    with gr.Tab(L("tab.compare"), id="compare") as tab:
        with gr.Row():
            adapters = gr.Dropdown(backend.list_adapters(), multiselect=True, max_choices=MAX_ADAPTERS,
                                   label=L("cmp.adapters"), elem_id="compare-adapters", scale=3)
            include_base = gr.Checkbox(True, label=L("cmp.include_base"), elem_id="compare-base")
        models = {"adapters": adapters, "include_base": include_base}
        sampling = _side_by_side(services.comparer, models, services.feedback)
        jobs: list[gr.Dropdown] = []
        _prompts_file(services.comparer, actions, models, sampling, jobs)
        on_page_load, evaluation_outputs = _evaluate(services.evaluator, actions, adapters, jobs)
        # Inside the tab: gr.api adds (invisible) blocks, which between two tabs would split the tab bar in two.
        register_compare_api(services.comparer, services.evaluator)

    def reload():
        return gr.Dropdown(choices=backend.list_adapters()), *(job_dropdown(actions) for _ in jobs)

    tab.select(user_facing(reload, "listing adapters and jobs"), None, [adapters, *jobs], queue=False, **HIDDEN)
    return on_page_load, evaluation_outputs, adapters
