"""Graders in OpenAI's JSON shapes, one pydantic model per type, discriminated by `type` (mirror of
src/graders/schema.ts). Unknown keys are errors: a typo in a grader must not silently become a default.

The same grader JSON a user wrote for OpenAI's reinforcement fine-tuning or Evals validates here unchanged;
weitiao's own settings (the judge's endpoint) sit in one extension object, `weitiao`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator

# OpenAI caps a python grader's source at 256 kB.
MAX_PYTHON_SOURCE = 256 * 1024


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StringCheckGrader(Strict):
    """1 when `input` and `reference` compare true under `operation`, else 0.

    eq/ne: exact (case-sensitive) equality; like: `input` contains `reference`; ilike: the same, ignoring case.
    """

    type: Literal["string_check"]
    name: str
    input: str
    reference: str
    operation: Literal["eq", "ne", "like", "ilike"]


class TextSimilarityGrader(Strict):
    type: Literal["text_similarity"]
    name: str
    input: str
    reference: str
    evaluation_metric: Literal[
        "fuzzy_match", "bleu", "gleu", "meteor", "cosine",
        "rouge_1", "rouge_2", "rouge_3", "rouge_4", "rouge_5", "rouge_l",
    ]
    pass_threshold: Optional[float] = None  # Evals' testing criteria carry it; a reward ignores it


class InputText(Strict):
    type: Literal["input_text"]
    text: str


class OutputText(Strict):
    type: Literal["output_text"]
    text: str


ContentPart = Union[str, InputText, OutputText]


class GraderMessage(Strict):
    """One message to the judge; its text may hold `{{item.x}}` / `{{sample.output_text}}` templates."""

    role: Literal["user", "assistant", "system", "developer"]
    content: Union[str, InputText, OutputText, list[ContentPart]]
    type: Optional[Literal["message"]] = None


class SamplingParams(Strict):
    max_completions_tokens: Optional[int] = Field(None, gt=0)  # OpenAI's spelling, sic
    reasoning_effort: Optional[str] = None  # recorded; local judges have no reasoning budget to set
    seed: Optional[int] = None
    temperature: Optional[float] = Field(None, ge=0, le=2)
    top_p: Optional[float] = Field(None, gt=0, le=1)


class JudgeEndpoint(Strict):
    """weitiao's extension: where the judge model is served (any OpenAI-compatible /v1)."""

    base_url: Optional[str] = None  # e.g. http://127.0.0.1:8000/v1; else the engine's configured judge
    api_key: Optional[str] = None


class ScoreModelGrader(Strict):
    type: Literal["score_model"]
    name: str
    model: str
    input: list[GraderMessage] = Field(min_length=1)
    range: Optional[list[float]] = Field(None, min_length=2, max_length=2)  # default [0, 1]
    sampling_params: Optional[SamplingParams] = None
    pass_threshold: Optional[float] = None
    weitiao: Optional[JudgeEndpoint] = None

    @field_validator("range")
    @classmethod
    def _range_ordered(cls, value: Optional[list[float]]) -> Optional[list[float]]:
        if value is not None and not value[0] < value[1]:
            raise ValueError(f"range must be [low, high] with low < high, got {value}")
        return value


class PythonGrader(Strict):
    """`source` defines `grade(sample, item) -> float`, run in a sandboxed process (python_sandbox.py)."""

    type: Literal["python"]
    name: str
    source: str = Field(min_length=1, max_length=MAX_PYTHON_SOURCE)
    image_tag: Optional[str] = None  # OpenAI's runtime image; weitiao runs the engine's own Python
    pass_threshold: Optional[float] = None


SubGrader = Annotated[
    Union[StringCheckGrader, TextSimilarityGrader, ScoreModelGrader, PythonGrader], Field(discriminator="type")
]


class MultiGrader(Strict):
    """Named graders combined by `calculate_output`, a formula over their names (multi.py)."""

    type: Literal["multi"]
    name: str
    graders: dict[str, SubGrader] = Field(min_length=1)
    calculate_output: str = Field(min_length=1)


Grader = Annotated[
    Union[StringCheckGrader, TextSimilarityGrader, ScoreModelGrader, PythonGrader, MultiGrader],
    Field(discriminator="type"),
]
GRADER_TYPES = ("string_check", "text_similarity", "score_model", "python", "multi")

_ADAPTER: TypeAdapter[Any] = TypeAdapter(Grader)


def parse_grader(payload: Any):
    """The grader model for a JSON object; raises pydantic's ValidationError (see error_param)."""
    return _ADAPTER.validate_python(payload)


def error_param(error: dict[str, Any], prefix: str = "grader") -> str:
    """A pydantic error's location as the field a user wrote, e.g. `grader.graders.b.operation`.

    pydantic puts the union's tag into the location (`multi.graders.b.string_check.operation`); the
    user's JSON has no such level, so tags at union positions are dropped. A missing or unknown tag is
    the `type` field's fault.
    """
    loc = tuple(error["loc"])
    if error.get("type") in ("union_tag_invalid", "union_tag_not_found"):
        loc = (*loc, "type")
    parts: list[str] = []
    for i, key in enumerate(loc):
        at_union = i == 0 or (i >= 2 and loc[i - 2] == "graders")
        if at_union and key in GRADER_TYPES:
            continue
        parts.append(f"[{key}]" if isinstance(key, int) else f".{key}")
    return (prefix + "".join(parts)) if prefix else "".join(parts).lstrip(".")
