"""One supervised fine-tuning step (the LoRA/QLoRA and full recipes): forward and backward over the batch's
micro-batches, gradient clipping, the optimizer and schedule step, and the step's `metrics` event."""

from __future__ import annotations

import math
import time
from typing import Any, Callable

import torch

from .. import distributed
from ..chat_format import TokenizedExample
from .batching import batch_layout, unlabelled
from .loss import token_loss
from .optimization import clip_and_step
from .precision import autocast
from .step_metrics import Throughput, finish_step


def sft_step(state: Any, call: Callable[..., Any], examples: list[TokenizedExample], params: list[torch.nn.Parameter], meter: Throughput) -> None:
    """Trains one batch (`state`: the recipe's Run, with pad_id and packed): forward/backward, clip, step; emits `metrics`."""
    started = time.monotonic()
    hp = state.request.hyperparameters
    state.optimizer.zero_grad(set_to_none=True)
    loss_sum, n_tokens, n_correct = sft_step_backward(
        call, examples, state.pad_id, state.packed, hp.gradient_accumulation_steps, lambda: autocast(state)
    )
    grad_norm, learning_rate = clip_and_step(state, params)
    finish_step(
        state, meter, started, loss_sum / max(n_tokens, 1), sum(len(e.input_ids) for e in examples), len(examples),
        train_mean_token_accuracy=n_correct / max(n_tokens, 1), learning_rate=learning_rate,
        grad_norm=distributed.grad_norm_value(grad_norm),
    )  # fmt: skip


def sft_step_backward(
    call: Callable[..., Any], examples: list[TokenizedExample], pad_id: int, packed: bool, accumulation: int, autocast: Any
) -> tuple[float, int, int]:
    """Forward and backward of one optimizer step's batch: (loss sum, labelled tokens, argmax right), summed over ranks.

    The loss is the mean over the whole batch's assistant tokens, so each micro-batch's sum is divided by the
    batch's count: accumulated gradients equal those of the batch in one pass. Under torchrun each rank trains
    its share of the batch, and the count stays the whole batch's. `call(fn, *args)` = fn(model, *args), inside
    DDP's/FSDP's forward under torchrun; `autocast()` the run's precision context.
    """
    n_batch_tokens = max(sum(e.n_trained for e in examples), 1)
    examples = distributed.shard(examples, blank=unlabelled(examples[0]))
    micro = math.ceil(len(examples) / accumulation)
    layout = batch_layout(packed)
    loss_total, n_tokens, n_correct = 0.0, 0, 0
    for start in range(0, len(examples), micro):
        part = examples[start : start + micro]
        with autocast():
            loss_sum, n, c = call(token_loss, *layout(part, pad_id))
        (loss_sum * distributed.loss_scale() / n_batch_tokens).backward()
        loss_total, n_tokens, n_correct = loss_total + loss_sum.item(), n_tokens + n, n_correct + c
    return distributed.all_sum(loss_total, n_tokens, n_correct)
