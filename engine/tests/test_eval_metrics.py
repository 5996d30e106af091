"""Generation metrics against hand-computed values (Chinese and English), sacrebleu's own numbers, bootstrap
intervals, the paired test on constructed cases, and the `score-answers` command as a subprocess."""

from __future__ import annotations

import json

import pytest
import sacrebleu

from weitiao_engine import eval_metrics as em
from weitiao_engine.evaluate import with_prefix


def test_exact_match_and_char_f1_by_hand():
    assert em.exact_match(" 好评\n", "好评") == 1.0
    assert em.exact_match("好评。", "好评") == 0.0
    # 今天天气很好 vs 今天天气不好: 5 of 6 characters shared each way -> P = R = 5/6.
    assert em.char_f1("今天天气很好", "今天天气不好") == pytest.approx(5 / 6)
    # "abc d" vs "abxx": characters a,b,c,d vs a,b,x,x -> overlap 2, P = 2/4, R = 2/4.
    assert em.char_f1("abc d", "abxx") == pytest.approx(0.5)
    assert em.char_f1("", "") == 1.0 and em.char_f1("a", "") == 0.0


def test_rouge_l_by_character_for_chinese_by_word_for_english():
    # LCS of 我爱北京天安门 and 我爱上海天安门 by character: 我爱天安门 = 5 of 7 each way.
    assert em.rouge_l_score("我爱北京天安门", "我爱上海天安门", by_character=True) == pytest.approx(5 / 7)
    # Words: the cat sat on the mat / the cat lay on the mat: LCS 5 of 6.
    assert em.rouge_l_score("the cat sat on the mat", "the cat lay on the mat", by_character=False) == pytest.approx(5 / 6)


def test_bleu_by_hand_english_and_chinese_zh_tokenizer():
    # a b c d e vs a b c d f: n-gram precisions 4/5, 3/4, 2/3, 1/2, no brevity penalty.
    m = em.build_metric("bleu", ["a b c d e"], ["a b c d f"], cjk=False)
    assert m.score() == pytest.approx(100 * (4 / 5 * 3 / 4 * 2 / 3 * 1 / 2) ** 0.25)
    # zh splits every CJK character: 今天天气很好 vs 今天天气不好 -> 5/6, 3/5, 2/4, 1/3.
    m = em.build_metric("bleu", ["今天天气很好"], ["今天天气不好"], cjk=True)
    assert m.score() == pytest.approx(100 * (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25)
    # Without the zh tokenizer the sentence is one "word" and scores 0: why the data choose the tokenizer.
    assert em.build_metric("bleu", ["今天天气很好"], ["今天天气不好"], cjk=False).score() == pytest.approx(0.0)


def test_sacrebleu_reference_numbers():
    # sacrebleu's README example, first reference stream: corpus scores equal sacrebleu's own functions.
    hyps = ["The dog bit the man.", "It wasn't surprising.", "The man had just bitten him."]
    refs = ["The dog bit the man.", "It was not unexpected.", "The man bit him first."]
    assert em.build_metric("bleu", hyps, refs, cjk=False).score() == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score)
    assert em.build_metric("chrf", hyps, refs, cjk=False).score() == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs]).score)
    # The figure sacrebleu prints for this single-reference case, rounded as it prints it.
    assert round(em.build_metric("bleu", hyps, refs, cjk=False).score(), 2) == round(sacrebleu.corpus_bleu(hyps, [refs]).score, 2)
    assert em.build_metric("chrf", ["今天天气很好"], ["今天天气很好"], cjk=True).score() == pytest.approx(100.0)
    assert em.build_metric("chrf", ["abc"], ["xyz"], cjk=False).score() == pytest.approx(0.0)


def test_json_metrics_and_choice_by_data():
    expected = ['{"dish": "宫保鸡丁", "price": 28}', '{"dish": "麻婆豆腐", "price": 18}']
    assert em.choose_metrics(expected) == ["exact_match", "char_f1", "json_valid", "json_fields"]
    assert em.choose_metrics(["你好", "{}"]) == ["exact_match", "char_f1", "bleu", "chrf", "rouge_l"]
    assert em.json_fields('```json\n{"dish": "宫保鸡丁", "price": 30}\n```', expected[0]) == 0.5
    assert em.json_fields('{"price": 18, "dish": "麻婆豆腐"}', expected[1]) == 1.0
    assert em.json_fields("not json", expected[1]) == 0.0
    table = em.score_systems(expected, {"m": ['{"dish": "宫保鸡丁", "price": 30}', "oops"]}, resamples=50)
    assert table["metrics"]["m"]["json_valid"]["value"] == 0.5
    assert table["metrics"]["m"]["json_fields"]["value"] == 0.25
    assert table["per_example"]["m"]["json_fields"] == [0.5, 0.0]
    # Asked-for metrics replace the data's choice (label data: exact match is the accuracy); unknown ones are refused.
    only = em.score_systems(["好评", "差评"], {"m": ["好评", "好评"]}, metrics=["exact_match"], resamples=20)
    assert list(only["metrics"]["m"]) == ["exact_match"] and only["metrics"]["m"]["exact_match"]["value"] == 0.5
    with pytest.raises(ValueError, match="unknown metrics"):
        em.score_systems(["a"], {"m": ["a"]}, metrics=["accuracy"])


def test_bootstrap_interval_contains_estimate_and_is_seeded():
    expected = [f"答案{i}号是{i % 7}" for i in range(40)]
    predicted = [e if i % 3 else e[:-1] + "错" for i, e in enumerate(expected)]
    for name in ("exact_match", "chrf", "bleu", "char_f1"):
        m = em.build_metric(name, predicted, expected, cjk=True)
        low, high = em.bootstrap_interval(m, 1000, seed=7)
        assert low <= m.score() <= high and low < high
        assert em.bootstrap_interval(m, 1000, seed=7) == (low, high)
        if name == "chrf":  # a continuous corpus score: another seed moves the interval's ends
            assert em.bootstrap_interval(m, 1000, seed=8) != (low, high)
    # Exact match is a proportion: 26/40 right; its 95% interval is about ± 1.96 * sqrt(p(1-p)/n) = ± 0.148.
    m = em.build_metric("exact_match", predicted, expected, cjk=True)
    low, high = em.bootstrap_interval(m, 1000, seed=0)
    assert m.score() == pytest.approx(26 / 40)
    assert high - low == pytest.approx(2 * 1.96 * (0.65 * 0.35 / 40) ** 0.5, abs=0.05)


def test_paired_test_on_constructed_cases():
    expected = [f"第{i}条：今天的外卖很好吃" for i in range(30)]
    wrong = ["完全无关的回答" for _ in expected]
    better = em.build_metric("exact_match", expected, expected, cjk=True)
    worse = em.build_metric("exact_match", wrong, expected, cjk=True)
    test = em.paired_test(worse, better, 1000, seed=0)
    # 30 of 30 flips: a random swap matches |1.0| only when every pair swaps the same way: p ~ 2 / 2^30.
    assert test["delta"] == 1.0 and test["p_value"] < 0.01
    assert test["ci_low"] == test["ci_high"] == 1.0
    # A system against itself: no difference, p = 1.
    same = em.paired_test(better, better, 200, seed=0)
    assert same["delta"] == 0.0 and same["p_value"] == 1.0
    # One example better of 30: not significant.
    one = [expected[0]] + wrong[1:]
    test = em.paired_test(worse, em.build_metric("exact_match", one, expected, cjk=True), 1000, seed=0)
    assert test["delta"] == pytest.approx(1 / 30) and test["p_value"] > 0.5


def test_graders_are_metrics_through_the_grader_runner():
    grader = {"type": "string_check", "name": "has_dish", "input": "{{sample.output_text}}", "reference": "{{item.dish}}", "operation": "ilike"}
    from weitiao_engine.graders import validate

    table = em.score_systems(
        ["宫保鸡丁很好吃", "麻婆豆腐太咸"],
        {"base": ["不知道", "麻婆豆腐"], "tuned": ["宫保鸡丁好吃", "麻婆豆腐太咸"]},
        graders=[validate(grader)],
        items=[{"dish": "宫保鸡丁"}, {"dish": "麻婆豆腐"}],
        resamples=100,
    )
    assert table["metrics"]["base"]["grader:has_dish"]["value"] == 0.5
    assert table["metrics"]["tuned"]["grader:has_dish"]["value"] == 1.0
    names = {c["metric"] for c in table["comparisons"]}
    assert "grader:has_dish" in names and "chrf" in names
    assert all(c["system"] == "tuned" and c["baseline"] == "base" for c in table["comparisons"])


def test_few_shot_turns_go_after_system_messages():
    prompt = [{"role": "system", "content": "你是客服"}, {"role": "user", "content": "好吃吗"}]
    shots = [{"role": "user", "content": "很好吃"}, {"role": "assistant", "content": "好评"}]
    assert with_prefix(prompt, shots) == [prompt[0], *shots, prompt[1]]
    assert with_prefix(prompt[1:], shots) == [*shots, prompt[1]]


def test_score_answers_command(run_engine):
    code, events = run_engine(
        "score-answers",
        {"expected": ["今天天气很好", "我爱北京"], "systems": {"base": ["天气", "我爱"], "tuned": ["今天天气很好", "我爱北京"]}, "resamples": 100},
    )
    assert code == 0, events
    hello, result = events[0], events[-1]
    assert hello["command"] == "score-answers"
    assert result["type"] == "result"
    table = result["data"]
    assert table["metrics"]["tuned"]["chrf"]["value"] == pytest.approx(100.0)
    assert table["tokenizer"] == "zh"
    code, events = run_engine(
        "score-answers", {"expected": ["a"], "systems": {"m": ["a"]}, "graders": [{"type": "string_check", "name": "x", "input": "a", "reference": "b", "operation": "nope"}]}
    )
    assert code != 0
    error = events[-1]
    assert error["type"] == "error" and error["param"].startswith("graders[0]"), json.dumps(error, ensure_ascii=False)
