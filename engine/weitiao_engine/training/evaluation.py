"""Evaluation hooks: the SFT validation pass (loss, token accuracy, label metrics at epoch ends) and what
follows every optimizer step (validate, checkpoint, stop early) on the request's schedule."""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch

from .. import distributed
from ..metrics import label_metrics
from ..protocol import emit, log
from .batching import EVAL_BATCH_SIZE, collate, length_sorted_batches, unlabelled
from .early_stopping import patience_ran_out, record_validation_loss, stop_early
from .labels import LabelTask, classify
from .loss import token_loss
from .precision import autocast
from .state import TrainingState
from .step_metrics import emit_metrics, flush_metrics


def due(step: int, every: int) -> bool:
    return every > 0 and step % every == 0


@torch.no_grad()
def validate(state: TrainingState, valid_data: list, label_task: Optional[LabelTask], with_labels: bool, call: Optional[Callable[..., Any]] = None) -> None:
    """Validation loss (mean over assistant tokens) and, at epoch ends, label metrics; emits the events.
    `call(fn, *args)` = fn(model, *args) inside FSDP's forward (full fine-tuning under torchrun), else direct."""
    model = state.model
    call = call or (lambda fn, *args: fn(model, *args))
    model.eval()  # no dropout: validation neither varies nor consumes the RNG that training uses
    try:
        with autocast(state):
            loss_sum, n_tokens, n_correct = 0.0, 0, 0
            data = distributed.shard(valid_data, blank=unlabelled(valid_data[0]))  # each rank a share
            for batch in length_sorted_batches([len(e.input_ids) for e in data], EVAL_BATCH_SIZE):
                s, n, c = call(token_loss, *collate([data[i] for i in batch], state.pad_id))
                loss_sum, n_tokens, n_correct = loss_sum + s.item(), n_tokens + n, n_correct + c
            loss_sum, n_tokens, n_correct = distributed.all_sum(loss_sum, n_tokens, n_correct)
            record_validation_loss(state, loss_sum / max(n_tokens, 1))
            emit_metrics(state, valid_loss=state.valid_loss, valid_mean_token_accuracy=n_correct / max(n_tokens, 1))
            if with_labels:
                fields: dict[str, Any] = {"valid_loss": state.valid_loss}
                if label_task is not None:
                    predicted = call(classify, label_task, state.pad_id)  # under FSDP: on every rank
                    fields["label_metrics"] = label_metrics(label_task.expected, predicted, label_task.labels)
                    log(f"step {state.step}: validation accuracy {fields['label_metrics']['accuracy']:.4f}")
                emit("eval", step=state.step, epoch=state.epoch, **fields)
    finally:
        model.train()


def after_step(
    state: TrainingState, n_batches: int, has_validation: bool, validate: Callable[[bool], Any], save_checkpoint: Callable[[Any], str],
    loss_name: str = "validation loss",
) -> bool:  # fmt: skip
    """What follows an optimizer step: validation (every eval_every_steps, at epoch ends and the last step;
    `validate(at_epoch_end_or_last)`), a checkpoint (every save_every_steps, at epoch ends, the last step and
    before stopping early), early stopping. Returns whether training is over (last step, or stopped early)."""
    request = state.request
    epoch_end = state.batches_done == n_batches
    last = state.step == state.total_steps
    if has_validation and (epoch_end or last or due(state.step, request.eval_every_steps)):
        validate(epoch_end or last)
    flush_metrics(state)  # one event: the step's training figures and the validation just run
    stopping = patience_ran_out(state, last)
    if epoch_end or last or stopping or due(state.step, request.save_every_steps):
        save_checkpoint(state)
    if stopping:
        stop_early(state, loss_name)
    return last or stopping


def next_epoch_if_done(state: TrainingState, n_batches: int) -> None:
    """After an epoch's batches: the next epoch starts at its first batch."""
    if state.batches_done == n_batches:
        state.epoch_index += 1
        state.batches_done = 0
