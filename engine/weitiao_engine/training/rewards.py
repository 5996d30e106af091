"""Rewards for reinforcement fine-tuning: a batch's sampled answers graded concurrently by the job's grader, so one
slow judge call or python grader does not serialise the step. Each worker thread has its own GraderRunner (its
own python sandbox processes); a grader that fails, hangs or breaks its limits scores 0 and is reported."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

from ..graders import GraderInvalid, GraderRunner, Judge, SandboxLimits, check_items, validate
from ..graders.response_format import mismatch


@dataclass
class Graded:
    """A batch's rewards: one per answer, each grader's (a multi grader's sub-graders, else the grader itself), failures."""

    rewards: list[float]
    per_grader: list[dict[str, float]]
    errors: int = 0
    malformed: int = 0  # answers that did not match the response_format schema (scored 0, not graded)
    messages: list[str] = field(default_factory=list)

    def mean_per_grader(self) -> dict[str, float]:
        names = {name for scores in self.per_grader for name in scores}
        return {name: sum(s.get(name, 0.0) for s in self.per_grader) / len(self.per_grader) for name in sorted(names)}


def load_grader(payload: Optional[dict[str, Any]], files: Sequence[tuple[str, str]]) -> Any:
    """The validated grader; every line of the data `files` ((path, param) pairs) must hold the `{{item.x}}` fields it
    reads. Raises GraderProblem naming the field (`reinforcement.grader.…`) or the file."""
    if payload is None:
        raise GraderProblem("reinforcement.grader", "method reinforcement needs a grader / 强化微调需要评分器")
    try:
        grader = validate(payload)
    except GraderInvalid as e:
        raise GraderProblem(f"reinforcement.{e.param}", str(e)) from None
    for path, param in files:
        problems = check_items(grader, path)
        if problems:
            listed = "; ".join(f"{path}:{line}: {name}" for line, name in problems[:5])
            raise GraderProblem(param, f"{len(problems)} line(s) lack a field the grader reads: {listed} / 数据行缺少评分器引用的字段")
    return grader


class GraderProblem(ValueError):
    """A grader or data file the run cannot use; `param` names the request field at fault."""

    def __init__(self, param: str, message: str):
        super().__init__(message)
        self.param = param


class RewardPool:
    """Grades answers with `threads` GraderRunners at once; close() ends their sandboxes. With `answer_schema` (the job's
    response_format), an answer that is not JSON matching it scores 0 and is not graded."""

    def __init__(self, grader: Any, judge: Judge, limits: SandboxLimits, threads: int, on_error: Callable[[str], None],
                 answer_schema: Optional[dict[str, Any]] = None):  # fmt: skip
        self.grader, self.judge, self.limits, self.on_error, self.answer_schema = grader, judge, limits, on_error, answer_schema
        self._local = threading.local()
        self._runners: list[GraderRunner] = []
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="grader")

    def _runner(self) -> GraderRunner:
        runner = getattr(self._local, "runner", None)
        if runner is None:
            runner = self._local.runner = GraderRunner(self.grader, self.judge, python_limits=self.limits)
            with self._lock:
                self._runners.append(runner)
        return runner

    def grade(self, answers: Sequence[str], items: Sequence[dict[str, Any]]) -> Graded:
        problems = [mismatch(a, self.answer_schema) if self.answer_schema is not None else None for a in answers]
        well_formed = [(a, item) for a, item, problem in zip(answers, items, problems) if problem is None]
        graded_ones = iter(self._pool.map(lambda pair: self._runner().grade(*pair), well_formed))
        results = [next(graded_ones) if problem is None else None for problem in problems]
        graded = Graded(rewards=[float(r["reward"]) if r else 0.0 for r in results], per_grader=[], malformed=len(answers) - len(well_formed))
        seen: set[str] = set()
        for r in results:
            if r is None:
                graded.per_grader.append(dict.fromkeys(self.names(), 0.0))
                continue
            graded.per_grader.append(dict(r["sub_rewards"]) or {self.grader.name: float(r["reward"])})
            messages = r["weitiao"]["error_messages"]
            if messages or any(v is True for v in r["metadata"]["errors"].values()):
                graded.errors += 1
            for m in messages:
                if m not in seen:  # one report per distinct failure and batch, not one per sample
                    seen.add(m)
                    graded.messages.append(m)
        for m in graded.messages:
            self.on_error(f"grader {self.grader.name!r} scored 0: {m[:500]} / 评分失败，记 0 分")
        return graded

    def names(self) -> list[str]:
        """The reward names of per_grader: a multi grader's sub-graders, else the grader's own."""
        return list(getattr(self.grader, "graders", None) or {}) or [self.grader.name]

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        for runner in self._runners:
            runner.close()
