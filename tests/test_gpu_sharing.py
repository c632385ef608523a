"""Chat beside a shared job on a GPU: the training thread keeps at most a few decoder layers of work queued ahead of the
device (forward, recomputed forward and backward), so a chat step never waits behind a whole micro-batch.

CUDA events are stood in for by objects that record when they are made, recorded and waited for: the hooks, their
placement in forward and backward, and the bound are what is tested; the GPU check measures the effect."""

from __future__ import annotations

import pytest

from llama_space.training.shared import RunAhead, decoder_layers, yield_gpu_to_chat


class Clock:
    """Fake CUDA events: `queued` lists the events recorded and not yet waited for, in order."""

    def __init__(self) -> None:
        self.queued: list[int] = []
        self.most_queued = 0
        self.made = 0

    def event(self):
        clock = self
        clock.made += 1
        number = clock.made

        class Event:
            def record(self):
                clock.queued.append(number)
                clock.most_queued = max(clock.most_queued, len(clock.queued))

            def synchronize(self):
                assert clock.queued[0] == number, "waits go oldest first"
                clock.queued.pop(0)

        return Event()


def test_run_ahead_waits_for_the_mark_depth_back():
    clock = Clock()
    ahead = RunAhead(2, clock.event)
    for _ in range(7):
        ahead.mark()
    assert clock.queued == [6, 7] and clock.most_queued == 3 and (ahead.marks, ahead.waits) == (7, 5)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_forward_and_backward_of_every_layer_are_marked_and_the_hooks_go_away(tiny_model_dir, checkpointing):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    layers = decoder_layers(model)
    assert len(layers) == model.config.num_hidden_layers == 2
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    ids = torch.tensor([[1, 2, 3, 4, 5, 6]])
    clock = Clock()
    with yield_gpu_to_chat(model, depth=1, make_event=clock.event) as ahead:
        model(input_ids=ids, labels=ids).loss.backward()
    # Forward marks each layer and backward each layer again (a checkpointed layer's recomputation stops as soon as
    # it has what backward needs, before the layer's forward hook).
    assert ahead.marks == 2 * len(layers)
    assert clock.most_queued <= 2 and ahead.waits == ahead.marks - 1
    assert all(not layer._forward_hooks for layer in layers)
    model.zero_grad()
    model(input_ids=ids, labels=ids).loss.backward()
    assert ahead.marks == 2 * len(layers)  # nothing marks once the job's context ends
