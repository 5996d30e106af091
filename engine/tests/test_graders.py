"""Graders (weitiao_engine.graders) against hand-computed values, in Chinese and English: string_check, the
text_similarity metrics (BLEU also against sacrebleu's own numbers), templating, the calculate_output parser
(which must refuse anything that is not a formula), validation naming the field at fault, multi, cosine
with a tiny local embedding model, and the `grade` engine command end to end.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from weitiao_engine.graders import GraderInvalid, GraderRunner, check_items, validate
from weitiao_engine.graders.multi import FormulaError, check_formula, evaluate, parse
from weitiao_engine.graders.similarity import similarity
from weitiao_engine.graders.string_check import string_check
from weitiao_engine.graders.templating import TemplateError, render, sample_namespace

ENGINE_DIR = Path(__file__).resolve().parents[1]


def exact(name="exact", operation="eq"):
    return {"type": "string_check", "name": name, "input": "{{sample.output_text}}", "reference": "{{item.label}}", "operation": operation}


# ------------------------------------------------------------------------------------------- string_check


@pytest.mark.parametrize(
    "operation,input,reference,expected",
    [
        ("eq", "好评", "好评", 1.0), ("eq", "好评", "好评 ", 0.0), ("eq", "Yes", "yes", 0.0),
        ("ne", "好评", "差评", 1.0), ("ne", "好评", "好评", 0.0),
        ("like", "这条是好评。", "好评", 1.0), ("like", "Positive review", "positive", 0.0),
        ("ilike", "Positive review", "POSITIVE", 1.0), ("ilike", "这条是差评", "好评", 0.0),
    ],
)
def test_string_check(operation, input, reference, expected):
    assert string_check(operation, input, reference) == expected


# ---------------------------------------------------------------------------------------- text_similarity


def score(metric, hypothesis, reference):
    return similarity(metric, hypothesis, reference)[0]


def test_bleu_by_hand_and_sacrebleu():
    import sacrebleu

    # the cat sat on the mat / the cat sat on a mat: clipped n-gram matches 5/6, 3/5, 2/4, 1/3; same length, BP = 1
    hand = (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25
    assert score("bleu", "the cat sat on the mat", "the cat sat on a mat") == pytest.approx(hand, abs=1e-12)
    assert hand == pytest.approx(sacrebleu.sentence_bleu("the cat sat on the mat", ["the cat sat on a mat"]).score / 100, abs=1e-12)
    # 送餐很快 / 送餐非常快 by character: 3/4, 1/3, then 0/2 and 0/1 smoothed (exp: 1/(2·2), 1/(4·1)); BP = e^(1-5/4)
    hand_zh = math.exp(-0.25) * (3 / 4 * 1 / 3 * 1 / 4 * 1 / 4) ** 0.25
    value, notes = similarity("bleu", "送餐很快", "送餐非常快")
    assert value == pytest.approx(hand_zh, abs=1e-12)
    assert value == pytest.approx(sacrebleu.sentence_bleu("送餐很快", ["送餐非常快"], tokenize="zh").score / 100, abs=1e-12)
    assert notes["tokenization"] == "character" and "character" in notes["note"]


def test_rouge_by_hand():
    hyp, ref = "The cat was found under the bed", "the cat was under the bed"
    # unigrams: 6 of 7 match, all 6 of the reference: F1 = 2·(6/7)·1 / (6/7 + 1) = 12/13
    assert score("rouge_1", hyp, ref) == pytest.approx(12 / 13)
    # bigrams: 4 shared of 6 and 5: F1 = 2·(4/6)(4/5) / (4/6 + 4/5) = 8/11
    assert score("rouge_2", hyp, ref) == pytest.approx(8 / 11)
    assert score("rouge_l", hyp, ref) == pytest.approx(12 / 13)  # LCS = the whole reference
    assert score("rouge_5", "a b c", "a b c") == 0.0  # no 5-grams at all
    # Chinese by character, punctuation dropped: 送餐很快味道不错 (8) / 送餐快味道很好 (7), LCS 送餐快味道 = 5: F1 = 10/15
    value, notes = similarity("rouge_l", "送餐很快味道不错", "送餐快，味道很好")
    assert value == pytest.approx(10 / 15)
    assert notes["tokenization"] == "character"
    # by character, 好评 and 差评 share 评: rouge_1 = 1/2; by word (rouge-score's tokenizer) they would share nothing
    assert score("rouge_1", "好评", "差评") == pytest.approx(0.5)
    assert similarity("rouge_1", "good", "good")[1]["tokenization"] == "word"


def test_gleu_meteor_fuzzy_by_hand():
    # GLEU = min(precision, recall) over all 1..4-grams: 6 of 6 hypothesis n-grams match, of 18 reference ones
    assert score("gleu", "the cat sat", "the cat sat on the mat") == pytest.approx(1 / 3)
    # METEOR of identical 6 tokens: one chunk, penalty 0.5·(1/6)^3; Chinese: 4 characters, 0.5·(1/4)^3
    assert score("meteor", "the cat sat on the mat", "the cat sat on the mat") == pytest.approx(1 - 0.5 / 216)
    assert score("meteor", "味道不错", "味道不错") == pytest.approx(1 - 0.5 / 64)
    # Porter stems match: cats~cat, running~run; 2 matches in one chunk
    assert score("meteor", "cats running", "cat run") == pytest.approx(1 - 0.5 / 8)
    # fuzzy_match: Indel ratio 2·LCS/(|a|+|b|): kitten/sitting LCS 4 → 8/13; 送餐很快/送餐非常快 LCS 3 → 6/9
    assert score("fuzzy_match", "kitten", "sitting") == pytest.approx(8 / 13)
    assert score("fuzzy_match", "送餐很快", "送餐非常快") == pytest.approx(6 / 9)
    assert score("gleu", "", "abc") == 0.0 and score("meteor", "abc", "") == 0.0


def test_cosine_is_refused_without_an_embedding_model():
    grader = {"type": "text_similarity", "name": "cos", "input": "{{sample.output_text}}", "reference": "x", "evaluation_metric": "cosine"}
    with pytest.raises(GraderInvalid) as e:
        validate(grader)
    assert e.value.param == "grader.evaluation_metric"
    assert "embedding model" in str(e.value) and "嵌入模型" in str(e.value)


def test_cosine_with_a_tiny_local_embedding_model(tmp_path):
    from transformers import BertConfig, BertModel, BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"送餐很快味道不错差评好", "the", "cat", "dog"]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    BertTokenizerFast(vocab_file=str(tmp_path / "vocab.txt")).save_pretrained(tmp_path)
    config = BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    BertModel(config).save_pretrained(tmp_path)
    grader = validate({"type": "text_similarity", "name": "cos", "input": "{{sample.output_text}}", "reference": "{{item.ref}}",
                       "evaluation_metric": "cosine"}, embedding_model=str(tmp_path))
    with GraderRunner(grader, embedding_model=str(tmp_path)) as runner:
        same = runner.grade("送餐很快", {"ref": "送餐很快"})
        other = runner.grade("the cat", {"ref": "味道不错"})
    assert same["reward"] == pytest.approx(1.0, abs=1e-5)
    assert 0.0 <= other["reward"] < same["reward"]


# --------------------------------------------------------------------------------------------- templating


def test_templates_fill_item_and_sample_fields():
    sample = sample_namespace('{"label": "好评", "score": 0.9}')
    item = {"a": {"b": "嵌套"}, "list": ["x", {"y": 2}], "n": 3}
    text = "{{item.a.b}}|{{ item.list[1].y }}|{{item.list.0}}|{{item.n}}|{{sample.output_json.label}}|{{ sample.output_text }}|{{item.a}}"
    assert render(text, sample, item) == '嵌套|2|x|3|好评|{"label": "好评", "score": 0.9}|{"b":"嵌套"}'


def test_template_errors_name_the_field():
    with pytest.raises(TemplateError) as e:
        render("{{item.reference}}", sample_namespace("x"), {"label": "好评"})
    assert (e.value.kind, e.value.field) == ("missing_item", "item.reference")
    with pytest.raises(TemplateError) as e:
        render("{{sample.output_json.label}}", sample_namespace("不是 JSON"), {})
    assert e.value.kind == "sample_parse"
    with pytest.raises(GraderInvalid) as invalid:
        validate({**exact(), "reference": "{{ answer.label }}"})
    assert invalid.value.param == "grader.reference"


def test_check_items_reports_line_and_field(tmp_path):
    data = tmp_path / "rl.jsonl"
    lines = [{"messages": [], "label": "好评"}, {"messages": []}, {"messages": [], "label": "差评"}, {"label": {"x": 1}}]
    data.write_text("\n".join(json.dumps(line, ensure_ascii=False) for line in lines) + "\n", encoding="utf-8")
    assert check_items(validate(exact()), str(data)) == [(2, "item.label")]


# -------------------------------------------------------------------------------------- calculate_output


def test_formula_values():
    values = {"exact": 1.0, "fuzzy": 0.25, "评分": 0.5}
    cases = {
        "0.5 * exact + 0.5 * fuzzy": 0.625, "exact - fuzzy * 2": 0.5, "(exact + fuzzy) / 2": 0.625, "-fuzzy + 1": 0.75,
        "2 ^ 3 ^ 2": 512.0, "2 ** 3": 8.0, "min(exact, fuzzy, 0.1)": 0.1, "max(fuzzy, 0.2)": 0.25, "abs(-3)": 3.0,
        "floor(2.7) + ceil(0.2)": 3.0, "sqrt(fuzzy)": 0.5, "log(exp(2))": 2.0, "评分 * 2": 1.0, "1e-1 * 10": 1.0,
    }
    for text, expected in cases.items():
        assert evaluate(parse(text), values) == pytest.approx(expected), text


@pytest.mark.parametrize(
    "text",
    ["__import__('os')", "__import__('os').system('true')", "exact.__class__", "open('x')", "exact; 1", "lambda: 1",
     "[1, 2]", "exact if 1 else 0", "eval('1')", "exact(1)", "1 +", "(1", "min()", "abs(1, 2)", "'1'", "exact == 1", "(" * 3000 + "1"],
)
def test_formula_refuses_anything_else(text):
    with pytest.raises(FormulaError) as e:
        evaluate(parse(text), {"exact": 1.0})
    assert e.value.kind == "parse"


def test_formula_names_and_arithmetic_errors():
    with pytest.raises(FormulaError) as e:
        check_formula("exact + fuzzy", ["exact"])
    assert e.value.kind == "variable" and "fuzzy" in str(e.value)
    with pytest.raises(FormulaError) as e:
        evaluate(parse("1 / exact"), {"exact": 0.0})
    assert e.value.kind == "math"


# ------------------------------------------------------------------------------------ validation and multi


def test_validation_names_the_field_at_fault():
    bad = {"type": "multi", "name": "m", "calculate_output": "a + b", "graders": {"a": exact("a"), "b": {**exact("b"), "operation": "equals"}}}
    with pytest.raises(GraderInvalid) as e:
        validate(bad)
    assert e.value.param == "grader.graders.b.operation"
    with pytest.raises(GraderInvalid) as e:
        validate({**bad, "graders": {"a": exact("a"), "b": exact("b")}, "calculate_output": "a + c"})
    assert e.value.param == "grader.calculate_output"
    with pytest.raises(GraderInvalid) as e:
        validate({"type": "python", "name": "p", "source": "def grade(sample, item) return 1"})
    assert e.value.param == "grader.source"
    with pytest.raises(GraderInvalid) as e:
        validate({"type": "python", "name": "p", "source": "def score(sample, item):\n    return 1"})
    assert e.value.param == "grader.source" and "grade(sample, item)" in str(e.value)
    with pytest.raises(GraderInvalid) as e:
        validate({**exact(), "refrence": "x"})
    assert e.value.param == "grader.refrence"
    with pytest.raises(GraderInvalid) as e:
        validate({"type": "label_model", "name": "x"})
    assert e.value.param == "grader.type"


def test_multi_combines_named_graders():
    grader = validate({
        "type": "multi", "name": "reward", "calculate_output": "0.7 * exact + 0.3 * overlap",
        "graders": {
            "exact": exact(),
            "overlap": {"type": "text_similarity", "name": "o", "input": "{{sample.output_text}}", "reference": "{{item.label}}", "evaluation_metric": "rouge_1"},
        },
    })
    with GraderRunner(grader) as runner:
        right = runner.grade("好评", {"label": "好评"})
        half = runner.grade("差评", {"label": "好评"})  # rouge_1 by character: 评 shared, F1 1/2
        missing = runner.grade("好评", {})
    assert right["reward"] == pytest.approx(1.0)
    assert half["reward"] == pytest.approx(0.15) and half["sub_rewards"] == {"exact": 0.0, "overlap": pytest.approx(0.5)}
    assert half["metadata"]["scores"] == half["sub_rewards"] and half["metadata"]["type"] == "multi"
    assert missing["reward"] == 0.0 and missing["metadata"]["errors"]["invalid_variable_error"] is True
    assert "item.label" in missing["weitiao"]["error_messages"][0]


# ------------------------------------------------------------------------------------------ engine command


def test_grade_command_through_the_engine(tmp_path):
    def engine(request):
        out = subprocess.run([sys.executable, "-m", "weitiao_engine", "grade"], input=json.dumps(request, ensure_ascii=False),
                             capture_output=True, text=True, cwd=ENGINE_DIR, timeout=120)
        return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]

    events = engine({"grader": exact(operation="ilike"), "samples": [{"model_sample": "这是好评", "item": {"label": "好评"}},
                                                                        {"model_sample": "差评", "item": {"label": "好评"}}]})
    result = events[-1]
    assert result["type"] == "result", events
    assert [r["reward"] for r in result["data"]["results"]] == [1.0, 0.0]
    data = tmp_path / "items.jsonl"
    data.write_text('{"label": "好评"}\n{"lable": "差评"}\n', encoding="utf-8")
    error = engine({"grader": exact(), "items_file": str(data)})[-1]
    assert error["type"] == "error" and error["code"] == "invalid_file" and error["param"] == "line 2: item.label"
    assert "items.jsonl:2: item.label" in error["message"]
