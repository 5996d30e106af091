"""What every run holds: the pieces setup builds and the counters a checkpoint restores; stopping on a
signal; the fields of the `train` result."""

from __future__ import annotations

import signal
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch

from ..protocol import TrainRequest, log


@dataclass(kw_only=True)
class TrainingState:
    """The part of a recipe's `Run` that every recipe has. A recipe's Run adds its own fields (its data,
    label task, frozen parameters…); the counters below are what a checkpoint saves and restores."""

    request: TrainRequest
    output_dir: Path
    model: Any
    tokenizer: Any
    optimizer: torch.optim.Optimizer
    scheduler: Any
    steps_per_epoch: int
    total_steps: int
    pad_id: int
    bf16: bool = False  # bf16 autocast (compute); see `precision` for how the frozen base is stored
    precision: str = "fp32"  # "bf16" (bf16 weights + autocast), "bf16-weights" (bf16 weights, fp32 compute) or "fp32"
    precision_choice: Optional[dict[str, Any]] = None  # how `precision` was chosen (precision.choose_for_run): reason, the probe's figures
    # counters, saved in every checkpoint
    step: int = 0
    epoch_index: int = 0  # the epoch being trained (0-based)
    batches_done: int = 0  # batches of that epoch already trained
    trained_tokens: int = 0
    elapsed_before: float = 0.0  # seconds spent by earlier processes of a resumed run
    train_loss: Optional[float] = None
    valid_loss: Optional[float] = None
    best_valid_loss: Optional[float] = None
    evals_without_improvement: int = 0  # early stopping's patience counter
    early_stopped: bool = False
    last_checkpoint: Optional[str] = None
    last_checkpoint_step: int = -1
    stop_requested: bool = False
    # The step's `metrics` fields until after_step has validated: one event per step carries training and validation
    # figures together (OpenAI-style plotting reads `train_loss` from every metrics event).
    pending_metrics: Optional[dict[str, Any]] = None
    started: float = field(default_factory=time.monotonic)

    @property
    def epoch(self) -> float:
        return self.epoch_index + self.batches_done / self.steps_per_epoch

    @property
    def elapsed(self) -> float:
        return self.elapsed_before + time.monotonic() - self.started


@contextmanager
def stopping_on_signals(state: TrainingState) -> Iterator[None]:
    """Inside, SIGTERM/SIGINT only set `state.stop_requested`: the current step finishes, then a checkpoint is
    saved. The previous handlers come back afterwards (matters when a recipe runs inside another process, e.g. tests)."""

    def on_signal(signum, _frame):
        state.stop_requested = True

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def interrupt(state: TrainingState, save_checkpoint: Callable[[Any], str]) -> bool:
    """A signal arrived: keep what has been trained (unless a checkpoint holds it already) and stop."""
    if state.step > 0 and state.last_checkpoint_step != state.step:
        save_checkpoint(state)
    log(f"stopped at step {state.step}; resume continues from {state.last_checkpoint} / 已停止，可恢复训练", "warning")
    return True


def result(state: TrainingState, model_dir: Optional[str], interrupted: bool, **extra: Any) -> dict[str, Any]:
    """The `train` result: {model_dir, interrupted, early_stopped, steps, total_steps, trained_tokens, final_train_loss,
    final_valid_loss, last_checkpoint, precision, precision_choice} and the recipe's own fields (`extra`)."""
    return {
        "model_dir": model_dir,
        "interrupted": interrupted,
        "early_stopped": state.early_stopped,
        "steps": state.step,
        "total_steps": state.total_steps,
        "trained_tokens": state.trained_tokens,
        "final_train_loss": state.train_loss,
        "final_valid_loss": state.valid_loss,
        "last_checkpoint": state.last_checkpoint,
        "precision": state.precision,
        "precision_choice": state.precision_choice,
        **extra,
    }
