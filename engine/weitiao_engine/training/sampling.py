"""Answers sampled from the model being trained (reinforcement fine-tuning): prompts tokenized with the base's chat
template, then batched, left-padded, KV-cached decoding that draws from the run's own generator (saved in every
checkpoint, so a resumed run samples what an uninterrupted one would)."""

from __future__ import annotations

from typing import Any, Sequence

import torch

from ..chat_format import IGNORE_INDEX, TokenizedExample, prompt_ids, without_empty_reasoning
from ..loading import stop_token_ids


def tokenize_prompts(tokenizer, conversations: Sequence[Sequence[Any]], max_prompt_tokens: int) -> tuple[list[list[int]], int]:
    """(token ids of each conversation followed by the generation prompt, how many were cut): a prompt longer than
    `max_prompt_tokens` keeps its end, where the question and the generation prompt are."""
    ids, cut = [], 0
    for messages in conversations:
        tokens = prompt_ids(tokenizer, messages)
        if len(tokens) > max_prompt_tokens:
            tokens, cut = tokens[-max_prompt_tokens:], cut + 1
        ids.append(tokens)
    return ids, cut


def stop_ids(model, tokenizer) -> set[int]:
    """The tokens that end an answer: the template's end-of-turn tokens and the model's eos."""
    return stop_token_ids(model, tokenizer)


@torch.no_grad()
def sample_answers(
    model, prompts: Sequence[list[int]], pad_id: int, stops: set[int], max_new_tokens: int, temperature: float,
    generator: torch.Generator,
) -> list[list[int]]:  # fmt: skip
    """The answer tokens of each prompt (its stop token included when it wrote one). temperature 0 is greedy and
    draws nothing from `generator`. Call with the model in eval mode (no dropout)."""
    n, width = len(prompts), max(len(p) for p in prompts)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    attention = torch.zeros((n, width), dtype=torch.long)
    for i, p in enumerate(prompts):
        input_ids[i, width - len(p) :] = torch.tensor(p)
        attention[i, width - len(p) :] = 1
    # Left padding: positions count real tokens only, so a padded prompt is seen exactly as it is alone.
    positions = (attention.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=input_ids, attention_mask=attention, position_ids=positions, use_cache=True)
    answers: list[list[int]] = [[] for _ in range(n)]
    done = [False] * n
    for _ in range(max_new_tokens):
        logits = out.logits[:, -1].float()
        if temperature == 0:
            chosen = logits.argmax(-1)
        else:
            chosen = torch.multinomial(torch.softmax(logits / temperature, -1), 1, generator=generator).squeeze(-1)
        for i, token in enumerate(chosen.tolist()):
            if not done[i]:
                answers[i].append(token)
                done[i] = token in stops
        if all(done):
            break
        attention = torch.cat([attention, torch.ones((n, 1), dtype=torch.long)], dim=1)
        positions = attention.sum(-1, keepdim=True) - 1
        out = model(input_ids=chosen.unsqueeze(-1), attention_mask=attention, position_ids=positions, past_key_values=out.past_key_values, use_cache=True)
    return answers


def answer_text(tokenizer, answer: list[int], stops: set[int]) -> str:
    """What a grader sees: the answer without its stop token, special tokens and an empty reasoning block."""
    tokens = answer[:-1] if answer and answer[-1] in stops else answer
    return without_empty_reasoning(tokenizer.decode(tokens, skip_special_tokens=True))


def scored_example(prompt: list[int], answer: list[int]) -> TokenizedExample:
    """prompt + answer with loss labels on the answer tokens only: what token_logprobs scores."""
    return TokenizedExample(input_ids=prompt + answer, labels=[IGNORE_INDEX] * len(prompt) + answer)
