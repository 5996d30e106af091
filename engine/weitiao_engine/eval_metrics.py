"""Metrics for generated answers, each with a bootstrap confidence interval, and paired significance tests.

```python
table = score_systems(["今天天气很好"], {"base": ["天气不错"], "tuned": ["今天天气很好"]}, seed=0)
table["metrics"]["tuned"]["chrf"]   # {"value": 100.0, "ci_low": 100.0, "ci_high": 100.0, "scale": 100, ...}
table["comparisons"][0]             # tuned vs base per metric: delta, its interval, p_value
```

The data choose the metrics: exact match and character F1 always; when every expected answer is a JSON
object, JSON validity and per-field match; otherwise BLEU, chrF (sacrebleu; BLEU with its `zh` tokenizer
when the references hold CJK text) and ROUGE-L (by character for CJK, graders/similarity.py's own
function). Any grader is a metric too, through the same GraderRunner reinforcement training uses.

Every metric is kept as per-example sufficient statistics plus a function from their sum to the score, so a
corpus metric (BLEU, chrF: not a mean of sentence scores) resamples exactly as sacrebleu's significance
module does. Intervals: percentile bootstrap (seeded). Comparisons: paired approximate randomisation for the
p-value (two-sided, Noreen's +1), paired bootstrap for the interval of the difference — same resamples for
both systems, so a shared hard example does not widen the interval.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import numpy as np

from .graders.similarity import has_cjk, rouge_l, tokenize

METRICS = ("exact_match", "char_f1", "bleu", "chrf", "rouge_l", "json_valid", "json_fields")
RESAMPLES = 1000  # enough for a stable 95% percentile interval; sacrebleu's default too
CONFIDENCE = 0.95


@dataclass
class Metric:
    """One metric on one system: per-example statistics (n x k) and how a summed sample becomes the score."""

    name: str
    stats: np.ndarray
    compute: Callable[[np.ndarray, int], float]
    scale: int = 1  # 100 for sacrebleu's BLEU and chrF, which report percentages

    def score(self) -> float:
        return self.compute(self.stats.sum(0), len(self.stats))

    def per_example(self) -> Optional[list[float]]:
        """Each example's own score when the metric is a mean (all but the corpus metrics)."""
        return self.stats[:, 0].tolist() if self.compute is _mean else None


def _mean(total: np.ndarray, n: int) -> float:
    return float(total[0] / n) if n else 0.0


def _mean_metric(name: str, scores: Sequence[float]) -> Metric:
    return Metric(name, np.asarray(scores, dtype=np.float64).reshape(-1, 1), _mean)


# --------------------------------------------------------------------------------------- per-example scores


def exact_match(predicted: str, expected: str) -> float:
    return float(predicted.strip() == expected.strip())


def char_f1(predicted: str, expected: str) -> float:
    """F1 of the two multisets of characters (whitespace left out): partial credit that needs no word splitter."""
    from collections import Counter

    p, e = Counter(c for c in predicted if not c.isspace()), Counter(c for c in expected if not c.isspace())
    overlap = sum((p & e).values())
    if not p and not e:
        return 1.0
    if overlap == 0:
        return 0.0
    precision, recall = overlap / sum(p.values()), overlap / sum(e.values())
    return 2 * precision * recall / (precision + recall)


def rouge_l_score(predicted: str, expected: str, by_character: bool) -> float:
    """ROUGE-L F1; by character for CJK text (graders/similarity.py's tokenizer and LCS)."""
    return rouge_l(tokenize(predicted, by_character), tokenize(expected, by_character))


def parse_json(text: str) -> tuple[bool, Any]:
    """(parsed?, value); a ```json fence around the answer is allowed, as models often add one."""
    body = text.strip()
    if body.startswith("```"):
        body = body.split("\n", 1)[1] if "\n" in body else ""
        body = body.rsplit("```", 1)[0]
    try:
        return True, json.loads(body)
    except (json.JSONDecodeError, ValueError):
        return False, None


def json_fields(predicted: str, expected: str) -> float:
    """Share of the expected object's top-level fields the answer has with an equal value."""
    _, want = parse_json(expected)
    ok, got = parse_json(predicted)
    if not isinstance(want, dict) or not want:
        return float(ok and got == want)
    if not ok or not isinstance(got, dict):
        return 0.0
    return sum(1 for k, v in want.items() if k in got and got[k] == v) / len(want)


# ------------------------------------------------------------------------------------------------ choosing


def choose_metrics(expected: Sequence[str]) -> list[str]:
    """The metrics the expected answers call for (see the module's docstring)."""
    names = ["exact_match", "char_f1"]
    if expected and all(isinstance(parse_json(e)[1], dict) for e in expected):
        return names + ["json_valid", "json_fields"]
    return names + ["bleu", "chrf", "rouge_l"]


def _sacrebleu_metric(name: str, predicted: Sequence[str], expected: Sequence[str], cjk: bool) -> Metric:
    from sacrebleu.metrics import BLEU, CHRF

    scorer = BLEU(tokenize="zh" if cjk else "13a") if name == "bleu" else CHRF()
    stats = np.asarray(scorer._extract_corpus_statistics(list(predicted), [list(expected)]), dtype=np.float64)
    if stats.ndim == 1:
        stats = stats.reshape(len(predicted), -1)
    return Metric(name, stats, lambda total, _n: float(scorer._compute_score_from_stats(total.tolist()).score), 100)


def build_metric(name: str, predicted: Sequence[str], expected: Sequence[str], cjk: bool) -> Metric:
    if name in ("bleu", "chrf"):
        return _sacrebleu_metric(name, predicted, expected, cjk)
    pairs = list(zip(predicted, expected))
    if name == "exact_match":
        return _mean_metric(name, [exact_match(p, e) for p, e in pairs])
    if name == "char_f1":
        return _mean_metric(name, [char_f1(p, e) for p, e in pairs])
    if name == "rouge_l":
        return _mean_metric(name, [rouge_l_score(p, e, cjk) for p, e in pairs])
    if name == "json_valid":
        return _mean_metric(name, [float(parse_json(p)[0]) for p in predicted])
    if name == "json_fields":
        return _mean_metric(name, [json_fields(p, e) for p, e in pairs])
    raise ValueError(f"unknown metric {name!r}")


def grader_metric(grader: Any, predicted: Sequence[str], items: Sequence[dict[str, Any]], runner_factory: Callable[[Any], Any]) -> Metric:
    """A grader's mean reward: the same GraderRunner training's rewards use."""
    with runner_factory(grader) as runner:
        rewards = [float(runner.grade(p, item)["reward"]) for p, item in zip(predicted, items)]
    return _mean_metric(f"grader:{grader.name}", rewards)


# ------------------------------------------------------------------------------------------------ intervals


def bootstrap_interval(metric: Metric, resamples: int = RESAMPLES, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the metric (examples resampled with replacement)."""
    n = len(metric.stats)
    if n == 0:
        return 0.0, 0.0
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(resamples, n))
    scores = np.array([metric.compute(metric.stats[row].sum(0), n) for row in idx])
    tail = (1 - CONFIDENCE) / 2 * 100
    low, high = np.percentile(scores, [tail, 100 - tail])
    return float(low), float(high)


def paired_test(a: Metric, b: Metric, resamples: int = RESAMPLES, seed: int = 0) -> dict[str, float]:
    """b minus a on the same examples: the difference, its paired-bootstrap interval, and the two-sided
    approximate-randomisation p-value (each example's two answers swapped at random)."""
    n = len(a.stats)
    if len(b.stats) != n:
        raise ValueError("a paired test needs both systems scored on the same examples")
    delta = b.score() - a.score()
    if n == 0:
        return {"delta": 0.0, "ci_low": 0.0, "ci_high": 0.0, "p_value": 1.0}
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(resamples, n))
    diffs = np.array([b.compute(b.stats[row].sum(0), n) - a.compute(a.stats[row].sum(0), n) for row in idx])
    tail = (1 - CONFIDENCE) / 2 * 100
    low, high = np.percentile(diffs, [tail, 100 - tail])
    swap = rng.integers(0, 2, size=(resamples, n)).astype(bool)
    beyond = 0
    for row in swap:
        sa = np.where(row[:, None], b.stats, a.stats).sum(0)
        sb = np.where(row[:, None], a.stats, b.stats).sum(0)
        # >= (less a rounding hair): a system against itself must get p = 1, not p = 1 / (R + 1).
        if abs(b.compute(sb, n) - a.compute(sa, n)) >= abs(delta) - 1e-12:
            beyond += 1
    return {"delta": delta, "ci_low": float(low), "ci_high": float(high), "p_value": (beyond + 1) / (resamples + 1)}


# ------------------------------------------------------------------------------------------------- systems


def score_systems(
    expected: Sequence[str],
    systems: dict[str, Sequence[str]],
    graders: Sequence[Any] = (),
    items: Optional[Sequence[dict[str, Any]]] = None,
    runner_factory: Optional[Callable[[Any], Any]] = None,
    resamples: int = RESAMPLES,
    seed: int = 0,
    compare_to: Optional[str] = None,
    metrics: Optional[Sequence[str]] = None,
) -> dict[str, Any]:
    """Every chosen metric (and grader) for every system with its interval; with two or more systems, each
    system other than `compare_to` (default: the last one, e.g. the fine-tune) is tested against it."""
    for name, predicted in systems.items():
        if len(predicted) != len(expected):
            raise ValueError(f"system {name!r} has {len(predicted)} answers for {len(expected)} examples")
    names = list(metrics) if metrics is not None else choose_metrics(expected)
    unknown = [m for m in names if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; known: {list(METRICS)}")
    cjk = has_cjk(*expected)
    items = list(items) if items is not None else [{"reference_answer": e} for e in expected]
    if graders and runner_factory is None:
        from .graders import GraderRunner

        runner_factory = GraderRunner
    built: dict[str, dict[str, Metric]] = {}
    for system, predicted in systems.items():
        metrics = {m: build_metric(m, predicted, expected, cjk) for m in names}
        for grader in graders:
            g = grader_metric(grader, predicted, items, runner_factory)
            metrics[g.name] = g
        built[system] = metrics
    table: dict[str, Any] = {"n": len(expected), "metrics": {}, "per_example": {}, "comparisons": [], "resamples": resamples, "seed": seed,
                             "confidence": CONFIDENCE, "tokenizer": "zh" if cjk else "13a"}
    for system, metrics in built.items():
        table["metrics"][system] = {}
        table["per_example"][system] = {}
        for name, metric in metrics.items():
            low, high = bootstrap_interval(metric, resamples, seed)
            table["metrics"][system][name] = {"value": metric.score(), "ci_low": low, "ci_high": high, "scale": metric.scale}
            per = metric.per_example()
            if per is not None:
                table["per_example"][system][name] = per
    if len(built) >= 2:
        target = compare_to if compare_to is not None else list(built)[-1]
        if target not in built:
            raise ValueError(f"compare_to {target!r} is not one of the systems {list(built)}")
        for system in built:
            if system == target:
                continue
            for name in built[target]:
                test = paired_test(built[system][name], built[target][name], resamples, seed)
                table["comparisons"].append({"system": target, "baseline": system, "metric": name, **test})
    return table


def run(request: Any) -> dict[str, Any]:
    """The engine's `score-answers` command (protocol.ScoreAnswersRequest): no model, no torch."""
    from .graders import GraderInvalid, GraderRunner, Judge, SandboxLimits, validate
    from .protocol import EngineError, log

    graders = []
    for i, payload in enumerate(request.graders):
        try:
            graders.append(validate(payload))
        except GraderInvalid as e:
            raise EngineError("invalid_request", str(e), f"graders[{i}].{e.param.removeprefix('grader').lstrip('.')}".rstrip(".")) from None
    names = [g.name for g in graders]
    if len(set(names)) != len(names):
        raise EngineError("invalid_request", "graders need distinct names / 评分器名称不能重复", "graders")
    if request.items is not None and len(request.items) != len(request.expected):
        raise EngineError("invalid_request", f"items has {len(request.items)} rows for {len(request.expected)} answers / items 行数与答案数不一致", "items")
    judge, limits = Judge(**request.judge.model_dump()), SandboxLimits(**request.python_limits.model_dump())

    def runner(grader: Any) -> Any:
        return GraderRunner(grader, judge, None, limits, on_error=lambda m: log(m, "warning"))

    try:
        return score_systems(request.expected, request.systems, graders, request.items, runner, request.resamples, request.seed, request.compare_to, request.metrics)
    except ValueError as e:
        raise EngineError("invalid_request", str(e), "metrics" if "metrics" in str(e) else "systems") from None
