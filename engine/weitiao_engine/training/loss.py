"""Losses: log-probabilities of the labelled tokens, with the LM head only where labels are."""

from __future__ import annotations

import torch

from ..chat_format import IGNORE_INDEX, TokenizedExample
from .batching import collate

# Compute the LM head only at positions that predict a labelled token. Only the benchmark's ablation turns
# it off, to measure what it saves; both ways give the same loss.
LM_HEAD_AT_LABELS_ONLY = True


def token_logprobs(model, input_ids, attention_mask, labels, position_ids=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Log-probabilities of the labelled tokens, flattened: (logp [N], row of each [N], argmax right [N]).

    Takes a padded batch (`collate`: attention_mask) or a packed one (`pack`: position_ids, no mask).
    Only the N positions that predict a labelled token go through the LM head: with short answers
    after long prompts that skips most of the head's matmul and softmax over the vocabulary.
    """
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX  # hidden state j predicts token j + 1
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model  # PEFT's LoRA layers live inside it
    hidden = causal_lm.get_decoder()(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
    ).last_hidden_state
    if LM_HEAD_AT_LABELS_ONLY:
        logits = causal_lm.get_output_embeddings()(hidden[:, :-1][mask]).float()
    else:  # the standard way, kept for the benchmark's ablation: every position through the head
        logits = causal_lm.get_output_embeddings()(hidden[:, :-1]).float()[mask]
    targets = targets[mask]
    logp = torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    rows = mask.nonzero()[:, 0]
    return logp, rows, logits.argmax(dim=-1) == targets


def token_loss(model, input_ids, attention_mask, labels, position_ids=None) -> tuple[torch.Tensor, int, int]:
    """(sum of cross-entropy over labelled tokens, their number, how many the model's argmax got right)."""
    logp, _, correct = token_logprobs(model, input_ids, attention_mask, labels, position_ids)
    return -logp.sum(), logp.numel(), int(correct.sum())


def sequence_logps(model, examples: list[TokenizedExample], pad_id: int) -> torch.Tensor:
    """Sum of log p(labelled token) over each example's labelled tokens (one padded batch): one value per example."""
    logp, rows, _ = token_logprobs(model, *collate(examples, pad_id))
    return torch.zeros(len(examples), dtype=logp.dtype).index_add(0, rows, logp)
