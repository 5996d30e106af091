"""Batched label scoring (scoring.py) on the tiny model: exact against plain forward passes, and the same
predictions as a per-example greedy generate loop."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch

from weitiao_engine import protocol, scoring
from weitiao_engine.chat_format import answer_ids
from weitiao_engine.generate import chat_completion
from weitiao_engine.loading import load_model
from weitiao_engine.protocol import TrainRequest
from weitiao_engine.recipes import lora_finetune

LABELS = ["好评", "差评"]


def prompts_of(path: str, n: int) -> list[list[dict[str, str]]]:
    return [json.loads(line)["messages"][:-1] for line in Path(path).read_text(encoding="utf-8").splitlines()[:n]]


def reference_logprob(model, tokenizer, messages, answer: str) -> float:
    """log p(answer + end-of-turn | prompt) from one plain, unpadded forward pass over the whole sequence."""
    p, (c,) = answer_ids(tokenizer, messages, [answer])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([p + c])).logits[0].float(), dim=-1)
    return sum(float(logp[len(p) - 1 + j, t]) for j, t in enumerate(c))


@pytest.mark.parametrize("system", [True, False], ids=["shared-system-prompt", "nothing-shared"])
def test_tree_batches_equal_plain_forward_passes(base, waimai_small, system):
    model, tokenizer = base
    prompts = prompts_of(waimai_small["validation"], 11)
    if not system:  # without the system prompt the prompts share only the template's first tokens
        prompts = [p[1:] for p in prompts]
    labels = LABELS + ["一般般吧，还行"]  # answers of different token lengths share a row
    assert len({len(c) for c in answer_ids(tokenizer, prompts[0], labels)[1]}) > 1
    ids, _ = scoring.label_token_ids(tokenizer, prompts, labels)
    assert len({len(i) for i in ids}) > 3  # padding really happens
    batched = scoring.label_scores(model, tokenizer, prompts, labels, batch_size=4)  # 11 prompts: a ragged last batch
    for row, p in zip(batched, prompts):
        assert row == pytest.approx([reference_logprob(model, tokenizer, p, label) for label in labels], abs=1e-4)
    one_by_one = scoring.label_scores(model, tokenizer, prompts, labels, batch_size=1)
    assert sum(one_by_one, []) == pytest.approx(sum(batched, []), abs=1e-4)


def test_token_budget_batches_group_similar_lengths_within_the_budget():
    lengths = [50, 10, 12, 300, 11, 40, 45, 13]
    passes = scoring.token_budget_batches(lengths, max_rows=3, max_tokens=100)
    assert sorted(i for p in passes for i in p) == list(range(len(lengths)))  # every row once
    assert [lengths[i] for p in passes for i in p] == sorted(lengths)  # by increasing length
    assert all(len(p) <= 3 and (len(p) == 1 or len(p) * max(lengths[i] for i in p) <= 100) for p in passes)
    assert passes == [[1, 4, 2], [7, 5], [6, 0], [3]]  # 300 exceeds the budget alone: a pass of its own


def test_small_token_budget_same_scores(base, waimai_small, monkeypatch):
    """Many small passes (a budget of a few rows) score exactly what one pass per prompt does."""
    model, tokenizer = base
    prompts = prompts_of(waimai_small["validation"], 9)
    monkeypatch.setattr(scoring, "SCORING_TOKENS_PER_PASS", 40)
    small = scoring.label_scores(model, tokenizer, prompts, LABELS, batch_size=32)
    one_by_one = scoring.label_scores(model, tokenizer, prompts, LABELS, batch_size=1)
    assert sum(small, []) == pytest.approx(sum(one_by_one, []), abs=1e-4)


def test_each_prompt_its_own_continuations(tuned, waimai_small):
    """Different continuations per prompt (an expected answer outside the label set), and none at all."""
    model, tokenizer = tuned
    prompts = prompts_of(waimai_small["validation"], 5)
    answers = [["好评"], ["差评", "味道一般"], [], ["好评", "差评", "太慢了"], ["送餐很快"]]
    pairs = scoring.answer_token_ids(tokenizer, prompts, answers)
    got = scoring.continuation_scores(model, [p for p, _ in pairs], [c for _, c in pairs], 3, tokenizer.pad_token_id)
    for row, p, theirs in zip(got, prompts, answers):
        assert row == pytest.approx([reference_logprob(model, tokenizer, p, a) for a in theirs], abs=1e-4)


def test_template_without_end_token(glm4_model, waimai_small):
    """GLM-4's template: no newline or end token after a turn; the label tokens come from the template all the same."""
    model, tokenizer = load_model(glm4_model)
    prompts = prompts_of(waimai_small["validation"], 6)
    scores = scoring.label_scores(model, tokenizer, prompts, LABELS, batch_size=4)
    for row, p in zip(scores, prompts):
        assert row == pytest.approx([reference_logprob(model, tokenizer, p, label) for label in LABELS], abs=1e-4)


def test_predictions_equal_a_greedy_generate_loop(tiny_model, waimai_small, tmp_path, monkeypatch):
    # A briefly trained adapter, so that greedy generation answers with a label (a random model babbles).
    monkeypatch.setattr(protocol, "_out", io.StringIO())
    request = {
        "base_model": tiny_model, "output_dir": str(tmp_path / "job"), "training_file": waimai_small["train"],
        "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear"},
        "hyperparameters": {"n_epochs": 1, "batch_size": 8, "learning_rate": 2e-3, "seed": 0}, "max_steps": 24,
    }  # fmt: skip
    adapter = lora_finetune.run(TrainRequest.model_validate(request))["model_dir"]
    model, tokenizer = load_model(tiny_model, adapter)
    prompts = prompts_of(waimai_small["validation"], 64)

    scored = scoring.score_labels(model, tokenizer, prompts, LABELS, batch_size=16)
    longest = max(len(c) for c in answer_ids(tokenizer, prompts[0], LABELS)[1])  # label tokens + end token
    generated = [chat_completion(model, tokenizer, p, max_tokens=longest, temperature=0)["text"].strip() for p in prompts]
    assert all(g in LABELS for g in generated), generated
    # (This tiny model learns the majority label in so few steps, so the two agree on it; the exactness tests
    # above are what pins the scores themselves.)
    assert scored == generated
