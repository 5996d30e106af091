"""Batches: the data order of an epoch (a function of seed and epoch only), length grouping, and the two
batch layouts: padded (`collate`) and padding-free (`pack`)."""

from __future__ import annotations

import math

from contextlib import nullcontext

import torch

from ..chat_format import IGNORE_INDEX, TokenizedExample
from ..protocol import log

EVAL_BATCH_SIZE = 64  # validation and scoring need no gradients, so bigger batches are cheap
LENGTH_GROUP_BATCHES = 16  # length grouping sorts windows of this many batches: enough to match lengths, still shuffled
# Padding-free batches (`pack`): on unless the benchmark's ablation turns it off to measure it.
PACKING = True
# A packed row holds up to this many tokens (or one longest example): SDPA on CPU computes the block-diagonal
# mask's masked-out part too, which at 1024 tokens costs ~10% of a 0.5B layer's matmuls, less than padding.
PACKED_ROW_TOKENS = 1024
# A packed row's width is rounded up to a multiple of this: every matmul of the step has rows x width rows, and
# CPU bf16 GEMMs slow down at some row counts that are not (0.5B shape, 2 threads: 469 or 473 rows ran at 55-65%
# of 472's speed, ~6% on average over random counts; multiples of 8 stayed within noise). GPUs' tensor cores
# like multiples of 8 too (transformers' pad_to_multiple_of). The few extra tokens are a padding block.
ROW_MULTIPLE = 8


def epoch_order(seed: int, epoch: int, n: int) -> list[int]:
    """The example order of one epoch: a permutation that depends only on (seed, epoch)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator).tolist()


def epoch_batches(seed: int, epoch: int, lengths: list[int], batch_size: int, group_by_length: bool) -> list[list[int]]:
    """The batches of one epoch, a function of (seed, epoch) only.

    With length grouping, each window of LENGTH_GROUP_BATCHES batches of the shuffled order is sorted by
    length before it is cut, and the batches are then shuffled again: each batch pads to a similar length,
    yet which examples meet in a batch and the batch order stay random.
    """
    order = epoch_order(seed, epoch, len(lengths))
    if not group_by_length:
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    window = batch_size * LENGTH_GROUP_BATCHES
    batches = []
    for w in range(0, len(order), window):
        chunk = sorted(order[w : w + window], key=lambda i: -lengths[i])
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    shuffle = torch.randperm(len(batches), generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch + 500_009))
    return [batches[i] for i in shuffle.tolist()]


def length_sorted_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length, so padding costs little (validation, scoring)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def unlabelled(example: TokenizedExample) -> TokenizedExample:
    """The example with no label: it runs through the model but adds nothing to a loss (distributed.shard's padding)."""
    return TokenizedExample(example.input_ids, [IGNORE_INDEX] * len(example.input_ids))


def collate(examples: list[TokenizedExample], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-pads a batch to its longest example (right, so positions of real tokens do not move)."""
    width = max(len(e.input_ids) for e in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    for row, e in enumerate(examples):
        n = len(e.input_ids)
        input_ids[row, :n] = torch.tensor(e.input_ids)
        attention_mask[row, :n] = 1
        labels[row, :n] = torch.tensor(e.labels)
    return input_ids, attention_mask, labels


def pack(examples: list[TokenizedExample], pad_id: int) -> tuple[torch.Tensor, None, torch.Tensor, torch.Tensor]:
    """A padding-free batch: (input_ids, None, labels, position_ids), the examples laid end to end.

    Each example's position ids restart at 0; given position ids and no attention mask, transformers
    (masking_utils) reads the restarts as sequence boundaries and attends only within each example, so
    the result equals the padded batch's (checked by `packing_supported` for the model at hand). Rows hold
    up to PACKED_ROW_TOKENS tokens, longest example first into the shortest row, so rows come out nearly
    equal and only the few tokens that even them up (and round the width to ROW_MULTIPLE) are padding (a block
    of its own, unlabelled).
    """
    lengths = [len(e.input_ids) for e in examples]
    n_rows = math.ceil(sum(lengths) / max(PACKED_ROW_TOKENS, max(lengths)))
    rows: list[list[int]] = [[] for _ in range(n_rows)]
    fill = [0] * n_rows
    for i in sorted(range(len(examples)), key=lambda i: -lengths[i]):
        r = fill.index(min(fill))
        rows[r].append(i)
        fill[r] += lengths[i]
    width = -(-max(fill) // ROW_MULTIPLE) * ROW_MULTIPLE
    input_ids = torch.full((n_rows, width), pad_id, dtype=torch.long)
    labels = torch.full((n_rows, width), IGNORE_INDEX, dtype=torch.long)
    position_ids = torch.zeros((n_rows, width), dtype=torch.long)
    for r, members in enumerate(rows):
        at = 0
        for i in members:
            e, n = examples[i], lengths[i]
            input_ids[r, at : at + n] = torch.tensor(e.input_ids)
            labels[r, at + 1 : at + n] = torch.tensor(e.labels[1:])  # an example's first token is never predicted
            position_ids[r, at : at + n] = torch.arange(n)
            at += n
        position_ids[r, at:] = torch.arange(width - at)  # the padding: a block of its own
    return input_ids, None, labels, position_ids


def batch_layout(packed: bool):
    """`pack` or `collate`, as the run decided (setup: PACKING and `packing_supported`)."""
    return pack if packed else collate


def use_packing(model, sample: list[int]) -> bool:
    """Whether a run trains on packed batches: PACKING (the benchmark's switch) and the model keeps them apart.
    On a CPU a packed batch's attention runs one sequence at a time (packed_attention.py), checked here too:
    if it failed the check, transformers' SDPA attention is checked instead."""
    from .packed_attention import use_packed_attention, use_sdpa_attention

    if not PACKING:
        return False
    if use_packed_attention(model):
        if packing_supported(model, sample):
            return True
        use_sdpa_attention(model)
    return packing_supported(model, sample)


@torch.no_grad()
def packing_supported(model, sample: list[int]) -> bool:
    """Whether this model honours packed position ids. A sequence packed after another must not see it (its
    hidden states stay the same when the first one's tokens change) and must match itself run alone.
    Architectures that build their own mask (or remote code) would let it attend across; they train on
    padded batches instead, and a log says so."""
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    first, second = list(sample[:6]), list(sample[:5])
    if len(second) < 5:
        return False
    other = list(reversed(first))  # same length, other tokens

    # A base held in bf16 beside fp32 trainables (embeddings in modules_to_save, LoRA) computes under autocast
    # in training; without it here the check's matmuls would mix dtypes and fail.
    mixed = len({p.dtype for p in causal_lm.parameters() if p.is_floating_point()}) > 1
    device = next(causal_lm.parameters()).device.type

    def states(*sequences: list[int]) -> torch.Tensor:
        ids, _, _, positions = pack([TokenizedExample(s, s) for s in sequences], 0)
        with torch.autocast(device, dtype=torch.bfloat16) if mixed else nullcontext():
            return causal_lm.get_decoder()(input_ids=ids, position_ids=positions, use_cache=False).last_hidden_state[0].float()

    was_training = model.training
    model.eval()
    try:
        alone, after_first, after_other = states(second), states(second, first), states(second, other)
    except Exception as e:  # noqa: BLE001 (any failure means: do not pack)
        log(f"padding-free batches unavailable ({type(e).__name__}: {e}); training on padded batches", "warning")
        return False
    finally:
        model.train(was_training)
    # pack() puts the longest first: the 5-token sequence follows the 6 (then comes the row's padding block). Same
    # shapes, so without leaks the two packed runs agree to rounding; alone it may differ by the precision's
    # rounding of other shapes.
    at = slice(len(first), len(first) + len(second))
    tail_first, tail_other, alone = after_first[at], after_other[at], alone[: len(second)]
    scale = alone.abs().max().item() + 1e-6
    ok = (tail_first - tail_other).abs().max().item() <= 1e-4 * scale and (tail_first - alone).abs().max().item() <= 5e-2 * scale
    if not ok:
        log("this model does not keep packed sequences apart; training on padded batches / 该模型不支持序列打包，使用填充批次", "warning")
    return ok
