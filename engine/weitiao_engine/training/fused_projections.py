"""Linears that read the same input, computed as one matmul: attention's q/k/v and the MLP's gate/up.

transformers calls q_proj(x), k_proj(x) and v_proj(x) one after the other (gate_proj(x) and up_proj(x) likewise).
On Qwen2.5-0.5B's shape those are 896→896, 896→128 and 896→128 GEMMs, the narrow ones far from the CPU's peak,
each with its own rank-8 LoRA pair, and backward adds up three input gradients. Here a group's frozen weights are
one matrix (the members' weights become views of it: no extra memory); the first member called computes every
member's output in one GEMM, plus LoRA as one more: the members' A matrices side by side and their scaled B's
block-diagonal, added by one addmm as lora_forward.lean_forward adds one. The others take their slice. Backward is
then one GEMM for the input's gradient. (Unsloth and Liger fuse the same way on GPUs.)

Only while every member computes plain LoRA as lean_forward would (one active adapter, not merged or disabled, no
dropout in training, its input dtype rule); otherwise each member runs its own forward, so DPO's reference pass
(adapters disabled), merging and PEFT's variants behave as before.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F

# On unless the benchmark's ablation turns it off to measure it.
FUSE_PROJECTIONS = True

# Sibling modules that transformers' decoders (Qwen2/3, Llama, Mistral, Gemma…) call on the same input.
GROUPS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))
LARGEST_GROUP = max(len(g) for g in GROUPS)


def use_fused_projections(model: torch.nn.Module) -> int:
    """Every group of PEFT LoRA linears named as in GROUPS under one module, reading the same features, becomes a
    ProjectionGroup; returns how many groups."""
    from peft.tuners.lora import Linear

    if not FUSE_PROJECTIONS:
        return 0
    fused = 0
    for module in list(model.modules()):
        for names in GROUPS:
            members = [getattr(module, name, None) for name in names]
            plain = lambda m: type(m) is Linear and type(m.base_layer) is torch.nn.Linear  # noqa: E731
            if not all(plain(m) and not hasattr(m, "_unfused_forward") for m in members):
                continue  # not all there, not LoRA over an nn.Linear, or fused already
            bases = [m.base_layer for m in members]
            same = {(b.in_features, b.weight.dtype, b.weight.device, b.bias is None, b.weight.requires_grad) for b in bases}
            if len(same) == 1 and not bases[0].weight.requires_grad:
                ProjectionGroup(members)
                fused += 1
    if fused:
        from ..allocator import release_freed_memory

        release_freed_memory()  # the members' separate weights, now copied: not kept by the allocator for later
    return fused


class ProjectionGroup:
    """Members' frozen weights as one matrix, and the members' forward through `forward` (module docstring)."""

    def __init__(self, members: list[torch.nn.Module]):
        self.members = members
        bases = [m.base_layer for m in members]
        self.sizes = [b.out_features for b in bases]
        with torch.no_grad():
            self.weight = torch.cat([b.weight for b in bases])
            self.bias = None if bases[0].bias is None else torch.cat([b.bias for b in bases])
        at = 0
        for base, size in zip(bases, self.sizes):  # views: the separate copies are freed
            base.weight = torch.nn.Parameter(self.weight[at : at + size], requires_grad=False)
            if self.bias is not None:
                base.bias = torch.nn.Parameter(self.bias[at : at + size], requires_grad=False)
            at += size
        self._pending: tuple[torch.Tensor, int, dict[int, torch.Tensor]] | None = None
        for i, member in enumerate(members):
            member._unfused_forward = member.forward
            member.forward = types.MethodType(_member_forward(self, i), member)

    def adapter(self, x: torch.Tensor) -> str | None:
        """The one adapter every member computes plainly for this input, or None: then each runs its own forward."""
        first = self.members[0]
        active = first.active_adapters
        if len(active) != 1:
            return None
        name = active[0]
        autocast = torch.is_autocast_enabled(x.device.type)
        if x.dtype != self.weight.dtype and not autocast:  # e.g. bf16-stored weights computed in fp32 (precision.py)
            return None
        for m in self.members:
            if m.disable_adapters or m.merged or m.active_adapters != active or name not in m.lora_A:
                return None
            if name in m.lora_variant or m.lora_bias.get(name) or (m.training and getattr(m.lora_dropout[name], "p", 0)):
                return None
            if x.dtype != m.lora_A[name].weight.dtype and (m.cast_input_dtype_enabled or not autocast):
                return None
        return name

    def outputs(self, x: torch.Tensor, name: str) -> tuple[torch.Tensor, ...]:
        """Every member's output: x·Wᵀ + b + (x·Aᵀ)·(blockdiag(scaling·B))ᵀ, split by member ."""
        y = F.linear(x, self.weight, self.bias)
        a_weight = torch.cat([m.lora_A[name].weight for m in self.members])
        b_weight = torch.block_diag(*[m.lora_B[name].weight * m.scaling[name] for m in self.members])
        a = F.linear(x, a_weight)
        out = torch.addmm(y.reshape(-1, y.shape[-1]), a.reshape(-1, a.shape[-1]), b_weight.t())
        return out.view(y.shape).split(self.sizes, dim=-1)  # y's dtype: adapter() admits no input that would change it

    def forward(self, index: int, x: torch.Tensor) -> torch.Tensor:
        """Member `index`'s output: computed with its siblings' on the first call for this input, then handed out."""
        pending = self._pending
        if pending is None or pending[0] is not x or pending[1] != x._version or index not in pending[2]:
            name = self.adapter(x)
            if name is None:
                self._pending = None
                return self.members[index]._unfused_forward(x)
            pending = self._pending = (x, x._version, dict(enumerate(self.outputs(x, name))))
        out = pending[2].pop(index)
        if not pending[2]:
            self._pending = None  # all handed out: hold no tensor between calls
        return out


def _member_forward(group: ProjectionGroup, index: int):
    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if args or kwargs:
            return self._unfused_forward(x, *args, **kwargs)
        return group.forward(index, x)

    return forward
