"""`metrics` events: after each optimizer step (the counters it advances, the loss, this process's throughput and
ETA) and after each validation."""

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
    """Advances the counters by one optimizer step (`started`: its time.monotonic()) and emits its `metrics`
    event; `fields` are the recipe's own (learning_rate, grad_norm, accuracies, rewards…)."""
    state.step += 1
    state.batches_done += 1
    state.train_loss = train_loss
    state.trained_tokens += batch_tokens
    meter.add(started, batch_tokens, n_examples)
    emit_metrics(
        state,
        train_loss=state.train_loss,
        **fields,
        tokens_per_second=meter.tokens / meter.seconds,
        examples_per_second=meter.examples / meter.seconds,
        trained_tokens=state.trained_tokens,
        eta_seconds=(state.total_steps - state.step) * meter.seconds / meter.steps,
    )


def emit_metrics(state: TrainingState, **fields: Any) -> None:
    """A `metrics` event at the run's current step (training or validation figures in `fields`)."""
    emit("metrics", step=state.step, total_steps=state.total_steps, epoch=state.epoch, **fields, elapsed_seconds=state.elapsed)
