"""`response_format` for reinforcement fine-tuning's sampled answers (OpenAI's `{"type": "json_schema", "json_schema":
{"name", "schema", "strict"}}`): an answer must be JSON that matches the schema, else it scores 0 without being graded.

Scored, not constrained: constraining the sampler to a schema needs a grammar engine over the tokenizer (none is in the
engine's dependencies), and a policy whose malformed answers score 0 learns the format from the reward itself; the count
of malformed answers is reported per step. The checker covers the JSON Schema subset OpenAI's structured outputs
accept (type, properties, required, additionalProperties, items, enum, const, anyOf, $ref into $defs, and the length /
range / item-count bounds); other keywords are ignored, never guessed at."""

from __future__ import annotations

import json
from typing import Any, Optional

TYPES = {
    "string": lambda v: isinstance(v, str),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "integer": lambda v: (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, float) and v.is_integer()),
    "boolean": lambda v: isinstance(v, bool),
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "null": lambda v: v is None,
}
BOUNDS = {  # keyword: (applies to, measure, holds)
    "minLength": (str, len, lambda n, b: n >= b),
    "maxLength": (str, len, lambda n, b: n <= b),
    "minItems": (list, len, lambda n, b: n >= b),
    "maxItems": (list, len, lambda n, b: n <= b),
    "minimum": ((int, float), float, lambda n, b: n >= b),
    "maximum": ((int, float), float, lambda n, b: n <= b),
    "exclusiveMinimum": ((int, float), float, lambda n, b: n > b),
    "exclusiveMaximum": ((int, float), float, lambda n, b: n < b),
}


def mismatch(text: str, schema: dict[str, Any]) -> Optional[str]:
    """None when `text` is JSON matching `schema`; else why not, naming the path (`$.answer`)."""
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return "the answer is not JSON / 回答不是 JSON"
    return check(value, schema, schema, "$")


def check(value: Any, node: Any, root: dict[str, Any], path: str) -> Optional[str]:
    if not isinstance(node, dict):
        return None  # `true` / `{}`: anything
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        target: Any = root
        for key in ref[2:].split("/"):
            target = target.get(key, {}) if isinstance(target, dict) else {}
        return check(value, target, root, path)
    if "anyOf" in node:
        if all(check(value, alternative, root, path) for alternative in node["anyOf"]):
            return f"{path}: matches none of anyOf / 不符合任何一种格式"
    types = node.get("type")
    if types is not None:
        names = types if isinstance(types, list) else [types]
        if not any(TYPES.get(name, lambda v: True)(value) for name in names):
            return f"{path}: not {' or '.join(names)} / 类型不符"
    if "const" in node and value != node["const"]:
        return f"{path}: not {json.dumps(node['const'], ensure_ascii=False)} / 取值不符"
    if "enum" in node and value not in node["enum"]:
        return f"{path}: not one of {json.dumps(node['enum'], ensure_ascii=False)} / 不在可选值中"
    for keyword, (kind, measure, holds) in BOUNDS.items():
        if keyword in node and isinstance(value, kind) and not isinstance(value, bool) and not holds(measure(value), node[keyword]):
            return f"{path}: breaks {keyword} {node[keyword]} / 超出范围"
    if isinstance(value, dict):
        properties = node.get("properties", {})
        for name in node.get("required", []):
            if name not in value:
                return f"{path}.{name}: missing / 缺少字段"
        extra = node.get("additionalProperties", True)
        for name, inner in value.items():
            if name in properties:
                problem = check(inner, properties[name], root, f"{path}.{name}")
            elif extra is False:
                problem = f"{path}.{name}: not in the schema / 多余字段"
            else:
                problem = check(inner, extra, root, f"{path}.{name}")
            if problem:
                return problem
    if isinstance(value, list) and "items" in node:
        for i, inner in enumerate(value):
            problem = check(inner, node["items"], root, f"{path}[{i}]")
            if problem:
                return problem
    return None
