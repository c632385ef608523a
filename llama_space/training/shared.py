"""The shared placement: a LoRA trained in a thread of the app process on the weights chat serves.

The trained model is a second module tree whose parameters and buffers *are* the served model's tensors (the
backend's `training_copy`, made by model/sharing.py): LoRA is injected into that tree alone, which trains while
the original serves in eval mode under inference mode, so chat keeps answering with the same weights and only
one copy of the base is in memory. The served model cannot be the trained one: PEFT refuses per-request
`adapter_names` on a model in training mode, and injecting the new adapter into the served tree would change
what chat runs mid-reply.

GPU share: on CUDA chat decodes on a high-priority stream (inference/manager.py) and the training thread keeps at
most `RUN_AHEAD_LAYERS` decoder layers of work queued ahead of the GPU (`yield_gpu_to_chat`), forward and backward,
so a chat step waits behind a layer or two of training, not a whole queued micro-batch.

CPU share: on CPU the training thread runs with at most half the cores as its OpenMP team (`train_threads`)
and at a lower scheduling priority (`TRAIN_NICE`, Linux per-thread nice), so it never takes every core from
chat, whose thread governor counts it as this process's own work. On 2 cores chat still decodes at ~0.6x its
alone speed during training, about what it does without the limit: both loops also take turns at the GIL
(BENCHMARKS.md, "Chat beside a shared training job"; bench/shared_training.py).
"""

from __future__ import annotations

import collections
import logging
import os
import threading
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Self

from transformers import TrainerCallback

from llama_space.jobs import files as jobfiles

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

TRAIN_NICE = 10  # the training thread's nice value on Linux: a contended core goes ~90% to chat's threads
RUN_AHEAD_LAYERS = 2  # decoder layers of GPU work a shared job may have queued: what a chat step can wait behind
JOB_LOGGERS = ("llama_space.training", "transformers", "peft")  # what a shared job writes to its train.log


@dataclass
class SharedBase:
    """What a shared job trains on instead of loading a base: the served weights in a tree of their own."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    stop: threading.Event = field(default_factory=threading.Event)  # set: checkpoint and stop (app closing)

    def callbacks(self) -> list[TrainerCallback]:
        """The Trainer callbacks a shared job adds to the process job's."""
        return [StopOnEvent(self.stop)]


class StopOnEvent(TrainerCallback):
    """When `event` is set, end the run after the current optimizer step with a checkpoint, to resume from."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def on_step_end(self, args, state, control, **kwargs):
        if self.event.is_set():
            control.should_save = True
            control.should_training_stop = True


def train_threads(cores: int | None = None) -> int:
    """OpenMP threads for a shared job's training thread on CPU: half the cores, at least one."""
    return max(1, (cores or os.cpu_count() or 1) // 2)


@contextmanager
def yield_cpu_to_chat():
    """In the training thread: fewer OpenMP threads than cores, and a lower priority than chat's threads.

    torch.set_num_threads also sets the count threads started later begin with (chat's serial workers, a
    restarted batch engine): it is set back when the job ends to this new thread's own first count, which is
    what threads began with before the job (not every core when chat's ThreadGovernor last chose fewer).
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(train_threads())
    if hasattr(os, "setpriority"):
        try:  # on Linux a thread is a task with a nice value of its own (a thread ending takes it along)
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), TRAIN_NICE)
        except OSError as exc:
            log.warning("could not lower the training thread's priority (%s)", exc.strerror)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class RunAhead:
    """Bounds how far a thread's GPU work runs ahead of the GPU: at each `mark` an event is recorded on the current
    stream, and the thread waits for the one `depth` marks back. Kernels are queued asynchronously, so without
    this a training thread queues a whole micro-batch (hundreds of milliseconds of work) in front of chat's next
    decode step."""

    def __init__(self, depth: int, make_event: Callable) -> None:
        self.depth = depth
        self.make_event = make_event
        self.pending: collections.deque = collections.deque()
        self.marks = 0
        self.waits = 0

    def mark(self) -> None:
        event = self.make_event()
        event.record()
        self.pending.append(event)
        self.marks += 1
        while len(self.pending) > self.depth:
            self.pending.popleft().synchronize()
            self.waits += 1


def decoder_layers(model) -> list:
    """The model's decoder layers: its ModuleList as long as the config's layer count (none found: [])."""
    import torch

    count = getattr(model.config, "num_hidden_layers", None)
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == count:
            return list(module)
    return []


@contextmanager
def yield_gpu_to_chat(model, depth: int = RUN_AHEAD_LAYERS, make_event: Callable | None = None):
    """In the training thread on CUDA: mark every decoder layer's forward (recomputed ones under gradient
    checkpointing too) and, through a hook on its output, its backward with a RunAhead of `depth` (yielded)."""
    import torch

    ahead = RunAhead(depth, make_event or torch.cuda.Event)

    def after_layer(module, args, output):
        ahead.mark()
        hidden = output[0] if isinstance(output, tuple) else output
        if isinstance(hidden, torch.Tensor) and hidden.requires_grad:
            hidden.register_hook(lambda grad: ahead.mark())  # runs as backward passes this layer, on its thread

    handles = [layer.register_forward_hook(after_layer) for layer in decoder_layers(model)]
    try:
        yield ahead
    finally:
        for handle in handles:
            handle.remove()


class ThreadLog(logging.Handler):
    """Appends what one thread logs to a job's train.log, as the job process's stderr would."""

    def __init__(self, job_dir: Path, thread_id: int) -> None:
        super().__init__(logging.INFO)
        self.thread_id = thread_id
        self.path = Path(job_dir) / jobfiles.LOG_FILE
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

    def filter(self, record: logging.LogRecord) -> bool:
        return record.thread == self.thread_id

    def emit(self, record: logging.LogRecord) -> None:
        try:
            with open(self.path, "a") as f:
                f.write(self.format(record) + "\n")
        except Exception:  # noqa: BLE001 - logging must never end the job; Handler reports it on stderr
            self.handleError(record)

    def __enter__(self) -> Self:
        for name in JOB_LOGGERS:
            logger = logging.getLogger(name)
            logger.addHandler(self)
        # The job's own progress lines, which the job process logs at INFO (transformers keeps its verbosity).
        training = logging.getLogger(JOB_LOGGERS[0])
        if training.getEffectiveLevel() > logging.INFO:
            training.setLevel(logging.INFO)
        return self

    def __exit__(self, *exc_info) -> None:
        for name in JOB_LOGGERS:
            logging.getLogger(name).removeHandler(self)
