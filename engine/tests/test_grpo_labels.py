"""Reinforcement fine-tuning learns a prompt-dependent label (issue 15's done-when): `string_check eq {{item.label}}`
on short, clearly polar waimai reviews, from a base that answers 好评/差评 at chance whatever the review says. The
held-out validation reward (greedy answers) rises from 0.5 to well above chance.

Why the setup is what it is (a 64-wide random-weight base is a weak reader): with the system prompt and reviews up to
30 characters, the base's logit gap 好评−差评 hardly depends on the prompt (its spread over prompts ~0.015), and the
expected reward is flat along a gap shared by every prompt when both labels are equally common, so Adam's lr-sized
steps move that shared gap about while the per-review part grows slowly: greedy answers stayed one label (0.50).
Reviews of at most 14 characters, no system prompt and learning rate 1e-2 give the review enough weight: the
per-review part outgrows the shared one within ~30 steps."""

from __future__ import annotations

import random
from typing import Any

import pytest
from conftest import LABELS, train_request, waimai_rows, write_jsonl
from test_full_finetune import run_in_process
from test_grpo import sft_on_random_labels

EXACT = {"type": "string_check", "name": "label", "input": "{{sample.output_text}}", "reference": "{{item.label}}", "operation": "eq"}
# Clearly polar: the review holds a cue word of its own label and none of the other's.
POSITIVE_CUES = ("不错", "赞", "好吃", "快")
NEGATIVE_CUES = ("慢", "难吃", "差", "一般", "小时", "凉", "太", "不")


def clearly_polar(row: dict[str, str]) -> bool:
    text = row["review"]
    positive, negative = any(w in text for w in POSITIVE_CUES), any(w in text for w in NEGATIVE_CUES)
    return (positive and not negative and row["label"] == "1") or (negative and not positive and row["label"] == "0")


def prompt_line(row: dict[str, str]) -> dict[str, Any]:
    """The review alone as the prompt (no system prompt: it would outweigh a short review), the label as a field."""
    return {"messages": [{"role": "user", "content": row["review"]}], "label": LABELS[row["label"]]}


@pytest.fixture(scope="module")
def reviews(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Reviews of ≤ 14 characters, labels alternating: 256 training and 64 validation prompts, and 256 other reviews for
    the warm-up (so the base has not memorised the training prompts' warm-up labels)."""
    root = tmp_path_factory.mktemp("labels")
    rows = [r for r in waimai_rows() if len(r["review"]) <= 14 and clearly_polar(r)]
    random.Random(1).shuffle(rows)
    pos, neg = [r for r in rows if r["label"] == "1"], [r for r in rows if r["label"] == "0"]
    split = {"train": (0, 128), "validation": (128, 160), "warmup": (160, 288)}
    return {
        name: str(write_jsonl(root / f"{name}.jsonl", [prompt_line(r) for pair in zip(pos[a:b], neg[a:b]) for r in pair]))
        for name, (a, b) in split.items()
    }


@pytest.fixture(scope="module")
def chance_base(tiny_model: str, reviews: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> str:
    """The tiny model fine-tuned on the warm-up reviews (other reviews than the GRPO run's) with random labels."""
    hp = {"n_epochs": 2, "batch_size": 16, "learning_rate": 1e-2, "seed": 7}
    return sft_on_random_labels(tiny_model, reviews["warmup"], tmp_path_factory.mktemp("chance-labels"), hp)


def test_the_validation_reward_rises_for_the_label_of_the_review(chance_base, reviews, tmp_path, monkeypatch) -> None:
    raw = train_request(
        chance_base, reviews, tmp_path / "job", method="reinforcement", max_steps=48, eval_every_steps=16,
        reinforcement={"grader": EXACT, "samples_per_prompt": 4, "max_new_tokens": 4, "eval_samples": 64},
        lora={"r": 8, "alpha": 16, "dropout": 0.0, "modules_to_save": ["embed_tokens"]},
        hyperparameters={"n_epochs": 3, "batch_size": 16, "learning_rate": 1e-2, "seed": 7},
    )  # fmt: skip
    result, events = run_in_process(raw, monkeypatch)
    metrics = [e for e in events if e["type"] == "metrics"]
    valid = {e["step"]: e["valid_mean_reward"] for e in metrics if "valid_mean_reward" in e}
    print(f"validation reward {result['initial_valid_mean_reward']} -> {valid}; {result['steps']} steps")

    # At chance: one label for every validation review (32 of each), whatever the review says.
    assert result["initial_valid_mean_reward"] == pytest.approx(0.5)
    assert result["steps"] == 48 and list(valid) == [16, 32, 48]
    assert result["final_valid_mean_reward"] == valid[48] >= 0.7, valid  # held-out reviews, greedy answers
    first = sum(e["train_mean_reward"] for e in metrics[:8]) / 8
    last = sum(e["train_mean_reward"] for e in metrics[-8:]) / 8
    assert last > first + 0.1, (first, last)
