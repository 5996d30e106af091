"""`metrics` events, one per optimizer step: the counters it advances, the loss, this process's throughput and ETA,
and, when the step is followed by a validation, its figures in the same event. finish_step holds the step's
fields, a validation adds to them (emit_metrics), and flush_metrics (evaluation.after_step) writes the event."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from ..protocol import emit
from .state import TrainingState


@dataclass
class Throughput:
    """Time spent in optimizer steps by this process (not setup, validation or saving), for tokens/s and the ETA."""

    seconds: float = 0.0
    tokens: int = 0
    examples: int = 0
    steps: int = 0

    def add(self, started: float, tokens: int, examples: int) -> None:
        self.seconds += time.monotonic() - started
        self.tokens += tokens
        self.examples += examples
        self.steps += 1


def finish_step(state: TrainingState, meter: Throughput, started: float, train_loss: float, batch_tokens: int, n_examples: int, **fields: Any) -> None:
    """Advances the counters by one optimizer step (`started`: its time.monotonic()) and holds its `metrics`
    fields for flush_metrics; `fields` are the recipe's own (learning_rate, grad_norm, accuracies, rewards…)."""
    flush_metrics(state)  # a recipe that did not call after_step after the previous step still gets its event
    state.step += 1
    state.batches_done += 1
    state.train_loss = train_loss
    state.trained_tokens += batch_tokens
    meter.add(started, batch_tokens, n_examples)
    state.pending_metrics = dict(
        train_loss=state.train_loss,
        **fields,
        tokens_per_second=meter.tokens / meter.seconds,
        examples_per_second=meter.examples / meter.seconds,
        trained_tokens=state.trained_tokens,
        eta_seconds=(state.total_steps - state.step) * meter.seconds / meter.steps,
    )


def emit_metrics(state: TrainingState, **fields: Any) -> None:
    """Figures for the run's current step (e.g. validation): added to the step's held event, else a `metrics` event of their own."""
    if state.pending_metrics is not None:
        state.pending_metrics.update(fields)
        return
    emit("metrics", step=state.step, total_steps=state.total_steps, epoch=state.epoch, **fields, elapsed_seconds=state.elapsed)


def flush_metrics(state: TrainingState) -> None:
    """Emits the step's held `metrics` event (training and any validation figures together)."""
    fields, state.pending_metrics = state.pending_metrics, None
    if fields is not None:
        emit("metrics", step=state.step, total_steps=state.total_steps, epoch=state.epoch, **fields, elapsed_seconds=state.elapsed)
