"""Was fine-tuning worth it, on a free-text task the project makes: waimai reviews rewritten as the shop's reply
in a fixed house style (thanks for praise, an apology for a complaint, each naming what the review is about).
A tiny model fine-tuned on 160 such pairs must beat the same base zero-shot and 4-shot on chrF, with the
paired test saying so, and every figure carries its interval."""

from __future__ import annotations

import json
import random

import pytest

from weitiao_engine import evaluate
from weitiao_engine.eval_metrics import score_systems
from weitiao_engine.protocol import ChatMessage, EvaluateRequest

from conftest import run_train, train_request, waimai_rows, write_jsonl

SYSTEM = "你是外卖店的客服，用店里统一的口吻回复顾客的评论。"
TOPICS = [("送", "配送"), ("味", "口味"), ("量", "分量"), ("包装", "包装"), ("价", "价格")]


def house_reply(review: str, positive: bool) -> str:
    """The house style: a fixed opening by sentiment, the review's topic, a fixed closing."""
    topic = next((name for key, name in TOPICS if key in review), "服务")
    if positive:
        return f"感谢您的好评！我们会继续保持{topic}，欢迎下次光临。"
    return f"非常抱歉给您带来不好的体验，我们会改进{topic}，希望您再给我们一次机会。"


def style_examples(rows: list[dict[str, str]]) -> list[dict]:
    return [
        {"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": r["review"][:60]},
                      {"role": "assistant", "content": house_reply(r["review"], r["label"] == "1")}]}
        for r in rows
    ]


def test_fine_tuned_beats_zero_and_few_shot_on_chrf(tiny_model, tmp_path, monkeypatch):
    rows = random.Random(16).sample(waimai_rows(), 184)
    train = write_jsonl(tmp_path / "train.jsonl", style_examples(rows[:160]))
    validation = write_jsonl(tmp_path / "validation.jsonl", style_examples(rows[160:]))
    raw = train_request(
        tiny_model, {"train": str(train), "validation": str(validation)}, tmp_path / "job",
        lora={"r": 16, "alpha": 32, "modules_to_save": ["embed_tokens"]},
        hyperparameters={"n_epochs": 4, "batch_size": 8, "learning_rate": 1e-2, "seed": 7},
    )
    result, _ = run_train(raw, monkeypatch)
    adapter = result["model_dir"]

    shots = [m for e in style_examples(rows[:2]) + style_examples(rows[2:4]) for m in e["messages"] if m["role"] != "system"]
    common = dict(model=tiny_model, data_file=str(validation), labels=None, batch_size=8)
    zero = evaluate.run(EvaluateRequest(**common))
    few = evaluate.run(EvaluateRequest(**common, prefix_messages=[ChatMessage(**m) for m in shots]))
    tuned = evaluate.run(EvaluateRequest(**common, adapter=adapter))
    expected = [p["expected"] for p in tuned["predictions"]]
    table = score_systems(
        expected,
        {name: [p["predicted"] for p in r["predictions"]] for name, r in [("zero-shot", zero), ("few-shot", few), ("fine-tuned", tuned)]},
        seed=0,
    )
    chrf = {name: m["chrf"] for name, m in table["metrics"].items()}
    print(json.dumps({"chrf": chrf, "prompt_tokens": {"zero": zero["prompt_tokens"], "few": few["prompt_tokens"], "tuned": tuned["prompt_tokens"]},
                      "tests": [c for c in table["comparisons"] if c["metric"] == "chrf"]}, ensure_ascii=False, indent=1))
    for baseline in ("zero-shot", "few-shot"):
        assert chrf["fine-tuned"]["value"] > chrf[baseline]["value"]
        # Not luck: the intervals do not overlap, and the paired test agrees.
        assert chrf["fine-tuned"]["ci_low"] > chrf[baseline]["ci_high"]
        test = next(c for c in table["comparisons"] if c["metric"] == "chrf" and c["baseline"] == baseline)
        assert test["system"] == "fine-tuned" and test["delta"] > 0 and test["ci_low"] > 0 and test["p_value"] < 0.01
    assert few["prompt_tokens"] > zero["prompt_tokens"] == pytest.approx(tuned["prompt_tokens"])
