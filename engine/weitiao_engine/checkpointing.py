"""Gradient checkpointing for LoRA: full, or selective (keep the matmul outputs, recompute the rest).

Full checkpointing keeps only each decoder layer's input and runs the whole layer's forward again in
backward: a third more compute. Selective checkpointing (torchtune's "selective" AC, through torch's
`create_selective_checkpoint_contexts`) also keeps what every frozen matmul and attention returned, so the
recomputation is only the cheap part (norms, rotary, SiLU, dropout masks, LoRA's rank-r products); on
Qwen2.5-0.5B's shape it cuts the step time by ~15% for a tenth more memory (BENCHMARKS.md). The outputs it
keeps grow with the batch's tokens, so it is used only while they take no more memory than the frozen base
itself (`selective_fits`); a bigger batch gets full checkpointing. Both give the same gradients.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

# Keep the matmul outputs while they take at most this share of the frozen base's bytes.
SELECTIVE_MAX_SHARE = 1.0


def kept_values_per_token(config: Any, layer: torch.nn.Module) -> int:
    """Values selective checkpointing keeps per token in one decoder layer: every frozen linear's output
    (LoRA's own rank-r matrices are recomputed) and the attention's output."""
    linears = sum(
        m.out_features for name, m in layer.named_modules() if isinstance(m, torch.nn.Linear) and "lora_" not in name
    )
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return linears + heads * head_dim


def selective_fits(config: Any, layer: torch.nn.Module, tokens: int, value_bytes: int, base_bytes: int) -> bool:
    """Whether the outputs kept for a micro-batch of `tokens` tokens fit in SELECTIVE_MAX_SHARE of the base's bytes."""
    kept = tokens * config.num_hidden_layers * kept_values_per_token(config, layer) * value_bytes
    return kept <= SELECTIVE_MAX_SHARE * base_bytes


def enable(model: Any, selective: bool, lora_rank: int) -> None:
    """Turns on non-reentrant checkpointing of every decoder layer, selective or full."""
    kwargs: dict[str, Any] = {"use_reentrant": False}  # non-reentrant: no input needs to require grad (the embedding is frozen)
    if selective:
        from torch.utils.checkpoint import create_selective_checkpoint_contexts

        kwargs["context_fn"] = functools.partial(create_selective_checkpoint_contexts, functools.partial(_policy, lora_rank))
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def _attention_ops() -> set[Any]:
    aten = torch.ops.aten
    names = ("_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_flash_attention",
             "_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention")  # fmt: skip
    return {getattr(aten, n).default for n in names if hasattr(aten, n)}


_MATMULS = {torch.ops.aten.mm.default, torch.ops.aten.addmm.default}
_ATTENTION = _attention_ops()


def _policy(lora_rank: int, ctx, op, *args, **kwargs):
    from torch.utils.checkpoint import CheckpointPolicy

    if op in _ATTENTION:
        return CheckpointPolicy.MUST_SAVE
    # mm(x, Wᵀ) / addmm(b, x, Wᵀ): keep a frozen linear's output; LoRA's A and B (one side = the rank) are cheap to redo.
    if op in _MATMULS and lora_rank not in args[-1].shape:
        return CheckpointPolicy.MUST_SAVE
    return CheckpointPolicy.PREFER_RECOMPUTE
