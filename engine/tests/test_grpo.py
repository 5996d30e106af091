"""Reinforcement fine-tuning (recipes/grpo.py) on the tiny model with waimai prompts and OpenAI-shaped graders: a
base that answers 好评/差评 at chance (a short supervised warm-up on shuffled labels), rewards that rise for what the
grader rewards, one metrics event per step with training and validation fields, stop + resume equals one run, and
bad lines / grader fields named."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
from conftest import LABELS, SYSTEM_PROMPT, assert_same_weights, train_request, waimai_rows, write_jsonl
from test_full_finetune import run_in_process

from weitiao_engine.protocol import EngineError

EXACT = {"type": "string_check", "name": "label", "input": "{{sample.output_text}}", "reference": "{{item.label}}", "operation": "eq"}


def prompt_line(row: dict[str, str]) -> dict[str, Any]:
    """A waimai review in OpenAI's reinforcement format: the prompt without its answer, the label as a field."""
    return {"messages": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": row["review"]}], "label": LABELS[row["label"]]}


@pytest.fixture(scope="module")
def prompts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Short reviews, both labels alternating: 256 training prompts, 64 validation prompts (32 of each label)."""
    root = tmp_path_factory.mktemp("prompts")
    rows = [r for r in waimai_rows() if len(r["review"]) <= 30]
    random.Random(1).shuffle(rows)
    pos, neg = [r for r in rows if r["label"] == "1"], [r for r in rows if r["label"] == "0"]
    train = [r for pair in zip(pos[:128], neg[:128]) for r in pair]
    valid = [r for pair in zip(pos[128:160], neg[128:160]) for r in pair]
    return {
        "train": str(write_jsonl(root / "train.jsonl", [prompt_line(r) for r in train])),
        "validation": str(write_jsonl(root / "validation.jsonl", [prompt_line(r) for r in valid])),
    }


def sft_on_random_labels(tiny_model: str, prompts_file: str, root: Path, hyperparameters: dict[str, Any]) -> str:
    """The tiny model fine-tuned (full) on `prompts_file`'s prompts with 好评/差评 drawn at random (seed 3): it speaks
    the format and its answer does not depend on the review. Returns the model directory."""
    rnd = random.Random(3)
    lines = [json.loads(line) for line in Path(prompts_file).read_text(encoding="utf-8").splitlines()]
    examples = [{"messages": line["messages"] + [{"role": "assistant", "content": rnd.choice(list(LABELS.values()))}]} for line in lines]
    data = {"train": str(write_jsonl(root / "sft.jsonl", examples)), "validation": None}
    raw = train_request(tiny_model, data, root / "sft", method="full", hyperparameters=hyperparameters)
    raw.pop("validation_file")
    mp = pytest.MonkeyPatch()
    try:
        result, _ = run_in_process(raw, mp)
    finally:
        mp.undo()
    return result["model_dir"]


@pytest.fixture(scope="module")
def chance_base(tiny_model: str, prompts: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> str:
    """The tiny model at chance on the training reviews' labels: it answers 好评 or 差评, whatever the review says."""
    hp = {"n_epochs": 2, "batch_size": 16, "learning_rate": 1e-2, "seed": 7, "bf16": "off"}
    return sft_on_random_labels(tiny_model, prompts["train"], tmp_path_factory.mktemp("chance"), hp)


def request(base: str, data: dict[str, str], output_dir: Path, grader: dict[str, Any] = EXACT, **overrides: Any) -> dict[str, Any]:
    own = {
        "method": "reinforcement",
        "reinforcement": {"grader": grader, "samples_per_prompt": 4, "max_new_tokens": 4, "eval_samples": 64},
        "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "modules_to_save": ["embed_tokens"]},
        "hyperparameters": {"n_epochs": 1, "batch_size": 8, "learning_rate": 1e-2, "seed": 7},
        "eval_every_steps": 5,
    }
    return train_request(base, data, output_dir, **{**own, **overrides})


def test_rewards_rise_for_what_the_grader_rewards(chance_base, prompts, tmp_path, monkeypatch) -> None:
    # The grader rewards one label whatever the review: at chance the sampled answers earn ~0.5, and GRPO moves the
    # policy to the rewarded answer within a few steps.
    wants_good = {"type": "string_check", "name": "good", "input": "{{sample.output_text}}", "reference": "好评", "operation": "eq"}
    result, events = run_in_process(request(chance_base, prompts, tmp_path / "job", wants_good, max_steps=15), monkeypatch)
    assert result["steps"] == 15 and not result["interrupted"]

    metrics = [e for e in events if e["type"] == "metrics"]
    assert [e["step"] for e in metrics] == list(range(1, 16))  # one event per step
    assert all("train_loss" in e and "train_mean_reward" in e and e["train_reward_per_grader"].keys() == {"good"} for e in metrics)
    assert [e["step"] for e in metrics if "valid_mean_reward" in e] == [5, 10, 15]  # validation in the step's own event
    first = sum(e["train_mean_reward"] for e in metrics[:2]) / 2
    last = sum(e["train_mean_reward"] for e in metrics[-5:]) / 5
    assert first < 0.75 and last > 0.9, (first, last)
    assert all(1 <= e["train_mean_answer_tokens"] <= 4 for e in metrics)
    assert result["final_valid_mean_reward"] == metrics[-1]["valid_mean_reward"] > 0.9

    model_dir = Path(result["model_dir"])
    assert json.loads((model_dir / "weitiao.json").read_text())["method"] == "reinforcement"


def test_the_chance_base_is_at_chance_on_the_labels(chance_base, prompts, tmp_path, monkeypatch) -> None:
    # What issue 15 asks the RL run to improve: the label of the review. Before training, greedy answers are one label.
    result, events = run_in_process(request(chance_base, prompts, tmp_path / "job", max_steps=1), monkeypatch)
    assert result["initial_valid_mean_reward"] == pytest.approx(0.5)
    assert [e["step"] for e in events if e["type"] == "metrics"] == [1]


def test_stop_and_resume_equals_one_run(chance_base, prompts, tmp_path, monkeypatch, train_stopped_at_step) -> None:
    settings = dict(max_steps=6, save_every_steps=3, eval_every_steps=0,
                    reinforcement={"grader": EXACT, "samples_per_prompt": 2, "max_new_tokens": 3, "eval_samples": 8, "kl_beta": 0.05})  # fmt: skip
    whole, _ = run_in_process(request(chance_base, prompts, tmp_path / "whole", **settings), monkeypatch)

    stopped = request(chance_base, prompts, tmp_path / "split", **settings)
    events = train_stopped_at_step(stopped, 2)
    assert events[-1]["type"] == "result" and events[-1]["data"]["interrupted"]
    at = events[-1]["data"]["steps"]
    resumed, resumed_events = run_in_process({**stopped, "resume": True}, monkeypatch)
    assert resumed["steps"] == 6 and [e["step"] for e in resumed_events if e["type"] == "metrics"][0] == at + 1
    assert_same_weights(whole["model_dir"], resumed["model_dir"], "adapter_model.safetensors")


def test_a_line_lacking_a_grader_field_or_not_ending_with_the_user_is_named(chance_base, prompts, tmp_path, monkeypatch) -> None:
    lacking = write_jsonl(tmp_path / "lacking.jsonl", [{"messages": [{"role": "user", "content": "好吃"}], "label": "好评"}, {"messages": [{"role": "user", "content": "慢"}]}])
    with pytest.raises(EngineError) as e:
        run_in_process(request(chance_base, {"train": str(lacking), "validation": prompts["validation"]}, tmp_path / "a"), monkeypatch)
    assert f"{lacking}:2: item.label" in e.value.message and e.value.param == "training_file"

    answered = write_jsonl(tmp_path / "answered.jsonl", [{"messages": [{"role": "user", "content": "好吃"}, {"role": "assistant", "content": "好评"}], "label": "好评"}])
    with pytest.raises(EngineError) as e:
        run_in_process(request(chance_base, {"train": str(answered), "validation": None}, tmp_path / "b"), monkeypatch)
    assert f"{answered}:1: messages" in e.value.message

    with pytest.raises(EngineError) as e:
        run_in_process(request(chance_base, prompts, tmp_path / "c", {**EXACT, "operation": "equals"}), monkeypatch)
    assert e.value.param == "reinforcement.grader.operation"
