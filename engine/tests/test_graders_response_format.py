"""response_format for reinforcement answers: the schema check names the path at fault, and the reward pool scores an
answer that is not JSON matching the schema 0 without grading it, while matching answers are graded through
`{{sample.output_json.x}}`."""

from __future__ import annotations

import pytest

from weitiao_engine.graders import Judge, SandboxLimits
from weitiao_engine.graders.response_format import mismatch
from weitiao_engine.protocol import ReinforcementConfig
from weitiao_engine.training.rewards import RewardPool, load_grader

SCHEMA = {
    "type": "object",
    "properties": {"label": {"type": "string", "enum": ["好评", "差评"]}, "reasons": {"type": "array", "items": {"$ref": "#/$defs/reason"}}},
    "required": ["label"],
    "additionalProperties": False,
    "$defs": {"reason": {"type": "string", "maxLength": 8}},
}


@pytest.mark.parametrize(
    "text, problem",
    [
        ('{"label": "好评"}', None),
        ('{"label": "差评", "reasons": ["送餐慢"]}', None),
        ("好评", "not JSON"),
        ('["好评"]', "$: not object"),
        ('{"reasons": []}', "$.label: missing"),
        ('{"label": "还行"}', "$.label: not one of"),
        ('{"label": "好评", "score": 1}', "$.score: not in the schema"),
        ('{"label": "好评", "reasons": ["送餐很慢而且汤都洒了"]}', "$.reasons[0]: breaks maxLength 8"),
    ],
)
def test_answers_are_checked_against_the_schema(text, problem):
    found = mismatch(text, SCHEMA)
    assert found is None if problem is None else problem in found, found


def test_the_protocol_reads_openai_response_format():
    config = ReinforcementConfig.model_validate({"response_format": {"type": "json_schema", "json_schema": {"name": "label", "schema": SCHEMA, "strict": True}}})
    assert config.response_format.json_schema.schema_ == SCHEMA
    with pytest.raises(ValueError, match="json_schema"):
        ReinforcementConfig.model_validate({"response_format": {"type": "json_schema"}})


def test_malformed_answers_score_zero_and_well_formed_ones_are_graded():
    grader = load_grader({"type": "string_check", "name": "label", "input": "{{sample.output_json.label}}", "reference": "{{item.label}}", "operation": "eq"}, [])
    reported: list[str] = []
    pool = RewardPool(grader, Judge(), SandboxLimits(), threads=2, on_error=reported.append, answer_schema=SCHEMA)
    try:
        answers = ['{"label": "好评"}', '{"label": "差评"}', "好评", '{"label": "好评", "extra": 1}']
        graded = pool.grade(answers, [{"label": "好评"}] * 4)
    finally:
        pool.close()
    assert graded.rewards == [1.0, 0.0, 0.0, 0.0]
    assert graded.malformed == 2 and graded.errors == 0 and not reported  # malformed is not a grader failure
    assert graded.per_grader == [{"label": 1.0}, {"label": 0.0}, {"label": 0.0}, {"label": 0.0}]
