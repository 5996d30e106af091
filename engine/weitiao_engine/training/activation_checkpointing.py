"""Gradient (activation) checkpointing: whether a run uses it, and for LoRA full or selective (keep the
matmul outputs, recompute the rest).

Full checkpointing keeps only each decoder layer's input and runs the whole layer's forward again in
backward: a third more compute. Selective checkpointing (torchtune's "selective" AC, through torch's
`create_selective_checkpoint_contexts`) also keeps what every frozen matmul and attention returned, so the
recomputation is only the cheap part (norms, rotary, SiLU, dropout masks, LoRA's rank-r products); on
Qwen2.5-0.5B's shape it cuts the step time by ~15% for a tenth more memory (BENCHMARKS.md). The outputs it
keeps grow with the batch's tokens, so it is used only while they take no more memory than the frozen base
itself (`selective_fits`); a bigger batch gets full checkpointing. Both give the same gradients.

With `gradient_checkpointing: "auto"`, a LoRA run whose micro-batches are small enough keeps every activation and
recomputes nothing (`all_fit`): short examples (the takeaway reviews run ~55 tokens) leave a batch's activations
smaller than the base. On Qwen2.5-0.5B's shape, batch 8 of ~440 tokens in bf16, that measured 1.08x selective's
examples/s for +18% peak RSS (bench/worker.py runs, BENCHMARKS.md).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Optional

import torch

from .. import distributed

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


def kept_bytes(config: Any, layer: torch.nn.Module, tokens: int, value_bytes: int) -> int:
    """Bytes selective checkpointing keeps for a micro-batch of `tokens` tokens (every decoder layer)."""
    return tokens * config.num_hidden_layers * kept_values_per_token(config, layer) * value_bytes


def selective_fits(config: Any, layer: torch.nn.Module, tokens: int, value_bytes: int, base_bytes: int) -> bool:
    """Whether the outputs kept for a micro-batch of `tokens` tokens fit in SELECTIVE_MAX_SHARE of the base's bytes."""
    return kept_bytes(config, layer, tokens, value_bytes) <= SELECTIVE_MAX_SHARE * base_bytes


# Everything a decoder layer saves for backward without checkpointing, as a multiple of what selective keeps: the
# linears' inputs, the norms' and the activation's inputs and outputs besides the matmul outputs. Measured on
# Qwen2.5-0.5B's shape in bf16 (peak RSS with none vs selective, 440 tokens): ~2.2x.
ALL_ACTIVATIONS_PER_KEPT = 2.2


def all_fit(config: Any, layer: torch.nn.Module, tokens: int, value_bytes: int, base_bytes: int) -> bool:
    """Whether every activation of a micro-batch of `tokens` tokens (no checkpointing) fits in SELECTIVE_MAX_SHARE of the base's bytes."""
    return kept_bytes(config, layer, tokens, value_bytes) * ALL_ACTIVATIONS_PER_KEPT <= SELECTIVE_MAX_SHARE * base_bytes


def mode_for(setting: Any, config: Any, layer: torch.nn.Module, tokens: int, value_bytes: int, base_bytes: int) -> str:
    """The checkpointing of a run that checkpoints at all (`setting`: true or "auto"), for its largest micro-batch of
    `tokens` tokens: "auto" none while every activation fits in the base's bytes; else selective while what it keeps
    fits there; else full. The recipe and `estimate` both decide here."""
    if setting == "auto" and all_fit(config, layer, tokens, value_bytes, base_bytes):
        return "off"
    return "selective" if selective_fits(config, layer, tokens, value_bytes, base_bytes) else "full"


# gradient_checkpointing "auto" turns it on from this many base parameters: on Qwen2.5-0.5B's shape (494M) the
# activations of a batch of 8 take ~4.5 GB against 1 GB of bf16 weights, and checkpointing keeps ~0.1 GB of them
# for ~1.3x the step time; a tiny model's activations are a few MB, not worth the recompute (BENCHMARKS.md).
GRADIENT_CHECKPOINTING_MIN_PARAMETERS = 100_000_000


def use_gradient_checkpointing(setting: Any, model) -> bool:
    """`gradient_checkpointing` true/false as given; "auto": on for a base of GRADIENT_CHECKPOINTING_MIN_PARAMETERS or more."""
    if setting != "auto":
        return bool(setting)
    return base_parameter_count(model) >= GRADIENT_CHECKPOINTING_MIN_PARAMETERS


def base_parameter_count(model) -> int:
    """Parameters of the model, NF4-quantized weights included (two per code byte), tied ones once."""
    dense = sum(p.numel() for p in model.parameters())
    return dense + 2 * sum(b.numel() for name, b in model.named_buffers() if name.endswith("qweight"))


def checkpointing_mode(hp: Any, model, lengths: list[int], packed: bool, bf16: bool) -> str:
    """"off", "full" or "selective" for a LoRA run (`hp`: its hyperparameters; `lengths`: its examples' token
    counts): with "auto", off while every activation of the largest micro-batch fits in the frozen base's own
    bytes; else selective while the matmul outputs it keeps fit there; else full."""
    if not use_gradient_checkpointing(hp.gradient_checkpointing, model):
        return "off"
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    layers = getattr(causal_lm.get_decoder(), "layers", None)
    if not layers:
        return "full"
    micro = math.ceil(math.ceil(hp.batch_size / distributed.world_size()) / hp.gradient_accumulation_steps)
    longest = sorted(lengths, reverse=True)[:micro]
    tokens = sum(longest) if packed else micro * longest[0]
    base_bytes = sum(t.numel() * t.element_size() for t in [*causal_lm.parameters(), *causal_lm.buffers()] if not t.requires_grad)
    return mode_for(hp.gradient_checkpointing, causal_lm.config, layers[0], tokens, 2 if bf16 else 4, base_bytes)


def enable(model: Any, selective: bool = False, lora_rank: Optional[int] = None) -> None:
    """Turns on non-reentrant checkpointing of every decoder layer, selective (LoRA: `lora_rank` given) or full."""
    kwargs: dict[str, Any] = {"use_reentrant": False}  # non-reentrant: no input needs to require grad (the embedding is frozen)
    if selective:
        from torch.utils.checkpoint import create_selective_checkpoint_contexts

        kwargs["context_fn"] = functools.partial(create_selective_checkpoint_contexts, functools.partial(_policy, _lora_widths(lora_rank)))
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def _attention_ops() -> set[Any]:
    aten = torch.ops.aten
    names = ("_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_flash_attention",
             "_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention")  # fmt: skip
    return {getattr(aten, n).default for n in names if hasattr(aten, n)}


_MATMULS = {torch.ops.aten.mm.default, torch.ops.aten.addmm.default}
_ATTENTION = _attention_ops()


def _lora_widths(lora_rank: int) -> frozenset[int]:
    """The inner widths of LoRA's matmuls: the rank, or the ranks of a fused group side by side (fused_projections.py)."""
    from .fused_projections import LARGEST_GROUP

    return frozenset(lora_rank * k for k in range(1, LARGEST_GROUP + 1))


def _policy(lora_widths: frozenset[int], ctx, op, *args, **kwargs):
    from torch.utils.checkpoint import CheckpointPolicy

    if op in _ATTENTION:
        return CheckpointPolicy.MUST_SAVE
    # mm(x, Wᵀ) / addmm(b, x, Wᵀ): keep a frozen linear's output; LoRA's A and B (one side = the rank, or the ranks of
    # a fused q/k/v or gate/up group side by side: fused_projections.py) are cheap to redo.
    if op in _MATMULS and lora_widths.isdisjoint(args[-1].shape):
        return CheckpointPolicy.MUST_SAVE
    return CheckpointPolicy.PREFER_RECOMPUTE
