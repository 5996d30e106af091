"""`multi`: named graders combined by `calculate_output`, a formula parsed here and never handed to eval.

The formula language is OpenAI's: numbers, grader names, + - * / ^ (also **), parentheses, unary minus,
and the functions min, max, abs, floor, ceil, exp, sqrt, log.

>>> evaluate(parse("0.5 * exact + max(fuzzy, 0.2)"), {"exact": 1.0, "fuzzy": 0.1})
0.7
"""

from __future__ import annotations

import math
import re
from typing import Any, Callable, Union

FUNCTIONS: dict[str, tuple[Callable[..., float], int, int]] = {
    # name: (function, fewest arguments, most arguments)
    "min": (min, 1, 64),
    "max": (max, 1, 64),
    "abs": (abs, 1, 1),
    "floor": (math.floor, 1, 1),
    "ceil": (math.ceil, 1, 1),
    "exp": (math.exp, 1, 1),
    "sqrt": (math.sqrt, 1, 1),
    "log": (math.log, 1, 1),
}
MAX_FORMULA = 4096

_TOKEN = re.compile(r"\s*(?:(\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?)|([^\W\d]\w*)|(\*\*|[-+*/^(),]))")

Node = Union[tuple[str, float], tuple[str, str], tuple[str, str, Any, Any], tuple[str, str, list[Any]]]


class FormulaError(ValueError):
    """kind: `parse` (malformed, unknown function) | `variable` (not a grader name) | `math` (e.g. 1/0)."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def _tokens(formula: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    formula = formula.rstrip()
    while pos < len(formula):
        m = _TOKEN.match(formula, pos)
        if not m or m.end() == pos:
            raise FormulaError("parse", f"calculate_output: unexpected {formula[pos:].strip()[:20]!r} at {pos} / 公式无法解析")
        number, name, op = m.groups()
        out.append(("num", number) if number else ("name", name) if name else ("op", op))
        pos = m.end()
    return out


def parse(formula: str) -> Node:
    """The formula's syntax tree; raises FormulaError("parse") for anything outside the language."""
    if len(formula) > MAX_FORMULA:
        raise FormulaError("parse", f"calculate_output is longer than {MAX_FORMULA} characters / 公式过长")
    tokens = _tokens(formula)
    pos = 0

    def peek() -> tuple[str, str] | None:
        return tokens[pos] if pos < len(tokens) else None

    def take(value: str) -> bool:
        nonlocal pos
        if peek() == ("op", value):
            pos += 1
            return True
        return False

    def expect(value: str) -> None:
        if not take(value):
            got = peek()
            raise FormulaError("parse", f"calculate_output: expected {value!r}, got {got[1] if got else 'the end'!r} / 公式缺少 {value}")

    def expression() -> Node:
        node = term()
        while (tok := peek()) in (("op", "+"), ("op", "-")):
            take(tok[1])
            node = ("bin", tok[1], node, term())
        return node

    def term() -> Node:
        node = unary()
        while (tok := peek()) in (("op", "*"), ("op", "/")):
            take(tok[1])
            node = ("bin", tok[1], node, unary())
        return node

    def unary() -> Node:
        if take("-"):
            return ("neg", unary())  # type: ignore[return-value]
        if take("+"):
            return unary()
        return power()

    def power() -> Node:
        base = atom()
        if take("^") or take("**"):
            return ("bin", "^", base, unary())  # right-associative: 2^3^2 = 2^9
        return base

    def atom() -> Node:
        nonlocal pos
        tok = peek()
        if tok is None:
            raise FormulaError("parse", "calculate_output ends too early / 公式不完整")
        kind, text = tok
        pos += 1
        if kind == "num":
            return ("num", float(text))
        if kind == "name":
            if take("("):
                if text not in FUNCTIONS:
                    raise FormulaError("parse", f"calculate_output: unknown function {text}() (allowed: {', '.join(FUNCTIONS)}) / 不支持的函数 {text}")
                args = [expression()]
                while take(","):
                    args.append(expression())
                expect(")")
                _, fewest, most = FUNCTIONS[text]
                if not fewest <= len(args) <= most:
                    raise FormulaError("parse", f"calculate_output: {text}() takes {fewest}{'' if fewest == most else '+'} argument(s) / {text} 参数个数错误")
                return ("call", text, args)
            return ("var", text)
        if text == "(":
            node = expression()
            expect(")")
            return node
        raise FormulaError("parse", f"calculate_output: unexpected {text!r} / 公式中出现意外的 {text}")

    try:
        node = expression()
    except RecursionError:
        raise FormulaError("parse", "calculate_output is nested too deeply / 公式嵌套过深") from None
    if pos != len(tokens):
        raise FormulaError("parse", f"calculate_output: unexpected {tokens[pos][1]!r} after a complete formula / 公式多余部分 {tokens[pos][1]}")
    return node


def variables(node: Node) -> set[str]:
    """The grader names a formula reads."""
    kind = node[0]
    if kind == "var":
        return {node[1]}  # type: ignore[arg-type]
    if kind == "bin":
        return variables(node[2]) | variables(node[3])  # type: ignore[misc]
    if kind == "neg":
        return variables(node[1])  # type: ignore[arg-type]
    if kind == "call":
        return set().union(*(variables(a) for a in node[2]))  # type: ignore[misc]
    return set()


def evaluate(node: Node, values: dict[str, float]) -> float:
    """The formula's value; raises FormulaError("variable"/"math")."""
    try:
        result = _eval(node, values)
    except (ZeroDivisionError, ValueError, OverflowError, TypeError) as e:
        if isinstance(e, FormulaError):
            raise
        raise FormulaError("math", f"calculate_output cannot be computed: {e} / 公式无法计算") from None
    if not math.isfinite(result):
        raise FormulaError("math", f"calculate_output is {result} / 公式结果不是有限数")
    return float(result)


def _eval(node: Any, values: dict[str, float]) -> float:
    kind = node[0]
    if kind == "num":
        return node[1]
    if kind == "var":
        if node[1] not in values:
            raise FormulaError("variable", f"calculate_output: {node[1]!r} is not one of the graders ({', '.join(values)}) / 未知的评分器名 {node[1]}")
        return values[node[1]]
    if kind == "neg":
        return -_eval(node[1], values)
    if kind == "call":
        return float(FUNCTIONS[node[1]][0](*(_eval(a, values) for a in node[2])))
    a, b = _eval(node[2], values), _eval(node[3], values)
    op = node[1]
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    if op == "/":
        return a / b
    return math.pow(a, b)


def check_formula(formula: str, names: list[str]) -> Node:
    """Parses and checks that every name is one of `names` (validation, before any sample is graded)."""
    node = parse(formula)
    unknown = sorted(variables(node) - set(names))
    if unknown:
        raise FormulaError("variable", f"calculate_output reads {', '.join(unknown)}, which is not one of the graders ({', '.join(names)}) / 公式引用了未定义的评分器 {', '.join(unknown)}")
    return node
