"""The GPU check's phases under one time budget: each phase's state (ok, failed, skipped), seconds and message, and
SIGTERM turned into a failure of the phase that runs. Imported by gpu_check.py, which puts bench/ on sys.path."""

from __future__ import annotations

import time
import traceback


class Terminated(BaseException):
    """SIGTERM (a time limit's): the phase running fails, the rest are skipped, the report is still printed. Not an
    Exception, so that no broad `except Exception` on the way (the app's own fallbacks) takes it for a failure."""


class Run:
    """Runs phases within a time budget: each one's state (ok, failed, skipped), seconds and message."""

    def __init__(self, budget_s: float, needs: dict) -> None:
        self.started, self.budget_s, self.needs = time.perf_counter(), budget_s, needs
        self.phases: dict[str, dict] = {}
        self.terminated = False

    def left(self) -> float:
        return self.budget_s - (time.perf_counter() - self.started)

    def phase(self, name: str, work, skip: str = ""):
        """work()'s value, or None when it failed or was skipped (`skip`: why it cannot run here)."""
        need = self.needs[name]
        if not skip and self.terminated:
            skip = "the run was terminated"
        if not skip and self.left() < need:
            skip = f"time: {self.left():.0f} s of the budget left, the phase needs about {need} s"
        if skip:
            self.phases[name] = {"state": "skipped", "seconds": 0.0, "message": skip}
            print(f"[{name}: skipped, {skip}]", flush=True)
            return None
        started = time.perf_counter()
        try:
            value, state, message = work(), "ok", ""
        except (Exception, Terminated) as exc:  # noqa: BLE001 - recorded, and the next phase runs
            traceback.print_exc()
            self.terminated = self.terminated or isinstance(exc, Terminated)
            value, state, message = None, "failed", f"{type(exc).__name__}: {str(exc).strip()[:500]}"
        seconds = round(time.perf_counter() - started, 1)
        self.phases[name] = {"state": state, "seconds": seconds, "message": message}
        print(f"[{name}: {state} in {seconds} s{', ' + message if message else ''}]", flush=True)
        return value
