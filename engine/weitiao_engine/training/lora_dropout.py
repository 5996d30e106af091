"""LoRA's input dropout, at a small fraction of `nn.Dropout`'s cost on a CPU.

PEFT computes `lora_B(lora_A(dropout(x)))` for every LoRA linear (seven per decoder layer with all-linear targets),
and with gradient checkpointing the forward runs twice. torch draws `nn.Dropout`'s mask with one Mersenne
Twister number per element (`bernoulli_`: 18% of a step on Qwen2.5-0.5B's shape, more than all the LoRA matmuls).
Here only the dropped elements are drawn, as the gaps between them, which are geometric(p): for p = 0.05 one draw
per twenty elements, by inverting the geometric distribution's CDF at a float64 uniform (a third of torch's
`geometric_` time): the same distribution (independent Bernoulli(p) per element) to float64's resolution. The draws
come from torch's generator, so checkpoint recomputation replays them and a checkpoint's RNG state resumes them.

The mask is applied through the dropped positions themselves: `index_fill_` zeroes only those ~p·n elements of
a copy of x (`masked_fill` with a bool mask read every element and measured 3-8x slower), backward zeroes the same
few elements of x's gradient, and what is kept is the positions (8 bytes per dropped element), not a mask. Where
PEFT computes plain LoRA, the dropout is folded into lora_A (`use_lora_dropout`): the 1/(1 - p) scale multiplies
A's r×d weights instead of the whole input, which saves one pass over x in forward, recomputation and backward.
"""

from __future__ import annotations

import math
import types

import torch
import torch.nn.functional as F

# Dropout folded into lora_A where it can be: on unless the benchmark's ablation turns it off to measure it.
FOLD_INTO_LORA_A = True


def drop_positions(n: int, p: float, device: torch.device) -> torch.Tensor:
    """The dropped elements among n, each dropped with probability p independently: their indices, ascending (int64)."""
    chunks, last = [], -1  # last: index of the last dropped element so far
    log_keep = math.log1p(-p)
    while True:
        # Enough gaps to pass n with overwhelming probability (mean + 6 standard deviations); else draw again.
        k = int(n * p + 6 * math.sqrt(n * p) + 16)
        # Geometric(p) gaps ≥ 1 by inversion: floor(log(1 - U) / log(1 - p)) + 1, U uniform in [0, 1).
        gaps = torch.empty(k, dtype=torch.float64, device=device).uniform_().neg_().log1p_().div_(log_keep)
        positions = gaps.to(torch.int64).add_(1).cumsum_(0).add_(last)
        last = int(positions[-1])
        if last >= n:  # a copy of those below n: backward keeps them, not the overdrawn rest
            chunks.append(positions[: int(torch.searchsorted(positions, n))].clone())
            return chunks[0] if len(chunks) == 1 else torch.cat(chunks)
        chunks.append(positions)


def drop_mask(shape: torch.Size, p: float, device: torch.device) -> torch.Tensor:
    """A bool tensor of `shape`, each element True with probability p, independently (drop_positions as a mask)."""
    drop = torch.zeros(shape.numel(), dtype=torch.bool, device=device)
    return drop.index_fill_(0, drop_positions(shape.numel(), p, device), True).view(shape)


def zero_dropped(x: torch.Tensor, p: float) -> torch.Tensor:
    """A contiguous copy of x with each element zeroed with probability p (not rescaled); differentiable: x's
    gradient is zeroed at the same elements (index_fill's backward)."""
    kept = x.reshape(-1).clone()  # filled in place as a base tensor: on a view, backward would copy the whole gradient
    return kept.index_fill_(0, drop_positions(x.numel(), p, x.device), 0.0).view(x.shape)


class LoraDropout(torch.nn.Module):
    """Drop-in for `nn.Dropout(p)`: zeroes each element with probability p and scales the rest by 1 / (1 - p)
    in training mode; the identity in eval mode."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        if self.p >= 1:
            return x * 0.0
        return zero_dropped(x, self.p).mul_(1.0 / (1.0 - self.p))

    def extra_repr(self) -> str:
        return f"p={self.p}"


class FoldedIntoLoraA(torch.nn.Module):
    """Where PEFT's dropout was: the identity, because lora_A applies it (`use_lora_dropout`)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def extra_repr(self) -> str:
        return f"p={self.p}, applied by lora_A"


def use_lora_dropout(model: torch.nn.Module) -> int:
    """Replaces every `nn.Dropout` PEFT put in front of a LoRA A matrix: folded into A where PEFT computes plain
    LoRA (lora_B(lora_A(dropout(x)))) with 0 < p < 1 (FOLD_INTO_LORA_A), else LoraDropout; returns how many."""
    replaced = 0
    for module in model.modules():
        dropouts = getattr(module, "lora_dropout", None)
        if not isinstance(dropouts, torch.nn.ModuleDict):
            continue
        for name, dropout in list(dropouts.items()):
            if not (isinstance(dropout, torch.nn.Dropout) and dropout.p > 0):
                continue
            lora_as = getattr(module, "lora_A", None)
            lora_a = lora_as[name] if isinstance(lora_as, torch.nn.ModuleDict) and name in lora_as else None
            plain = name not in getattr(module, "lora_variant", {}) and type(lora_a) is torch.nn.Linear and lora_a.bias is None
            if FOLD_INTO_LORA_A and plain and dropout.p < 1:
                dropouts[name] = FoldedIntoLoraA(dropout.p)
                lora_a.forward = types.MethodType(_dropped_lora_a_forward(dropout.p), lora_a)
            else:
                dropouts[name] = LoraDropout(dropout.p)
            dropouts[name].train(dropout.training)
            replaced += 1
    return replaced


def _dropped_lora_a_forward(p: float):
    """lora_A's forward with the dropout in front of it: dropout(x)·Aᵀ = zero_dropped(x)·(A / (1 - p))ᵀ."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return F.linear(x, self.weight)
        return F.linear(zero_dropped(x, p), self.weight * (1.0 / (1.0 - p)))

    return forward
