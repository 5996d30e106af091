"""Label-set validation: when the answers form a small set of labels, each validation example is scored with
every label as its answer (teacher-forced log-probability), and the most likely one is its prediction."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..chat_format import IGNORE_INDEX, TokenizedExample, answers_for_prompts
from .batching import EVAL_BATCH_SIZE, length_sorted_batches
from .loss import sequence_logps


@dataclass
class LabelTask:
    """Validation examples as a classification task: every candidate answer's tokens after each prompt."""

    labels: list[str]
    expected: list[str]
    sequences: list[list[int]] = field(default_factory=list)  # prompt + answer, example-major, label-minor
    answer_lengths: list[int] = field(default_factory=list)


def build_label_task(tokenizer, examples: list[list[dict[str, Any]]], labels: list[str]) -> LabelTask:
    """For each validation example: the prompt before its last assistant turn, followed by every label."""
    task = LabelTask(labels=list(labels), expected=[])
    prompts = []
    for messages in examples:
        last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
        if last is not None:
            prompts.append(messages[:last])
            task.expected.append(messages[last]["content"])
    for prompt, answers in answers_for_prompts(tokenizer, prompts, labels):
        for answer in answers:
            task.sequences.append(prompt + answer)
            task.answer_lengths.append(len(answer))
    return task


@torch.no_grad()
def score_sequences(model, sequences: list[list[int]], answer_lengths: list[int], pad_id: int, batch_size: int = EVAL_BATCH_SIZE) -> list[float]:
    """Teacher-forced log-probability of the last `answer_lengths[i]` tokens of each sequence."""
    scores = [0.0] * len(sequences)
    for batch in length_sorted_batches([len(s) for s in sequences], batch_size):
        examples = []
        for i in batch:
            seq, k = sequences[i], answer_lengths[i]
            examples.append(TokenizedExample(seq, [IGNORE_INDEX] * (len(seq) - k) + seq[-k:]))
        sums = sequence_logps(model, examples, pad_id)
        for row, i in enumerate(batch):
            scores[i] = sums[row].item()
    return scores


def classify(model, task: LabelTask, pad_id: int) -> list[str]:
    """Each example's prediction: the label whose answer tokens (and end-of-turn token) are most likely."""
    scores = score_sequences(model, task.sequences, task.answer_lengths, pad_id)
    k = len(task.labels)
    return [task.labels[int(np.argmax(scores[i * k : (i + 1) * k]))] for i in range(len(task.expected))]
