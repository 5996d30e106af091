"""The optimizer and the schedule: AdamW with weight decay on matrices only, the run's step counts, and the
learning-rate schedule. Every setting comes from the request (its defaults live in protocol.py only)."""

from __future__ import annotations

import math
from typing import Any, Optional

import torch

from ..protocol import TrainHyperparameters


def adamw(model, hp: TrainHyperparameters) -> torch.optim.Optimizer:
    """AdamW over the trained parameters. Weight decay only on matrices: decaying biases and norm gains pulls
    them to 0 for no benefit."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or "norm" in name.lower() or name.endswith(".bias") else decay).append(p)
    params = decay + no_decay
    # torch's fused kernel: one pass per tensor instead of a dozen ops (the per-tensor loop, torch's CPU default);
    # on the 0.5B shape's 336 LoRA tensors 7 ms a step instead of 30, for the same update.
    fused = bool(params) and all(p.device.type in ("cpu", "cuda") and p.dtype in (torch.float32, torch.bfloat16, torch.float16) for p in params)
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": hp.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=hp.learning_rate, fused=fused or None
    )


def schedule(optimizer: torch.optim.Optimizer, hp: TrainHyperparameters, n_examples: int, max_steps: Optional[int]) -> tuple[int, int, Any]:
    """(steps per epoch, total steps, learning-rate scheduler): one step per batch, n_epochs epochs, at most max_steps."""
    from transformers import get_scheduler

    steps_per_epoch = math.ceil(n_examples / hp.batch_size)
    total_steps = hp.n_epochs * steps_per_epoch
    if max_steps is not None:
        total_steps = min(total_steps, max_steps)
    scheduler = get_scheduler(
        "constant_with_warmup" if hp.lr_scheduler == "constant" else hp.lr_scheduler,
        optimizer,
        num_warmup_steps=math.ceil(hp.warmup_ratio * total_steps),
        num_training_steps=total_steps,
    )
    return steps_per_epoch, total_steps, scheduler


def clip_and_step(state, params: list[torch.nn.Parameter]) -> tuple[Any, float]:
    """Clips the gradients to max_grad_norm, steps the optimizer and the schedule; (gradient norm, the step's learning rate)."""
    grad_norm = torch.nn.utils.clip_grad_norm_(params, state.request.hyperparameters.max_grad_norm)
    learning_rate = state.scheduler.get_last_lr()[0]
    state.optimizer.step()
    state.scheduler.step()
    return grad_norm, learning_rate
