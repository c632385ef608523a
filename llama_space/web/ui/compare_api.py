"""Named Gradio endpoints for comparing and evaluating adapters, each one call into service.compare / service.evaluate.

/compare(prompt, adapters, system_prompt, max_new_tokens, temperature, top_p, include_base) -> {model: answer}
/compare_stream(...the same...) -> streams {model: answer so far}
/compare_file(file, adapters, job_id, system_prompt, max_new_tokens, temperature, top_p, include_base,
              max_prompts) -> (table, CSV file, JSONL file)
/evaluate(adapters, file, job_id, max_examples, generate_answers, max_new_tokens) -> figures per model
/start_evaluation(same as /evaluate) -> its status at once; /evaluation_status(evaluation_id="") -> status
/cancel_evaluation(evaluation_id="") -> {"cancelling", "evaluation_id"}
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import gradio as gr
from gradio.data_classes import FileData
from gradio.utils import get_upload_folder

from llama_space.errors import UserError
from llama_space.service.compare import greedy
from llama_space.service.evaluation_jobs import EvalOptions
from llama_space.web.error_boundary import user_facing

if TYPE_CHECKING:
    from llama_space.service.compare import Comparer, FileRun
    from llama_space.service.evaluate import Evaluator


def uploaded_path(file) -> str | None:
    """The server path of a file the client uploaded (a FileData dict or a path); None for no file.

    gr.api passes payloads through unchecked, so a path outside Gradio's upload folder (a file of the server's
    that the client never sent) is refused rather than read.
    """
    if not file:
        return None
    raw = file.get("path") if isinstance(file, dict) else file
    if not isinstance(raw, str) or not raw:
        raise UserError("file must be an uploaded file (gradio_client.handle_file(path)).")
    path = Path(raw).resolve()
    if not path.is_relative_to(Path(get_upload_folder()).resolve()):
        raise UserError("file must be uploaded with the request (gradio_client.handle_file(path)), "
                        "not a path on the server.")
    return str(path)


def results_dir() -> Path:
    """A new folder for a comparison's CSV/JSONL: inside Gradio's upload folder, which Gradio serves (and the
    janitor sweeps), so the files can be downloaded."""
    return Path(tempfile.mkdtemp(prefix="compare-", dir=get_upload_folder()))


def file_result(run: FileRun) -> dict:
    """A file comparison as JSON: source, models, headers, rows (one per prompt) and reference scores."""
    headers, rows = run.table()
    return {"source": run.source, "models": run.models, "done": run.done, "total": run.total,
            "headers": headers, "rows": rows, "scores": run.scores()}


def register_compare_api(comparer: Comparer, evaluator: Evaluator) -> None:
    """Expose the endpoints above inside the current Blocks context."""

    def compare(prompt: str, adapters: list[str] | None = None, system_prompt: str = "", max_new_tokens: int = 256,
                temperature: float = 0.0, top_p: float = 1.0, include_base: bool = True) -> dict[str, str]:
        """Every chosen model's reply to `prompt` (base and up to four adapters, decoded together; greedy at 0)."""
        models = comparer.models(adapters, include_base)
        return comparer.compare(prompt, models, system_prompt, greedy(max_new_tokens, temperature, top_p))

    def compare_stream(prompt: str, adapters: list[str] | None = None, system_prompt: str = "",
                       max_new_tokens: int = 256, temperature: float = 0.0, top_p: float = 1.0,
                       include_base: bool = True) -> Iterator[dict[str, str]]:
        """Like /compare, streamed: each update maps every model to its reply so far."""
        models = comparer.models(adapters, include_base)
        yield from comparer.stream(prompt, models, system_prompt, greedy(max_new_tokens, temperature, top_p))

    def compare_file(file: FileData | None = None, adapters: list[str] | None = None, job_id: str = "",
                     system_prompt: str = "", max_new_tokens: int = 256, temperature: float = 0.0,
                     top_p: float = 1.0, include_base: bool = True,
                     max_prompts: int = 100) -> tuple[dict, FileData, FileData]:
        """Every model's answer to each prompt of an uploaded JSONL/CSV file (or a job's held-out split, for those
        who may train): the table as JSON, then the results as CSV and as JSONL."""
        models = comparer.models(adapters, include_base)
        run = None
        for run in comparer.run_file(models, uploaded_path(file), job_id, system_prompt,
                                     greedy(max_new_tokens, temperature, top_p), max_prompts, results_dir()):
            pass
        csv_path, jsonl_path = run.paths
        return file_result(run), FileData(path=csv_path), FileData(path=jsonl_path)

    def evaluate(adapters: list[str], file: FileData | None = None, job_id: str = "", max_examples: int = 200,
                 generate_answers: bool = True, max_new_tokens: int = 128) -> dict:
        """Loss and perplexity on the trained tokens (and, with references, exact-match and contains shares of
        greedy answers) for the base and each adapter, on a dataset file or a job's held-out split; saved into
        each adapter's metadata. On preference data (or a preference job's held-out pairs) also reward_accuracy
        (share of pairs whose chosen reply the model finds likelier than the rejected) and reward_margin (the mean
        log-probability difference, in nats). State "cancelled" when /cancel_evaluation stopped it."""
        options = EvalOptions(max_examples=max_examples, generate_answers=generate_answers,
                              max_new_tokens=max_new_tokens)
        return evaluator.evaluate(adapters, uploaded_path(file), job_id, options)

    def start_evaluation(adapters: list[str], file: FileData | None = None, job_id: str = "",
                         max_examples: int = 200, generate_answers: bool = True, max_new_tokens: int = 128) -> dict:
        """Start what /evaluate does as a background job and return at once: its status (evaluation_id, state,
        stage, done, total, message); follow it with /evaluation_status."""
        options = EvalOptions(max_examples=max_examples, generate_answers=generate_answers,
                              max_new_tokens=max_new_tokens)
        return evaluator.start(adapters, uploaded_path(file), job_id, options)

    def evaluation_status(evaluation_id: str = "") -> dict:
        """An evaluation's status (the running or newest one when no id is given; {} when there has been none);
        once it ended, "result" holds what /evaluate returns and "error" why it failed."""
        status = evaluator.status(evaluation_id) if evaluation_id else evaluator.latest()
        return status or {}

    def cancel_evaluation(evaluation_id: str = "") -> dict:
        """Stop the running evaluation (or `evaluation_id`) after its current batch;
        {"cancelling": whether one was running, "evaluation_id"}."""
        return evaluator.cancel(evaluation_id)

    gr.api(user_facing(compare, "comparing models"), api_name="compare")
    gr.api(user_facing(compare_stream, "comparing models"), api_name="compare_stream")
    gr.api(user_facing(compare_file, "comparing models on a file"), api_name="compare_file")
    gr.api(user_facing(evaluate, "evaluating adapters"), api_name="evaluate")
    gr.api(user_facing(start_evaluation, "starting an evaluation"), api_name="start_evaluation", queue=False)
    gr.api(user_facing(evaluation_status, "reading an evaluation's status"), api_name="evaluation_status",
           queue=False)
    gr.api(user_facing(cancel_evaluation, "cancelling the evaluation"), api_name="cancel_evaluation", queue=False)
