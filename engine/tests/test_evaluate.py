"""Label scoring and the `evaluate` command on the tiny model, with and without a LoRA adapter."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from weitiao_engine import evaluate
from weitiao_engine.generate import chat_completion
from weitiao_engine.chat_format import answer_ids
from weitiao_engine.loading import load_model
from weitiao_engine.scoring import label_scores, score_labels
from weitiao_engine.protocol import ChatMessage, EngineError, EvaluateRequest

LABELS = ["好评", "差评"]


def read_examples(path: str, n: int) -> list[list[dict[str, str]]]:
    lines = Path(path).read_text(encoding="utf-8").splitlines()[:n]
    return [json.loads(line)["messages"] for line in lines]


def reference_logprob(model, tokenizer, messages, answer: str) -> float:
    """log p(answer + end-of-turn | prompt) from one plain, unpadded forward pass over the whole sequence."""
    p, (c,) = answer_ids(tokenizer, messages, [answer])
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([p + c])).logits[0].float()
    logp = torch.log_softmax(logits, dim=-1)
    return sum(float(logp[len(p) - 1 + j, t]) for j, t in enumerate(c))


def test_batched_scores_equal_unbatched_and_reference(base, waimai_small):
    model, tokenizer = base
    prompts = [m[:-1] for m in read_examples(waimai_small["validation"], 13)]
    labels = LABELS + ["一般般吧，还行"]  # answers of different token lengths share a batch
    assert len({len(c) for c in answer_ids(tokenizer, prompts[0], labels)[1]}) > 1
    batched = label_scores(model, tokenizer, prompts, labels, batch_size=5)  # 39 rows: ragged last batch
    single = [label_scores(model, tokenizer, [p], labels, batch_size=1)[0] for p in prompts]
    assert len({len(answer_ids(tokenizer, p, [])[0]) for p in prompts}) > 3  # padding really happens
    for b_row, s_row, p in zip(batched, single, prompts):
        for j, label in enumerate(labels):
            assert b_row[j] == pytest.approx(s_row[j], abs=1e-4)
            assert s_row[j] == pytest.approx(reference_logprob(model, tokenizer, p, label), abs=1e-4)
            assert s_row[j] < 0
    assert score_labels(model, tokenizer, prompts, labels, batch_size=4) == [
        labels[max(range(len(labels)), key=lambda j: row[j])] for row in single
    ]


def test_adapter_changes_scores(base, tuned, waimai_small):
    prompts = [m[:-1] for m in read_examples(waimai_small["validation"], 6)]
    before = torch.tensor(label_scores(*base, prompts, LABELS, batch_size=8))
    after = torch.tensor(label_scores(*tuned, prompts, LABELS, batch_size=8))
    assert (before - after).abs().max() > 1e-2


def test_evaluate_with_labels(tiny_model, adapter, tuned, waimai_small):
    n = 40
    result = evaluate.run(
        EvaluateRequest(model=tiny_model, adapter=adapter, data_file=waimai_small["validation"], labels=LABELS, batch_size=16, max_examples=n)
    )
    assert set(result) == {"n", "valid_loss", "label_metrics", "predictions", "examples_per_second", "seconds_per_example", "prompt_tokens", "generation_metrics"}
    assert result["generation_metrics"] is None and result["prompt_tokens"] > 0
    assert result["n"] == n and len(result["predictions"]) == n and result["examples_per_second"] > 0

    examples = read_examples(waimai_small["validation"], n)
    expected = [m[-1]["content"] for m in examples]
    assert [p["expected"] for p in result["predictions"]] == expected
    assert [p["index"] for p in result["predictions"]] == list(range(n))

    # Predictions are the argmax of unbatched scores, and valid_loss the per-token loss of the answers.
    model, tokenizer = tuned
    single = [label_scores(model, tokenizer, [m[:-1]], LABELS, batch_size=1)[0] for m in examples]
    assert [p["predicted"] for p in result["predictions"]] == [LABELS[0] if s[0] >= s[1] else LABELS[1] for s in single]
    nll = -sum(s[LABELS.index(e)] for s, e in zip(single, expected))
    tokens = sum(len(answer_ids(tokenizer, m[:-1], [m[-1]["content"]])[1][0]) for m in examples)
    assert result["valid_loss"] == pytest.approx(nll / tokens, abs=1e-4)

    metrics = result["label_metrics"]
    assert metrics["labels"] == LABELS and metrics["n"] == n
    assert sum(map(sum, metrics["confusion_matrix"])) == n
    correct = sum(p["expected"] == p["predicted"] for p in result["predictions"])
    assert metrics["accuracy"] == pytest.approx(correct / n)
    assert {c: metrics["per_class"][c]["support"] for c in LABELS} == {c: expected.count(c) for c in LABELS}


def test_evaluate_by_generation_matches_one_at_a_time(tiny_model, adapter, tuned, waimai_small):
    n = 6
    request = EvaluateRequest(model=tiny_model, adapter=adapter, data_file=waimai_small["validation"], batch_size=4, max_examples=n)
    result = evaluate.run(request)
    assert result["label_metrics"] is None and result["n"] == n
    assert math.isfinite(result["valid_loss"]) and result["valid_loss"] > 0
    # The random adapter babbles rather than ending the turn, so there is real text to compare.
    assert any(p["predicted"] for p in result["predictions"])
    model, tokenizer = tuned
    for p, messages in zip(result["predictions"], read_examples(waimai_small["validation"], n)):
        # Batched, left-padded HF generation must give what the one-example greedy loop gives.
        alone = chat_completion(model, tokenizer, messages[:-1], max_tokens=evaluate.MIN_NEW_TOKENS, temperature=0)
        assert p["predicted"] == alone["text"].strip()
        assert p["expected"] == messages[-1]["content"]
    # The metrics the data choose (Chinese free text: BLEU with the zh tokenizer), from these very predictions.
    generation = result["generation_metrics"]
    assert generation["tokenizer"] == "zh" and set(generation["metrics"]) == {"exact_match", "char_f1", "bleu", "chrf", "rouge_l"}
    exact = [float(p["predicted"] == p["expected"]) for p in result["predictions"]]
    assert generation["per_example"]["exact_match"] == exact
    for value in generation["metrics"].values():
        assert value["ci_low"] <= value["value"] <= value["ci_high"]


def test_few_shot_turns_lengthen_every_prompt(tiny_model, waimai_small):
    n = 8
    plain = EvaluateRequest(model=tiny_model, data_file=waimai_small["validation"], labels=LABELS, max_examples=n)
    shots = [{"role": "user", "content": "太好吃了"}, {"role": "assistant", "content": "好评"},
             {"role": "user", "content": "送得太慢，菜都凉了"}, {"role": "assistant", "content": "差评"}]
    few = plain.model_copy(update={"prefix_messages": [ChatMessage(**m) for m in shots]})
    a, b = evaluate.run(plain), evaluate.run(few)
    from weitiao_engine.loading import load_model as load

    _, tokenizer = load(tiny_model)
    from weitiao_engine.chat_format import prompt_ids

    added = len(prompt_ids(tokenizer, shots + [{"role": "user", "content": "x"}])) - len(prompt_ids(tokenizer, [{"role": "user", "content": "x"}]))
    assert b["prompt_tokens"] - a["prompt_tokens"] == pytest.approx(added, abs=1)
    assert a["seconds_per_example"] > 0 and b["seconds_per_example"] > 0


def write(tmp_path: Path, name: str, lines: list[str]) -> str:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


GOOD = json.dumps({"messages": [{"role": "user", "content": "好吃"}, {"role": "assistant", "content": "好评"}]}, ensure_ascii=False)


@pytest.mark.parametrize(
    "bad, field, words",
    [
        ('{"messages": [', None, "not valid JSON"),
        ('{"messages": [{"role": "bot", "content": "x"}]}', "messages[0].role", "messages[0].role"),
        ('{"messages": [{"role": "user"}]}', "messages[0].content", "Field required"),
        ('{"messages": [{"role": "user", "content": "x"}], "extra": 1}', "extra", "Extra inputs"),
        ('{"messages": [{"role": "assistant", "content": "好评"}, {"role": "user", "content": "x"}]}', "messages", "last message"),
    ],
)
def test_bad_line_names_file_line_and_field(tmp_path, bad, field, words):
    path = write(tmp_path, "data.jsonl", [GOOD, "", bad, GOOD])
    with pytest.raises(EngineError) as e:
        evaluate.read_examples(path)
    assert e.value.code == "invalid_file"
    assert e.value.message.startswith(f"{path}:3: ")
    assert words in e.value.message
    assert e.value.param == field


def test_missing_and_empty_data_file(tmp_path):
    with pytest.raises(EngineError) as e:
        evaluate.read_examples(str(tmp_path / "nope.jsonl"))
    assert (e.value.code, e.value.param) == ("not_found", "data_file")
    with pytest.raises(EngineError) as e:
        evaluate.read_examples(write(tmp_path, "empty.jsonl", [""]))
    assert e.value.code == "invalid_file"
    assert evaluate.read_examples(write(tmp_path, "two.jsonl", [GOOD, GOOD, GOOD]), max_examples=2) == [
        [{"role": "user", "content": "好吃"}, {"role": "assistant", "content": "好评"}]
    ] * 2


def test_evaluate_through_the_engine(run_engine, tiny_model, waimai_small, tmp_path):
    code, events = run_engine(
        "evaluate", {"model": tiny_model, "data_file": waimai_small["validation"], "labels": LABELS, "max_examples": 12, "batch_size": 8}
    )
    assert code == 0
    assert events[0]["type"] == "hello" and events[-1]["type"] == "result"
    progress = [e for e in events if e["type"] == "progress"]
    assert progress and all(e["phase"] == "evaluate" for e in progress)
    assert progress[-1]["current"] == progress[-1]["total"] == 12
    assert events[-1]["data"]["n"] == 12

    bad = write(tmp_path, "bad.jsonl", [GOOD, '{"messages": [{"role": "bot", "content": "差"}]}'])
    code, events = run_engine("evaluate", {"model": tiny_model, "data_file": bad, "labels": LABELS})
    assert code == 1 and events[0]["type"] == "hello"
    assert events[-1]["type"] == "error" and events[-1]["code"] == "invalid_file"
    assert events[-1]["param"] == "messages[0].role" and f"{bad}:2:" in events[-1]["message"]
