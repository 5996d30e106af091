"""Precision: what `bf16` on/off/auto becomes on this machine, bf16 autocast, and bf16-stored frozen
weights computed in fp32. What the optimizer updates always stays fp32 (a bf16 AdamW update underflows)."""

from __future__ import annotations

import types
from contextlib import nullcontext

import torch
import torch.nn.functional as F

from .precision_probe import cpu_flags


def precision_mode(setting: str, bf16_checkpoint: bool = False) -> str:
    """`bf16` on/off/auto -> "bf16" (bf16 weights, bf16 autocast), "bf16-weights" (bf16 weights, fp32 compute) or "fp32".

    (The LoRA recipe's `auto` is decided by measurement instead: precision_probe.choose. The others use this rule.)
    auto: bf16 compute where it is fast (a GPU that supports it, a CPU with AMX). Elsewhere the compute is
    fp32 (torch 2.13's bf16 GEMM on AVX512-BF16 without AMX measured ~0.6x fp32's), and the frozen weights
    stay in the checkpoint's dtype: a bf16 checkpoint (as Qwen/Llama ship) is held in bf16, each matrix
    upcast for its matmul ("bf16-weights": half the base's memory, ~0.7x the speed of an fp32 copy on the
    0.5B shape, BENCHMARKS.md), so memory is what the checkpoint is and not twice that; an fp32 one stays fp32.
    """
    if setting != "auto":
        return "bf16" if setting == "on" else "fp32"
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    flags = cpu_flags()
    if "amx_bf16" in flags:
        return "bf16"
    return "bf16-weights" if bf16_checkpoint else "fp32"


def autocast_context(bf16: bool):
    """bf16 autocast when the run uses bf16, else nothing."""
    if not bf16:
        return nullcontext()
    return torch.autocast("cuda" if torch.cuda.is_available() else "cpu", dtype=torch.bfloat16)


def autocast(state):
    """`autocast_context(state.bf16)`: the run's compute precision."""
    return autocast_context(state.bf16)


def trainable_in_fp32(model) -> None:
    """What the optimizer updates stays fp32 (a bf16 AdamW update underflows); tied weights share the Parameter."""
    for p in model.parameters():
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()


def compute_in_fp32(model, keep_upcast: bool = False) -> None:
    """bf16-stored frozen weights, fp32 arithmetic: each frozen linear upcasts its weight for the call (one
    matrix at a time, freed at once); the embedding's output is upcast; the LM head, which sees only the
    few labelled positions, multiplies in bf16 rather than upcast its vocabulary-sized matrix.

    keep_upcast (with gradient checkpointing): backward uses the fp32 copy that the layer's recomputation
    made, instead of upcasting again; only the layer being recomputed holds its copies (the first forward's
    are not kept), so that costs one layer's fp32 weights and saves a third of the upcasts."""
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = causal_lm.get_output_embeddings()

    def upcast_linear(self, x):
        return _FrozenUpcastLinear.apply(x, self.weight, self.bias, keep_upcast)

    def head_in_weight_dtype(self, x):
        return F.linear(x.to(self.weight.dtype), self.weight, self.bias)

    for module in causal_lm.modules():
        if module is head:
            module.forward = types.MethodType(head_in_weight_dtype, module)
        elif isinstance(module, torch.nn.Linear) and module.weight.dtype != torch.float32 and not module.weight.requires_grad:
            module.forward = types.MethodType(upcast_linear, module)
    causal_lm.get_input_embeddings().register_forward_hook(lambda _m, _i, out: out.float())


class _FrozenUpcastLinear(torch.autograd.Function):
    """y = x·Wᵀ + b with a frozen bf16 W upcast for the call. Backward needs only W (no weight gradient), so
    the input is not kept, nor the fp32 copy (F.linear would save every layer's) unless keep_upcast."""

    @staticmethod
    def forward(ctx, x, weight, bias, keep_upcast):
        upcast = weight.to(x.dtype)
        ctx.save_for_backward(upcast if keep_upcast else weight)
        return F.linear(x, upcast, None if bias is None else bias.to(x.dtype))

    @staticmethod
    def backward(ctx, grad):
        (weight,) = ctx.saved_tensors
        return grad @ weight.to(grad.dtype), None, None, None
