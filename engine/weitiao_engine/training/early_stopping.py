"""Early stopping: count validations without improvement; stop once `early_stopping_patience` of them ran."""

from __future__ import annotations

import math

from ..protocol import log
from .state import TrainingState


def record_validation_loss(state: TrainingState, loss: float) -> None:
    """Sets the run's validation loss, its best, and the count of validations without an improvement of more
    than early_stopping_min_delta."""
    state.valid_loss = loss
    best = state.best_valid_loss
    improved = best is None or loss < best - state.request.hyperparameters.early_stopping_min_delta
    state.evals_without_improvement = 0 if improved else state.evals_without_improvement + 1
    state.best_valid_loss = min(loss, best if best is not None else math.inf)


def patience_ran_out(state: TrainingState, last: bool) -> bool:
    """Whether to stop after this step (never after the last one: the run ends anyway)."""
    patience = state.request.hyperparameters.early_stopping_patience
    return patience is not None and state.evals_without_improvement >= patience and not last


def stop_early(state: TrainingState, loss_name: str) -> None:
    """Marks the run early-stopped and says why; `loss_name` names the validation loss ("validation loss", …)."""
    state.early_stopped = True
    patience = state.request.hyperparameters.early_stopping_patience
    log(
        f"early stopping at step {state.step}: {loss_name} has not improved for {patience} evaluations"
        f" (best {state.best_valid_loss:.4f}) / 验证损失连续 {patience} 次未改善，提前停止"
    )
