"""Named Gradio endpoints for fine-tuning and adapters, each one call into service.actions.Actions.

Endpoints (parameter names are part of the API contract): /validate_dataset(file),
/start_training(file, adapter_name, preset, ...training params...), /job_status(job_id),
/cancel_training(job_id), /resume_training(job_id), /list_adapters(), /delete_adapter(name).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import gradio as gr

from llama_space.service.actions import PARAM_FIELDS
from llama_space.web.errors import user_facing

if TYPE_CHECKING:
    from llama_space.service.actions import Actions


def register_training_api(actions: Actions) -> None:
    """Named endpoints for scripts, built on hidden components inside the current Blocks."""
    with gr.Column(visible=False):
        file = gr.File(label="file")
        adapter_name = gr.Textbox(label="adapter_name")
        preset = gr.Textbox("quick", label="preset")
        values = [gr.Number(None, label=field) for field in PARAM_FIELDS]
        job_id = gr.Textbox(label="job_id")
        name = gr.Textbox(label="name")
        result = gr.JSON()
        triggers = {api: gr.Button(api) for api in ("validate_dataset", "start_training", "job_status",
                                                     "cancel_training", "resume_training", "list_adapters",
                                                     "delete_adapter")}

    def start_training(path, adapter, preset_name, *numbers):
        params = actions.params(preset_name, dict(zip(PARAM_FIELDS, numbers)))
        return {"job_id": actions.start(path, adapter, params)}

    wiring = {
        "validate_dataset": (lambda path: actions.validate(path), [file]),
        "start_training": (start_training, [file, adapter_name, preset, *values]),
        "job_status": (actions.status, [job_id]),
        "cancel_training": (actions.cancel, [job_id]),
        "resume_training": (actions.resume, [job_id]),
        "list_adapters": (lambda: actions.list_adapters(), []),
        "delete_adapter": (actions.delete_adapter, [name]),
    }
    for api_name, (fn, inputs) in wiring.items():
        triggers[api_name].click(user_facing(fn, f"running {api_name}"), inputs, result, api_name=api_name)
