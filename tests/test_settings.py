"""Settings come from flags, then environment variables, then defaults; bad values say what to fix."""

import subprocess
import sys
from pathlib import Path

import pytest

from llama_space.errors import UserError
from llama_space.inference.generation_params import GenerationParams
from llama_space.settings import Settings, load_settings

REPO = Path(__file__).resolve().parent.parent


def test_defaults_are_local_and_embedded():
    settings = load_settings([], {})
    assert (settings.host, settings.port, settings.model, settings.share) == ("127.0.0.1", 7860, "", False)


def test_flags_override_environment():
    env = {"MODEL_ID": "from-env", "GRADIO_SERVER_PORT": "9000", "LLAMA_SPACE_SHARE": "yes"}
    settings = load_settings(["--port", "9100", "--auth", "u:p"], env)
    assert settings.model == "from-env" and settings.port == 9100 and settings.share is True
    assert settings.auth_pair == ("u", "p")


@pytest.mark.parametrize("argv, message", [
    (["--port", "abc"], "port must be a whole number"),
    (["--port", "70000"], "port must be between"),
    (["--auth", "nopassword"], "USER:PASS"),
    (["--dtype", "int3"], "dtype must be"),
    (["--max-queue", "0"], "max_queue must be at least 1"),
])
def test_bad_settings_are_explained(argv, message):
    with pytest.raises(UserError, match=message):
        load_settings(argv, {})


def test_bad_boolean_environment_value():
    with pytest.raises(UserError, match="true or false"):
        load_settings([], {"LLAMA_SPACE_SHARE": "maybe"})


def test_help_lists_flags_with_env_names():
    out = subprocess.run([sys.executable, "app.py", "--help"], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout
    for text in ("--model", "MODEL_ID", "--host", "--port", "--share", "--auth", "LLAMA_SPACE_AUTH"):
        assert text in out


def test_settings_paths_are_paths():
    assert isinstance(Settings(adapters_dir="x").adapters_dir, Path)


@pytest.mark.parametrize("kwargs, message", [
    ({"max_new_tokens": 0}, "max_new_tokens"),
    ({"temperature": -1}, "temperature"),
    ({"temperature": float("nan")}, "temperature"),
    ({"top_p": 1.5}, "top_p"),
    ({"top_p": 0}, "top_p"),
    ({"top_k": -3}, "top_k"),
    ({"repetition_penalty": 9}, "repetition_penalty"),
    ({"stop": [""]}, "stop"),
])
def test_generation_params_range_checks(kwargs, message):
    with pytest.raises(UserError, match=message):
        GenerationParams(**kwargs)


def test_greedy_params_turn_sampling_off():
    assert GenerationParams(temperature=0).generate_kwargs()["do_sample"] is False
    assert GenerationParams(temperature=0.5).generate_kwargs()["do_sample"] is True


@pytest.mark.parametrize("kwargs, allowed", [
    ({}, True),
    ({"host": "0.0.0.0"}, False),
    ({"share": True}, False),
    ({"share": True, "auth": "u:p"}, True),
    ({"host": "0.0.0.0", "allow_public_changes": True}, True),
])
def test_changes_are_off_when_exposed_without_auth(kwargs, allowed, monkeypatch):
    monkeypatch.delenv("SPACE_ID", raising=False)
    settings = Settings(**kwargs)
    assert settings.changes_allowed is allowed
    assert bool(settings.changes_disabled_reason) is not allowed


def test_a_space_counts_as_exposed(monkeypatch):
    monkeypatch.setenv("SPACE_ID", "someone/llama-space")
    assert Settings().exposed and not Settings().changes_allowed
