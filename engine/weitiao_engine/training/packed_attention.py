"""Attention of a packed batch (batching.pack) one sequence at a time, on the CPU.

transformers reads a packed row's restarting position ids as sequence boundaries and gives SDPA a block-diagonal
causal mask over the whole row: with a mask, torch's CPU kernel computes every (query, key) pair of the row, and
its bf16 kernel runs at a quarter of its fp32 speed on AVX512-BF16 without AMX. Here the row is cut into its
sequences (gathered into a [sequences, longest] batch, shorter ones padded at the end) and SDPA runs causal with no
mask: the same attention (a query sees its own sequence up to itself; padding comes after every real token, so
no real query sees it, and the padded rows' outputs are dropped). Sequences of up to EXPLICIT_UP_TO tokens are
attended as transformers' eager attention computes it (`causal_attention`: two batched matmuls in the model's dtype,
the softmax in fp32): torch's fused CPU kernel has a fixed cost per block that dominates at these lengths, and
forward + backward at 8 sequences of 66 tokens (the 0.5B shape's batches) measured 2.7 ms in bf16 against 11-19 ms
for the fused kernel in fp32 and 19 ms in bf16. Longer sequences take the fused kernel (no length² scores kept).

The boundaries are computed once per batch (the position-ids tensor every layer receives), not per layer.
Anything else (a padded batch, a cache, a sliding window, attention dropout, or sequences so uneven that
padding them costs more than the mask) goes to transformers' own SDPA attention unchanged.
"""

from __future__ import annotations

import weakref
from typing import Any, Optional

import torch
import torch.nn.functional as F

NAME = "weitiao_packed_sdpa"

# On unless the benchmark's ablation turns it off to measure it.
PACKED_ATTENTION = True
# Sequences up to this long are attended by `causal_attention` (explicit scores), longer ones by SDPA's fused kernel.
EXPLICIT_UP_TO = 256


def use_packed_attention(model) -> bool:
    """Switches a CPU model that uses transformers' SDPA attention to this one; returns whether it did."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    device = next(causal_lm.parameters()).device
    if not PACKED_ATTENTION or device.type != "cpu" or causal_lm.config._attn_implementation != "sdpa":
        return False
    AttentionInterface.register(NAME, packed_sdpa_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)  # padded batches keep SDPA's own mask
    causal_lm.set_attn_implementation(NAME)
    return causal_lm.config._attn_implementation == NAME


def use_sdpa_attention(model) -> None:
    """Back to transformers' SDPA attention (the packing check found sequences leaking into each other)."""
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    if causal_lm.config._attn_implementation == NAME:
        causal_lm.set_attn_implementation("sdpa")


def packed_sdpa_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs) -> tuple[torch.Tensor, None]:
    """transformers' attention interface: query [B, H, T, D], key/value [B, KV heads, T, D] -> ([B, T, H, D], None)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    layout = _layout(kwargs.get("position_ids"))
    if layout is None or dropout or kwargs.get("sliding_window") or query.shape[2] != key.shape[2]:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    gather, scatter, n_seq, longest = layout
    batch, heads, tokens, dim = query.shape

    def by_sequence(x: torch.Tensor) -> torch.Tensor:  # [B, h, T, D] -> [sequences, h, longest, D], one copy
        h = x.shape[1]
        tokens_by_head = x.transpose(0, 1).reshape(h, batch * tokens, dim)  # a view for one packed row (B = 1)
        return tokens_by_head.index_select(1, gather).view(h, n_seq, longest, dim).transpose(0, 1)

    q, k, v = by_sequence(query), by_sequence(key), by_sequence(value)
    scale = scaling if scaling is not None else dim**-0.5
    if longest <= EXPLICIT_UP_TO:
        out = causal_attention(q, k, v, scale)
    else:
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=key.shape[1] != heads)
    out = out.transpose(1, 2).reshape(n_seq * longest, heads, dim)[scatter]
    return out.view(batch, tokens, heads, dim), None


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """softmax(q·kᵀ·scale, future keys masked)·v for q [S, H, L, D], k/v [S, KV, L, D] (H a multiple of KV, grouped
    query heads as transformers' repeat_kv orders them) -> [S, H, L, D]: the matmuls in q's dtype, the softmax in fp32
    (transformers' eager attention). A group's query heads share one matmul with their key head: no repeated k/v."""
    s, h, length, d = q.shape
    kv = k.shape[1]
    g = h // kv
    scores = torch.matmul((q * scale).reshape(s, kv, g * length, d), k.transpose(-1, -2)).view(s, kv, g, length, length)
    future = torch.ones(length, length, dtype=torch.bool, device=q.device).triu_(1)
    probs = torch.softmax(scores.masked_fill(future, float("-inf")), -1, dtype=torch.float32).to(q.dtype)
    return torch.matmul(probs.view(s, kv, g * length, length), v).view(s, h, length, d)


_cached: tuple[Any, Any] = (None, None)  # (weak reference to the last position-ids tensor, its layout)


def _layout(position_ids: Optional[torch.Tensor]):
    """(gather [sequences * longest], scatter [B * T], sequences, longest) for a packed batch's position ids, or
    None when no row holds more than one sequence or padding them would cost more than the row's mask.
    Every layer of a forward (and its checkpoint recomputation) gets the same tensor: computed once."""
    global _cached
    if position_ids is None or position_ids.dim() != 2:
        return None
    ref, layout = _cached
    if ref is not None and ref() is position_ids:
        return layout
    layout = sequence_layout(position_ids)
    _cached = (weakref.ref(position_ids), layout)
    return layout


def sequence_layout(position_ids: torch.Tensor):
    """The indices that cut packed rows into sequences (`_layout`). A sequence starts at each row's first token and
    wherever a position id is not the previous one plus one (transformers' rule, masking_utils)."""
    batch, tokens = position_ids.shape
    starts = torch.ones_like(position_ids, dtype=torch.bool)
    starts[:, 1:] = position_ids[:, 1:] != position_ids[:, :-1] + 1
    starts = starts.flatten()
    first = starts.nonzero().squeeze(1)  # each sequence's first token in the flattened [B * T]
    n_seq = first.numel()
    if n_seq == batch:
        return None  # one sequence per row: nothing packed
    lengths = torch.diff(first, append=first.new_tensor([batch * tokens]))
    longest = int(lengths.max())
    # Causal attention costs ~ length² per sequence: padded to the longest, it must stay below the whole rows'.
    if n_seq * longest * longest > batch * tokens * tokens:
        return None
    offsets = torch.arange(longest)
    # Padding slots gather their sequence's first token: some real row, never seen by a real query.
    gather = (first[:, None] + torch.where(offsets[None, :] < lengths[:, None], offsets[None, :], 0)).flatten()
    sequence = starts.cumsum(0) - 1  # the sequence of each token
    scatter = sequence * longest + (torch.arange(batch * tokens) - first[sequence])
    return gather, scatter, n_seq, longest
