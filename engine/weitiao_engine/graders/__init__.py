"""Graders in OpenAI's JSON shapes (string_check, text_similarity, score_model, python, multi): one
implementation for reinforcement fine-tuning's rewards and evaluation's testing criteria.

    from weitiao_engine.graders import GraderRunner, validate
    with GraderRunner(validate(grader_json)) as runner:
        result = runner.grade(answer_text, item)   # OpenAI's graders/run response: result["reward"], …

The engine command `grade` (run.run) validates a grader and grades a list of {model_sample, item}.
"""

from .python_sandbox import SandboxLimits
from .run import GraderInvalid, GraderRunner, check_items, run, validate
from .score_model import Judge

__all__ = ["GraderInvalid", "GraderRunner", "Judge", "SandboxLimits", "check_items", "run", "validate"]
