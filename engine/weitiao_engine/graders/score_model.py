"""`score_model`: an LLM judge behind any OpenAI-compatible `/v1/chat/completions` (weitiao's own
`weitiao serve` included) reads the filled-in messages and answers with a score.

As OpenAI's judges, it is asked for `{"steps": [...], "result": <number>}` through `response_format`
(a JSON schema); servers that ignore response_format still work: the answer's JSON `result` (or `score`)
is read when there is one, else the first number in the text. A score outside `range` is a parse error.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any, Optional

RESULT_SCHEMA = {
    "type": "object",
    "properties": {
        "steps": {"type": "array", "items": {"type": "object", "properties": {"description": {"type": "string"}, "conclusion": {"type": "string"}}, "required": ["description", "conclusion"], "additionalProperties": False}},
        "result": {"type": "number"},
    },
    "required": ["steps", "result"],
    "additionalProperties": False,
}
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.S)


@dataclass
class Judge:
    """Where judge models are served: an OpenAI-compatible base URL (ending in /v1) and its key."""

    base_url: Optional[str] = None
    api_key: Optional[str] = None
    timeout_seconds: float = 120.0


class JudgeError(Exception):
    """kind: server (unreachable, HTTP error) | refusal | parse."""

    def __init__(self, kind: str, message: str, usage: Optional[dict[str, int]] = None, model: Optional[str] = None):
        super().__init__(message)
        self.kind = kind
        self.usage = usage
        self.model = model


def parse_score(text: str) -> tuple[float, str]:
    """(score, how it was found) from a judge's answer; raises ValueError when there is none."""
    stripped = text.strip()
    fenced = _FENCE.match(stripped)
    try:
        answer = json.loads(fenced.group(1) if fenced else stripped)
        if isinstance(answer, dict):
            for key in ("result", "score"):
                if isinstance(answer.get(key), (int, float)) and not isinstance(answer.get(key), bool):
                    return float(answer[key]), f"json.{key}"
        elif isinstance(answer, (int, float)) and not isinstance(answer, bool):
            return float(answer), "json"
    except json.JSONDecodeError:
        pass
    m = _NUMBER.search(stripped)
    if m:
        return float(m.group(0)), "text"
    raise ValueError(f"the judge's answer holds no score: {stripped[:200]!r}")


def ask_judge(judge: Judge, model: str, messages: list[dict[str, str]], sampling: dict[str, Any]) -> dict[str, Any]:
    """The parsed chat completion; raises JudgeError("server"/"refusal")."""
    if not judge.base_url:
        raise JudgeError(
            "server",
            "no endpoint for the judge model: set the grader's weitiao.base_url, or WEITIAO_JUDGE_BASE_URL, or run it through `weitiao serve` / 未配置评审模型的服务地址",
        )
    body: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "response_format": {"type": "json_schema", "json_schema": {"name": "grader_score", "schema": RESULT_SCHEMA, "strict": True}},
    }
    for key in ("temperature", "top_p", "seed"):
        if sampling.get(key) is not None:
            body[key] = sampling[key]
    if sampling.get("max_completions_tokens") is not None:
        body["max_completion_tokens"] = sampling["max_completions_tokens"]
    if sampling.get("reasoning_effort") is not None:
        body["reasoning_effort"] = sampling["reasoning_effort"]
    headers = {"Content-Type": "application/json"}
    if judge.api_key:
        headers["Authorization"] = f"Bearer {judge.api_key}"
    url = judge.base_url.rstrip("/") + "/chat/completions"
    request = urllib.request.Request(url, data=json.dumps(body, ensure_ascii=False).encode("utf-8"), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=judge.timeout_seconds) as response:
            completion = json.loads(response.read().decode("utf-8"))
    except urllib.error.HTTPError as e:
        detail = e.read().decode("utf-8", "replace")[:500]
        raise JudgeError("server", f"judge {url} answered HTTP {e.code}: {detail} / 评审模型服务返回错误 {e.code}") from None
    except (urllib.error.URLError, OSError, json.JSONDecodeError) as e:
        raise JudgeError("server", f"judge {url} cannot be reached: {e} / 无法连接评审模型服务") from None
    return completion


def score_with_judge(
    judge: Judge, model: str, messages: list[dict[str, str]], sampling: dict[str, Any], score_range: tuple[float, float]
) -> tuple[float, dict[str, Any]]:
    """(score, details) where details has usage, model, answer and how the score was parsed; raises JudgeError."""
    completion = ask_judge(judge, model, messages, sampling)
    usage = completion.get("usage") or None
    served = completion.get("model") or model
    try:
        message = completion["choices"][0]["message"]
    except (KeyError, IndexError, TypeError):
        raise JudgeError("server", "the judge's answer has no choices[0].message / 评审模型返回格式错误", usage, served) from None
    if message.get("refusal"):
        raise JudgeError("refusal", f"the judge refused: {message['refusal']} / 评审模型拒绝评分", usage, served)
    text = message.get("content") or ""
    try:
        score, how = parse_score(text)
    except ValueError as e:
        raise JudgeError("parse", f"{e} / 无法从评审模型的回答中读取分数", usage, served) from None
    low, high = score_range
    if not low <= score <= high:
        raise JudgeError("parse", f"the judge's score {score:g} is outside range [{low:g}, {high:g}] / 评审分数超出范围", usage, served)
    return score, {"usage": usage, "model": served, "answer": text[:2000], "parsed_from": how}
