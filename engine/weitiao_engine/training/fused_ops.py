"""Elementwise ops of the decoder computed with fewer kernels or fewer kept tensors, where that measured better.

RMSNorm (Qwen2, Qwen3, Llama) as transformers writes it is six ops each way (upcast, pow, mean, add + rsqrt,
mul, mul by the weight); torch's F.rms_norm is one. In fp32 it measured ~2x faster forward + backward on the
0.5B shape's rows; in bf16 its CPU kernel measured slower than transformers' ops, so bf16 inputs keep those.
Same arithmetic in fp32 (the outputs and gradients matched exactly).

The SwiGLU MLP (down(silu(gate(x)) · up(x))) as autograd runs it keeps gate, up and silu(gate) for backward:
three tokens × intermediate tensors per layer, the largest activations of a step. `SiluMul` keeps gate and up
and recomputes silu(gate) in backward (one elementwise pass): on Qwen2.5-0.5B's shape in bf16, batch 8 of ~440
tokens, a third of the MLP's activations, ~100 MB of the peak. Same ops, same dtype: the same numbers.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F

RMS_NORMS = ("Qwen2RMSNorm", "Qwen3RMSNorm", "LlamaRMSNorm")  # weight * x / sqrt(mean(x²) + eps), nothing more
SWIGLU_MLPS = ("Qwen2MLP", "Qwen3MLP", "LlamaMLP", "MistralMLP")  # down_proj(act_fn(gate_proj(x)) * up_proj(x))
# SiluMul: on unless the benchmark's ablation turns it off to measure it.
SILU_MUL = True


def use_fused_ops(model) -> int:
    """use_fused_rms_norm and use_silu_mul: how many modules changed."""
    return use_fused_rms_norm(model) + use_silu_mul(model)


def use_fused_rms_norm(model) -> int:
    """Every RMSNorm of those classes computes fp32 inputs with F.rms_norm; returns how many."""

    def forward(self, x):
        if x.dtype != torch.float32:
            return self._unfused_forward(x)
        weight = self.weight if self.weight.dtype == torch.float32 else self.weight.float()  # bf16-stored weights
        return F.rms_norm(x, (x.shape[-1],), weight, self.variance_epsilon)

    norms = [m for m in model.modules() if type(m).__name__ in RMS_NORMS]
    for norm in norms:
        norm._unfused_forward = norm.forward
        norm.forward = types.MethodType(forward, norm)
    return len(norms)


def use_silu_mul(model) -> int:
    """Every SwiGLU MLP of those classes whose activation is SiLU multiplies through SiluMul; returns how many."""

    def forward(self, x):
        return self.down_proj(SiluMul.apply(self.gate_proj(x), self.up_proj(x)))

    if not SILU_MUL:
        return 0
    silu = lambda m: getattr(getattr(m, "config", None), "hidden_act", None) in ("silu", "swish")  # noqa: E731
    mlps = [m for m in model.modules() if type(m).__name__ in SWIGLU_MLPS and silu(m)]
    for mlp in mlps:
        mlp._unfused_forward = mlp.forward
        mlp.forward = types.MethodType(forward, mlp)
    return len(mlps)


class SiluMul(torch.autograd.Function):
    """silu(gate) · up, keeping gate and up for backward and recomputing silu(gate) there (module docstring)."""

    @staticmethod
    def forward(ctx, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(gate, up)
        return F.silu(gate) * up

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        gate, up = ctx.saved_tensors
        grad_gate = torch.ops.aten.silu_backward(grad * up, gate) if ctx.needs_input_grad[0] else None
        grad_up = grad * F.silu(gate) if ctx.needs_input_grad[1] else None
        return grad_gate, grad_up
