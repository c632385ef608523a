"""The SFT Trainer: cross-entropy over the labelled (assistant) tokens, the LM head run a chunk at a time."""

from __future__ import annotations

import torch

from llama_space.data.tokenize import IGNORE_INDEX
from llama_space.training.loss import LOGITS_BUDGET, PLAIN_HEAD_MODEL_TYPES, token_nll_sum
from llama_space.training.trainer import JobTrainer


class SFTTrainer(JobTrainer):
    """A JobTrainer whose loss projects only trained positions through the LM head, in chunks."""

    logits_budget: int = LOGITS_BUDGET  # most logit elements alive at once in the training loss

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """Sum of token cross-entropies over the labelled tokens, divided by the labelled tokens of the step.

        Only positions that predict a labelled (assistant) token go through the LM head: with prompts
        masked that skips about half of the (batch tokens x vocabulary) logits and their gradients; those
        are taken a chunk at a time (loss.py), so the full set of logits never exists.
        """
        labels = inputs.pop("labels")
        targets = labels[:, 1:]  # the logits at position i predict token i + 1
        if self._lean_loss(model):
            loss, outputs = self._chunked_loss(model, inputs, targets)
        else:
            keep = (targets != IGNORE_INDEX).any(dim=0).nonzero().squeeze(-1)
            outputs = model(**inputs, logits_to_keep=keep)
            loss = torch.nn.functional.cross_entropy(outputs.logits.flatten(0, 1).float(),
                                                     targets[:, keep].flatten(), ignore_index=IGNORE_INDEX,
                                                     reduction="sum")
        # Trainer counts the labelled tokens of all micro-batches of a step, so the loss is a true mean
        # over the step; without that count (evaluation) it is the mean over this batch.
        self.loss_is_scaled_for_ga = num_items_in_batch is not None
        if num_items_in_batch is None:
            loss = loss / (targets != IGNORE_INDEX).sum().clamp(min=1)
        else:
            loss = loss / num_items_in_batch
            if self.args.average_tokens_across_devices and self.args.world_size > 1:
                loss = loss * self.args.world_size  # DDP averages gradients; the count covers every rank
        return (loss, outputs) if return_outputs else loss

    def _lean_loss(self, model) -> bool:
        """Whether the loss may run the LM head itself, in chunks, on the final hidden states.

        Sharded weights (FSDP, ZeRO-3) are whole only inside the model's forward, and some architectures
        scale or cap their logits after the head: those keep the loss on the forward's own logits.
        """
        sharded = self.is_fsdp_enabled or self.is_deepspeed_enabled
        model_type = getattr(self.accelerator.unwrap_model(model).config, "model_type", None)
        return not sharded and model_type in PLAIN_HEAD_MODEL_TYPES

    def _chunked_loss(self, model, inputs, targets):
        """Summed loss from the final hidden states at the labelled positions, the LM head applied per chunk."""
        no_positions = torch.empty(0, dtype=torch.long, device=targets.device)
        # The forward's own LM head sees no position; only the last hidden state (after the norm) is kept.
        outputs = model(**inputs, logits_to_keep=no_positions, output_hidden_states=[-1])
        trained = targets != IGNORE_INDEX
        hidden = outputs.hidden_states[-1][:, :-1][trained]  # (labelled tokens, hidden size)
        outputs.hidden_states = None
        unwrapped = self.accelerator.unwrap_model(model)
        summed = token_nll_sum(unwrapped.get_output_embeddings(), hidden, targets[trained],
                               unwrapped.config.vocab_size, self.logits_budget)
        return summed, outputs
