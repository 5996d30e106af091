"""Grading: a validated grader applied to (model sample, item) pairs, each result in the shape of OpenAI's
`POST /fine_tuning/alpha/graders/run` response. Used in-process (the RL recipe's rewards, evaluation's
testing criteria) through GraderRunner, and by the engine's `grade` command through run().

>>> with GraderRunner(validate({"type": "string_check", "name": "exact", "input": "{{sample.output_text}}",
...                             "reference": "{{item.label}}", "operation": "eq"})) as runner:
...     runner.grade("好评", {"label": "好评"})["reward"]
1.0
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Optional

from pydantic import ValidationError

from . import multi as formula
from .python_sandbox import PythonSandbox, SandboxLimits, check_source
from .schema import parse_grader, error_param
from .score_model import Judge, JudgeError, score_with_judge
from .similarity import similarity
from .string_check import string_check
from .templating import TemplateError, check_syntax, missing_item_fields, render, sample_namespace

ERROR_FLAGS = (
    "formula_parse_error", "invalid_variable_error", "model_grader_parse_error", "model_grader_refusal_error",
    "model_grader_server_error", "other_error", "python_grader_runtime_error", "python_grader_server_error",
    "sample_parse_error", "truncated_observation_error", "unresponsive_reward_error",
)
ERROR_DETAILS = ("model_grader_server_error_details", "python_grader_runtime_error_details", "python_grader_server_error_type")


class GraderInvalid(ValueError):
    """A grader that cannot run, with the field at fault (e.g. `grader.graders.b.operation`)."""

    def __init__(self, param: str, message: str):
        super().__init__(message)
        self.param = param


def validate(payload: Any, embedding_model: Optional[str] = None) -> Any:
    """The grader model for a JSON object, every check that needs no sample done; raises GraderInvalid."""
    try:
        grader = parse_grader(payload)
    except ValidationError as e:
        problems = [(error_param(err), err["msg"]) for err in e.errors()]
        message = "; ".join(f"{p}: {m}" for p, m in problems[:5])
        raise GraderInvalid(problems[0][0], f"invalid grader / 评分器无效: {message}") from None
    try:
        check_syntax(grader)
    except TemplateError as e:
        raise GraderInvalid(e.field, str(e)) from None
    _check(grader, "grader", embedding_model)
    return grader


def _check(grader: Any, param: str, embedding_model: Optional[str]) -> None:
    if grader.type == "multi":
        try:
            formula.check_formula(grader.calculate_output, list(grader.graders))
        except formula.FormulaError as e:
            raise GraderInvalid(f"{param}.calculate_output", str(e)) from None
        for name, sub in grader.graders.items():
            _check(sub, f"{param}.graders.{name}", embedding_model)
    elif grader.type == "python":
        try:
            check_source(grader.source)
        except ValueError as e:
            raise GraderInvalid(f"{param}.source", str(e)) from None
    elif grader.type == "text_similarity" and grader.evaluation_metric == "cosine" and not embedding_model:
        raise GraderInvalid(
            f"{param}.evaluation_metric",
            "cosine needs a local embedding model and none is registered (register a sentence-embedding model "
            "folder, e.g. `weitiao models add ./bge-small-zh`) / cosine 需要本地嵌入模型，但尚未注册",
        )


def check_items(grader: Any, path: str) -> list[tuple[int, str]]:
    """(line, `item.x`) for every line of a JSONL data file that lacks a field the grader's templates read."""
    problems: list[tuple[int, str]] = []
    with open(path, encoding="utf-8-sig") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError:
                continue  # the data validator reports malformed lines; here only the templates matter
            problems += [(line_no, field) for field in missing_item_fields(grader, item)]
    return problems


def _empty_errors() -> dict[str, Any]:
    return {**{flag: False for flag in ERROR_FLAGS}, **{key: None for key in ERROR_DETAILS}}


class GraderRunner:
    """Grades samples with one grader; holds the python sandboxes and the embedding model between calls."""

    def __init__(
        self,
        grader: Any,
        judge: Judge = Judge(),
        embedding_model: Optional[str] = None,
        python_limits: SandboxLimits = SandboxLimits(),
        on_error: Optional[Callable[[str], None]] = None,
    ):
        self.grader = grader
        self.judge = judge
        self.embedding_model = embedding_model
        self.python_limits = python_limits
        self.on_error = on_error
        self._sandboxes: dict[str, PythonSandbox] = {}

    def __enter__(self) -> "GraderRunner":
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()

    def close(self) -> None:
        for box in self._sandboxes.values():
            box.close()
        self._sandboxes.clear()

    def grade(self, model_sample: str, item: Any) -> dict[str, Any]:
        """One sample's result: {reward, metadata, sub_rewards, model_grader_token_usage_per_model, weitiao}."""
        started = time.perf_counter()
        sample = sample_namespace(model_sample)
        errors = _empty_errors()
        usage: dict[str, dict[str, int]] = {}
        notes: dict[str, Any] = {}
        messages: list[str] = []
        grader = self.grader
        sampled_model: Optional[str] = None
        sub_rewards: dict[str, float] = {}
        if grader.type == "multi":
            for name, sub in grader.graders.items():
                sub_rewards[name], sub_model = self._score(sub, sample, item, errors, usage, notes.setdefault(name, {}), messages)
                sampled_model = sampled_model or sub_model
            try:
                reward = formula.evaluate(formula.parse(grader.calculate_output), sub_rewards)
            except formula.FormulaError as e:
                errors["formula_parse_error" if e.kind == "parse" else "invalid_variable_error" if e.kind == "variable" else "other_error"] = True
                messages.append(str(e))
                reward = 0.0
        else:
            reward, sampled_model = self._score(grader, sample, item, errors, usage, notes, messages)
        for message in messages:
            if self.on_error:
                self.on_error(f"grader {grader.name!r}: {message}")
        total_tokens = sum(u.get("total_tokens", 0) for u in usage.values()) if usage else None
        return {
            "reward": reward,
            "metadata": {
                "name": grader.name,
                "type": grader.type,
                "errors": errors,
                "execution_time": time.perf_counter() - started,
                "scores": dict(sub_rewards),
                "token_usage": total_tokens,
                "sampled_model_name": sampled_model,
            },
            "sub_rewards": dict(sub_rewards),
            "model_grader_token_usage_per_model": usage,
            "weitiao": {"notes": notes, "error_messages": messages},
        }

    def _score(self, grader: Any, sample: dict[str, Any], item: Any, errors: dict[str, Any], usage: dict[str, Any],
               notes: dict[str, Any], messages: list[str]) -> tuple[float, Optional[str]]:
        """One non-multi grader's score; every failure is 0 with its flag set and its message kept."""
        try:
            if grader.type == "string_check":
                return string_check(grader.operation, render(grader.input, sample, item), render(grader.reference, sample, item)), None
            if grader.type == "text_similarity":
                embed = None
                if grader.evaluation_metric == "cosine" and self.embedding_model:
                    from .embeddings import load_embedder

                    embed = load_embedder(self.embedding_model)
                score, found = similarity(grader.evaluation_metric, render(grader.input, sample, item), render(grader.reference, sample, item), embed)
                notes.update(found)
                return score, None
            if grader.type == "score_model":
                return self._judge(grader, sample, item, errors, usage, notes, messages)
            if grader.type == "python":
                return self._python(grader, sample, item, errors, notes, messages)
            raise ValueError(f"unknown grader type {grader.type!r}")
        except TemplateError as e:
            errors["invalid_variable_error" if e.kind == "missing_item" else "sample_parse_error"] = True
            messages.append(str(e))
        except Exception as e:  # noqa: BLE001 - a grader's failure is a 0 with a reason, never the caller's crash
            errors["other_error"] = True
            messages.append(f"{type(e).__name__}: {e}")
        return 0.0, None

    def _judge(self, grader: Any, sample: dict[str, Any], item: Any, errors: dict[str, Any], usage: dict[str, Any],
               notes: dict[str, Any], messages: list[str]) -> tuple[float, Optional[str]]:
        chat = []
        for message in grader.input:
            content = message.content
            parts = content if isinstance(content, list) else [content]
            text = "".join(render(p if isinstance(p, str) else p.text, sample, item) for p in parts)
            chat.append({"role": message.role, "content": text})
        own = grader.weitiao
        judge = Judge(
            base_url=(own.base_url if own and own.base_url else self.judge.base_url),
            api_key=(own.api_key if own and own.api_key else self.judge.api_key),
            timeout_seconds=self.judge.timeout_seconds,
        )
        low, high = grader.range or (0.0, 1.0)
        sampling = grader.sampling_params.model_dump() if grader.sampling_params else {}
        try:
            score, details = score_with_judge(judge, grader.model, chat, sampling, (low, high))
        except JudgeError as e:
            if e.usage:
                usage[e.model or grader.model] = e.usage
            flag = {"server": "model_grader_server_error", "refusal": "model_grader_refusal_error"}.get(e.kind, "model_grader_parse_error")
            errors[flag] = True
            if e.kind == "server":
                errors["model_grader_server_error_details"] = str(e)
            messages.append(str(e))
            return 0.0, e.model
        if details["usage"]:
            usage[details["model"]] = details["usage"]
        notes.update({"judge_answer": details["answer"], "parsed_from": details["parsed_from"]})
        return score, details["model"]

    def _python(self, grader: Any, sample: dict[str, Any], item: Any, errors: dict[str, Any], notes: dict[str, Any],
                messages: list[str]) -> tuple[float, Optional[str]]:
        box = self._sandboxes.get(grader.source)
        if box is None:
            box = self._sandboxes[grader.source] = PythonSandbox(grader.source, self.python_limits)
        outcome = box.grade(sample, item)
        notes["sandbox"] = {"walls": outcome.walls, "missing": outcome.missing}
        if outcome.stdout:
            notes["output"] = outcome.stdout[-1000:]
        if outcome.error is None:
            return outcome.score, None
        if outcome.kind in ("timeout", "cpu"):
            errors["unresponsive_reward_error"] = True
            errors["python_grader_runtime_error_details"] = outcome.error
        elif outcome.kind == "crash":
            errors["python_grader_server_error"] = True
            errors["python_grader_server_error_type"] = "crash"
            errors["python_grader_runtime_error_details"] = outcome.error
        else:
            errors["python_grader_runtime_error"] = True
            errors["python_grader_runtime_error_details"] = outcome.error
        messages.append(outcome.error)
        return 0.0, None


def run(request: Any) -> dict[str, Any]:
    """The engine's `grade` command: validate the grader; with samples, grade each (see protocol.GradeRequest)."""
    from ..protocol import EngineError, log

    try:
        grader = validate(request.grader, request.embedding_model)
    except GraderInvalid as e:
        raise EngineError("invalid_request", str(e), e.param) from None
    if request.items_file:
        problems = check_items(grader, request.items_file)
        if problems:
            listed = "; ".join(f"{Path(request.items_file).name}:{line}: {field}" for line, field in problems[:10])
            more = f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""
            first_line, first_field = problems[0]
            raise EngineError(
                "invalid_file",
                f"{len(problems)} line(s) lack a field the grader reads / {len(problems)} 行缺少评分器模板引用的字段: {listed}{more}",
                f"line {first_line}: {first_field}",
            )
    limits = SandboxLimits(**request.python_limits.model_dump())
    judge = Judge(**request.judge.model_dump())
    results = []
    with GraderRunner(grader, judge, request.embedding_model, limits, on_error=lambda m: log(m, "warning")) as runner:
        for sample in request.samples:
            results.append(runner.grade(sample.model_sample, sample.item))
    return {"grader": request.grader, "results": results}
