"""The whole Llama Space lifecycle from a script: validate data, train a LoRA adapter, chat with it.

    python examples/lifecycle.py --url http://127.0.0.1:7860/ --adapter pirate --max-steps 8

Needs only `gradio_client` and a running app (`make run`).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from gradio_client import Client, handle_file

HERE = Path(__file__).resolve().parent


def wait_until_done(client: Client, job_id: str, poll: float = 2.0) -> dict:
    """Poll /job_status until the job leaves queued/running, printing progress."""
    while True:
        status = client.predict(job_id=job_id, api_name="/job_status")
        loss = status["loss"]
        print(f"  {status['state']:<9} step {status['step']}/{status['total_steps'] or '?'}"
              f"  loss {loss if loss is None else round(loss, 4)}  eta {status['eta_seconds']}", flush=True)
        if status["state"] not in ("queued", "running"):
            return status
        time.sleep(poll)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:7860/")
    parser.add_argument("--data", default=str(HERE / "persona.jsonl"))
    parser.add_argument("--adapter", default="pirate")
    parser.add_argument("--preset", default="quick", choices=["quick", "standard"])
    parser.add_argument("--max-steps", type=int, default=None, help="override the preset's step count")
    parser.add_argument("--question", default="What is the capital of France?")
    args = parser.parse_args(argv)

    client = Client(args.url, verbose=False)
    report = client.predict(file=handle_file(args.data), api_name="/validate_dataset")
    print(f"1. validated: {report['summary']}")
    if not report["ok"]:
        return 1

    # Every training parameter can be given by name; the ones left out keep the preset's value.
    job = client.predict(file=handle_file(args.data), adapter_name=args.adapter, preset=args.preset,
                         max_steps=args.max_steps, api_name="/start_training")
    print(f"2. training job {job['job_id']} started")
    status = wait_until_done(client, job["job_id"])
    if status["state"] != "completed":
        print(f"training {status['state']}: {status['error']}", file=sys.stderr)
        return 1

    names = [item["name"] for item in client.predict(api_name="/list_adapters")]
    print(f"3. adapters: {', '.join(names)}")
    for adapter in ("base", args.adapter):
        reply = client.predict(prompt=args.question, adapter=adapter, max_new_tokens=64, temperature=0.0,
                               api_name="/generate")
        print(f"4. [{adapter}] {reply}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
