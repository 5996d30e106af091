"""PEFT's LoRA linear forward, for plain LoRA in training, with fewer passes over the layer's output.

PEFT computes `result = base(x); result = result + lora_B(lora_A(dropout(x))) * scaling`: the r-wide product is
widened to the layer's output and then scaled and added in two more ops over that whole output (and as many in
backward), and every call goes through three submodule calls and PEFT's argument checks in Python. Here the same
sum is one `addmm(result, lora_A(dropout(x)), (scaling·B)ᵀ)`: the scaling multiplies B's out×r weights and the
addition happens inside the GEMM (accumulated in fp32, rounded once). On Qwen2.5-0.5B's shape the scale and add
were ~5% of a bf16 step's op time (bench/profile_step.py --sources).

Anything else (merged or disabled adapters, several adapters, PEFT's variants such as DoRA, a LoRA bias, extra
arguments, an input PEFT would cast to the adapter's dtype) takes PEFT's own forward.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F

from .lora_dropout import FoldedIntoLoraA, zero_dropped

# On unless the benchmark's ablation turns it off to measure it.
LEAN_LORA_FORWARD = True


def use_lean_lora_forward(model: torch.nn.Module) -> int:
    """Every PEFT LoRA nn.Linear layer computes plain LoRA with `lean_forward`; returns how many."""
    from peft.tuners.lora import Linear

    if not LEAN_LORA_FORWARD:
        return 0
    layers = [m for m in model.modules() if type(m) is Linear]
    for layer in layers:
        layer._peft_forward = layer.forward
        layer.forward = types.MethodType(lean_forward, layer)
    return len(layers)


def lean_forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """base(x) + scaling · lora_B(lora_A(dropout(x))) as one addmm on top of base(x) (module docstring)."""
    active = self.active_adapters
    if args or kwargs or self.disable_adapters or self.merged or len(active) != 1:
        return self._peft_forward(x, *args, **kwargs)
    name = active[0]
    if name not in self.lora_A or name in self.lora_variant or self.lora_bias.get(name):
        return self._peft_forward(x, *args, **kwargs)
    lora_a, lora_b = self.lora_A[name].weight, self.lora_B[name].weight
    # PEFT casts x to the adapter's dtype unless told not to (lora.lora_input_in_compute_dtype, under autocast): keep its way.
    if x.dtype != lora_a.dtype and (self.cast_input_dtype_enabled or not torch.is_autocast_enabled(x.device.type)):
        return self._peft_forward(x, *args, **kwargs)
    result = self.base_layer(x)
    dropout = self.lora_dropout[name]
    if isinstance(dropout, FoldedIntoLoraA) and self.training:
        a = F.linear(zero_dropped(x, dropout.p), lora_a * (1.0 / (1.0 - dropout.p)))
    else:
        a = F.linear(dropout(x), lora_a)
    out_features = result.shape[-1]
    summed = torch.addmm(result.reshape(-1, out_features), a.reshape(-1, a.shape[-1]), (lora_b * self.scaling[name]).t())
    return summed.view(result.shape).to(result.dtype)  # as PEFT: the base layer's dtype
