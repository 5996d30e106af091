"""OpenAI's grader templates: `{{ item.x }}`, `{{ item.a.b }}`, `{{ item.list[0] }}`, `{{ sample.output_text }}`,
`{{ sample.output_json.x }}`. Two namespaces only, `item` (the data line) and `sample` (the model's answer).

>>> render("答案：{{ item.label }}", sample_namespace("好评"), {"label": "好评"})
'答案：好评'
"""

from __future__ import annotations

import json
import re
from typing import Any, Iterator

TEMPLATE = re.compile(r"\{\{\s*(.*?)\s*\}\}")
# `namespace.key`, then `.key` or `[index]` steps; keys are any run of characters but . [ ] and spaces.
_STEP = re.compile(r"\.([^.\[\]\s]+)|\[(\d+)\]")
NAMESPACES = ("item", "sample")


class TemplateError(ValueError):
    """A template that cannot be filled. `kind`: syntax | missing_item | sample_parse (OpenAI's error flags)."""

    def __init__(self, kind: str, field: str, message: str):
        super().__init__(message)
        self.kind = kind
        self.field = field


def parse_path(expression: str) -> tuple[str, list[str | int]]:
    """`item.a.b[0]` -> ("item", ["a", "b", 0]); raises TemplateError(kind="syntax")."""
    namespace, _, rest = expression.partition(".")
    namespace = namespace.split("[", 1)[0]
    if namespace not in NAMESPACES:
        raise TemplateError(
            "syntax", expression,
            f"template {{{{{expression}}}}}: the namespace must be `item` or `sample` / 模板变量须以 item. 或 sample. 开头",
        )
    tail = expression[len(namespace):]
    steps: list[str | int] = []
    pos = 0
    while pos < len(tail):
        m = _STEP.match(tail, pos)
        if not m:
            raise TemplateError("syntax", expression, f"template {{{{{expression}}}}} is not a variable path / 模板变量路径无效")
        steps.append(m.group(1) if m.group(1) is not None else int(m.group(2)))
        pos = m.end()
    if not steps:
        raise TemplateError("syntax", expression, f"template {{{{{expression}}}}} names no field / 模板变量缺少字段名")
    return namespace, steps


def references(text: str) -> Iterator[tuple[str, str, list[str | int]]]:
    """Every template in `text` as (expression, namespace, steps); syntax errors raise."""
    for m in TEMPLATE.finditer(text):
        namespace, steps = parse_path(m.group(1))
        yield m.group(1), namespace, steps


def lookup(root: Any, steps: list[str | int]) -> tuple[bool, Any]:
    """(found, value) of a path in a JSON value."""
    value = root
    for step in steps:
        if isinstance(step, int) and isinstance(value, list) and -len(value) <= step < len(value):
            value = value[step]
        elif isinstance(step, str) and isinstance(value, dict) and step in value:
            value = value[step]
        elif isinstance(step, str) and step.isdigit() and isinstance(value, list) and int(step) < len(value):
            value = value[int(step)]  # `item.list.0`, as JSON paths also allow
        else:
            return False, None
    return True, value


def sample_namespace(model_sample: str) -> dict[str, Any]:
    """The `sample` namespace of one answer: output_text, and output_json when the text is JSON."""
    try:
        output_json = json.loads(model_sample)
    except (json.JSONDecodeError, RecursionError):
        output_json = None
    return {"output_text": model_sample, "output_json": output_json, "output_tools": []}


def as_text(value: Any) -> str:
    """A template value as text: strings as they are, anything else as compact JSON (Chinese kept)."""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def render(text: str, sample: dict[str, Any], item: Any) -> str:
    """`text` with every `{{ … }}` replaced; raises TemplateError naming the field that is missing."""

    def fill(m: re.Match[str]) -> str:
        expression = m.group(1)
        namespace, steps = parse_path(expression)
        found, value = lookup(item if namespace == "item" else sample, steps)
        if not found:
            if namespace == "item":
                raise TemplateError("missing_item", expression, f"the item has no field `{expression}` / 数据项缺少字段 {expression}")
            if steps and steps[0] == "output_json" and sample.get("output_json") is None:
                raise TemplateError(
                    "sample_parse", expression,
                    f"`{expression}`: the model's answer is not JSON / 模型回答不是 JSON，无法读取 {expression}",
                )
            raise TemplateError("sample_parse", expression, f"the sample has no field `{expression}` / 样本缺少字段 {expression}")
        return as_text(value)

    return TEMPLATE.sub(fill, text)


def grader_templates(grader: Any, param: str = "grader") -> Iterator[tuple[str, str]]:
    """(param, text) of every string of a grader that may hold templates, e.g. ("grader.input[0].content", …)."""
    kind = grader.type
    if kind in ("string_check", "text_similarity"):
        yield f"{param}.input", grader.input
        yield f"{param}.reference", grader.reference
    elif kind == "score_model":
        for i, message in enumerate(grader.input):
            content = message.content
            if isinstance(content, str):
                yield f"{param}.input[{i}].content", content
            elif isinstance(content, list):
                for j, part in enumerate(content):
                    yield f"{param}.input[{i}].content[{j}]", part if isinstance(part, str) else part.text
            else:
                yield f"{param}.input[{i}].content.text", content.text
    elif kind == "multi":
        for name, sub in grader.graders.items():
            yield from grader_templates(sub, f"{param}.graders.{name}")


def check_syntax(grader: Any) -> None:
    """Raises TemplateError (with `field` set to the grader param) for the first malformed template."""
    for param, text in grader_templates(grader):
        try:
            list(references(text))
        except TemplateError as e:
            raise TemplateError("syntax", param, str(e)) from None


def missing_item_fields(grader: Any, item: Any) -> list[str]:
    """The `item.…` templates of a grader that this data item cannot fill, e.g. ["item.reference"]."""
    missing: list[str] = []
    for _, text in grader_templates(grader):
        for expression, namespace, steps in references(text):
            if namespace == "item" and not lookup(item, steps)[0] and expression not in missing:
                missing.append(expression)
    return missing
