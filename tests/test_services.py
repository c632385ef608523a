"""The services are built once and closed once: every surface reaches the same objects, the app's end closes what
borrows the served weights before the backend, and UI callbacks take the form's values by name."""

from __future__ import annotations

import asyncio
import inspect
from dataclasses import fields
from types import SimpleNamespace

import gradio as gr
import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError

from llama_space.data import HubDataset
from llama_space.errors import UserError
from llama_space.service.actions import Actions
from llama_space.service.services import Services
from llama_space.settings import Settings
from llama_space.training.params import TrainingParams
from llama_space.web.ui.finetune_tab import NOT_IN_FORM, build_finetune_tab, form_values
from llama_space.web.ui.training_api import start_training_endpoint

from apputil import launched_app

# /start_training's parameters in order: clients may pass them by position, so this order is the contract.
START_TRAINING = ["file", "adapter_name", "preset", "learning_rate", "num_epochs", "max_steps", "batch_size",
                  "grad_accum", "max_length", "lora_r", "lora_alpha", "lora_dropout", "eval_fraction", "seed",
                  "target_modules", "save_steps", "gradient_checkpointing", "placement", "quantization", "report_to",
                  "method", "beta", "system_prompt", "from_adapter", "dataset_id", "dataset_config", "dataset_split",
                  "dataset_revision"]


def test_close_stops_what_borrows_the_weights_before_the_backend():
    closed = []

    def closer(name):
        return SimpleNamespace(close=lambda: closed.append(name))

    services = Services(backend=closer("backend"), actions=SimpleNamespace(runner=closer("training")),
                        exports=SimpleNamespace(), comparer=SimpleNamespace(), evaluator=closer("evaluation"),
                        feedback=SimpleNamespace())
    services.close()
    assert closed == ["evaluation", "training", "backend"]


def test_start_training_takes_training_params_in_declared_order():
    endpoint = start_training_endpoint(SimpleNamespace())
    assert list(inspect.signature(endpoint).parameters) == START_TRAINING


class Recorder:
    """Stands in for Actions in the Fine-tune tab: records what a start receives."""

    params = staticmethod(Actions.params)
    permissions = SimpleNamespace(controls_on=True, disabled_reason="")

    def __init__(self) -> None:
        self.started: list[tuple] = []

    def start(self, file, adapter_name, params, hub=None) -> str:
        self.started.append((file, adapter_name, params, hub))
        return "job-1"

    def adapter_names(self) -> list[str]:
        return []

    def cancel(self, job_id: str) -> dict:
        raise AssertionError("not pressed here")


def _event(demo: gr.Blocks, elem_id: str, name: str):
    """The dependency that `name` of the component with `elem_id` triggers."""
    block = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == elem_id)
    return next(fn for fn in demo.fns.values() if (block._id, name) in fn.targets)


def _run(demo: gr.Blocks, event, values: dict) -> list:
    """Run `event` with `values` given by elem_id (its other inputs keep their initial values)."""
    inputs = [values.get(c.elem_id, c.value) if hasattr(c, "value") else None for c in event.inputs]
    return asyncio.run(demo.process_api(block_fn=event, inputs=inputs, state=None))["data"]


def test_the_fine_tune_form_is_training_params_by_name():
    actions = Recorder()
    with gr.Blocks() as demo:
        build_finetune_tab(actions)
    offered = [f.name for f in fields(TrainingParams) if f.name not in NOT_IN_FORM]
    assert list(form_values("standard")) == offered
    assert [b.elem_id for b in demo.blocks.values() if str(b.elem_id).startswith("param-")] == [
        f"param-{name}" for name in offered]

    shown = _run(demo, _event(demo, "preset", "change"), {"preset": "quick"})
    assert shown == list(form_values("quick").values())  # every field of the form, in its order

    # The form still shows the standard values: they override the quick preset's, except for the fields it leaves
    # out, which keep the preset's.
    _run(demo, _event(demo, "start-training", "click"),
         {"adapter-name": "mine", "preset": "quick", "param-learning_rate": 0.005, "param-lora_r": 4,
          "param-placement": "process", "hub-dataset-id": "owner/name", "hub-dataset-split": "test"})
    [(file, adapter_name, params, hub)] = actions.started
    assert (file, adapter_name, hub) == (None, "mine", HubDataset("owner/name", split="test"))
    assert (params.learning_rate, params.lora_r, params.placement) == (0.005, 4, "process")
    standard, quick = TrainingParams.preset("standard"), TrainingParams.preset("quick")
    assert (params.max_length, params.save_steps) == (standard.max_length, quick.save_steps)


def _refusing(what: str):
    def refuse(*args, **kwargs):
        raise UserError(f"the app's own {what}")
    return refuse


def _noting(calls: list, name: str, method):
    def call(*args, **kwargs):
        calls.append(name)
        return method(*args, **kwargs)
    return call


def test_every_surface_has_the_one_set_of_services_and_the_apps_end_closes_it(tiny_model_dir, tmp_path):
    settings = Settings(model=str(tiny_model_dir), data_dir=tmp_path / "data", adapters_dir=tmp_path / "adapters")
    closed = []
    with launched_app(settings) as app:
        services: Services = app.app.state.services
        assert app.backend is services.backend is services.actions.backend is services.comparer.backend
        assert services.evaluator.comparer is services.comparer
        assert services.exports.permissions is services.permissions is services.comparer.permissions
        client = Client(app.url, verbose=False)
        for owner, method, api_name, kwargs in ((services.actions, "list_adapters", "/list_adapters", {}),
                                                (services.exports, "list_exports", "/list_exports", {}),
                                                (services.comparer, "models", "/compare", {"prompt": "hi"}),
                                                (services.evaluator, "cancel", "/cancel_evaluation", {})):
            setattr(owner, method, _refusing(method))
            with pytest.raises(AppError, match=f"the app's own {method}"):
                client.predict(**kwargs, api_name=api_name)
        for name, owner in (("evaluation", services.evaluator), ("training", services.actions.runner),
                            ("backend", services.backend)):
            owner.close = _noting(closed, name, owner.close)
    assert closed == ["evaluation", "training", "backend"]  # the lifespan closed each, as Services.close orders
