"""The whole fine-tune lifecycle through gradio_client on the embedded model: upload, train, chat with it, as the
example script examples/lifecycle.py runs it and as a test checks it beside that script."""

import subprocess
import sys
from pathlib import Path

import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from apputil import embedded_settings, running_app
from conftest import REPO

pytestmark = pytest.mark.slow  # training, export or app runs of many seconds: make test-fast leaves them out

PERSONA = REPO / "examples" / "persona.jsonl"
QUESTION = "What is the capital of France?"
GREEDY = {"max_new_tokens": 40, "temperature": 0.0}


def start(client: Client, adapter_name: str, **params) -> dict:
    """/start_training on the persona data with the quick preset cut to 8 steps (or `params`)."""
    return client.predict(file=handle_file(str(PERSONA)), adapter_name=adapter_name, preset="quick",
                          **{"max_steps": 8, **params}, api_name="/start_training")


def generate(client: Client, adapter: str) -> str:
    return client.predict(prompt=QUESTION, adapter=adapter, **GREEDY, api_name="/generate")


@pytest.fixture(scope="module")
def settings(embedded_dir, tmp_path_factory):
    return embedded_settings(tmp_path_factory.mktemp("lifecycle"))


@pytest.fixture(scope="module")
def app_url(settings):
    with running_app(settings) as url:
        yield url


@pytest.fixture(scope="module")
def client(app_url):
    return Client(app_url, verbose=False)


def test_upload_train_and_chat_with_the_adapter(client, app_url):
    """The lifecycle example script validates, trains and chats; while its job trains, a second job is refused and
    chat keeps answering; then the adapter answers in character over /generate and /chat, and the base does not."""
    report = client.predict(file=handle_file(str(PERSONA)), api_name="/validate_dataset")
    assert report["ok"] and report["valid_rows"] == 96 and report["errors"] == []
    assert '<mark class="trained"' in report["preview"][0]

    base_answer = generate(client, "")
    assert "Paris" in base_answer and "Ahoy" not in base_answer

    script = subprocess.Popen([sys.executable, str(REPO / "examples" / "lifecycle.py"), "--url", app_url,
                               "--adapter", "pirate", "--max-steps", "8"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        output = []
        for line in script.stdout:
            output.append(line)
            if line.startswith("2. training job"):
                break
        assert output and output[-1].startswith("2. training job"), "".join(output)[-2000:]
        job_id = output[-1].split()[3]
        with pytest.raises(AppError, match="already running"):
            start(client, "pirate2")
        # While it trains, chat keeps answering.
        assert "Paris" in generate(client, "base")
        output.append(script.communicate(timeout=600)[0])
    finally:
        if script.poll() is None:
            script.kill()
            script.wait()
    printed = "".join(output)
    assert script.returncode == 0, printed[-2000:]
    assert "1. validated: 96 of 96 rows" in printed
    assert "completed step 8/8" in printed
    assert "3. adapters: pirate\n" in printed
    assert "4. [base] The capital of France is Paris." in printed and "4. [pirate] Ahoy" in printed

    status = client.predict(job_id=job_id, api_name="/job_status")
    assert status["state"] == "completed", status
    assert status["step"] == status["total_steps"] == 8 and status["adapter"] == "pirate"

    names = [item["name"] for item in client.predict(api_name="/list_adapters")]
    assert names == ["pirate"]
    tuned = generate(client, "pirate")
    assert tuned.startswith("Ahoy"), tuned
    streamed = list(client.submit(message=QUESTION, adapter="pirate", **GREEDY, api_name="/chat"))
    assert streamed[-1] == tuned
    assert generate(client, "base") == base_answer


def test_restarted_app_finds_the_job_and_adapter(client, settings):
    jobs = sorted(p.name for p in (Path(settings.data_dir) / "jobs").iterdir())
    assert jobs, "the previous test created a job"
    with running_app(settings) as url:
        again = Client(url, verbose=False)
        status = again.predict(job_id=jobs[-1], api_name="/job_status")
        assert status["state"] == "completed" and status["adapter"] == "pirate"
        assert [a["name"] for a in again.predict(api_name="/list_adapters")] == ["pirate"]


def test_bad_requests_get_clear_errors(client, tmp_path):
    bad = tmp_path / "broken.json"
    bad.write_text("{not json")
    with pytest.raises(AppError, match="JSON"):
        client.predict(file=handle_file(str(bad)), api_name="/validate_dataset")
    with pytest.raises(AppError, match="Invalid adapter name"):
        start(client, "../evil")
    with pytest.raises(AppError, match="exists"):
        start(client, "pirate")
    with pytest.raises(AppError, match="learning_rate"):
        start(client, "x", learning_rate=-1)
    with pytest.raises(AppError, match="no training job"):
        client.predict(job_id="20990101-000000-abcdef", api_name="/job_status")
    with pytest.raises(AppError, match="no adapter named 'nothing-here'"):
        client.predict(name="nothing-here", api_name="/delete_adapter")


def test_delete_adapter(client):
    assert client.predict(name="pirate", api_name="/delete_adapter") == {"deleted": "pirate"}
    assert client.predict(api_name="/list_adapters") == []
    with pytest.raises(AppError, match="Unknown adapter"):
        generate(client, "pirate")
