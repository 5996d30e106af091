"""Command `evaluate`: a model (+ adapter) on a chat JSONL file — label scoring or greedy generation.

Each line is `{"messages": [...]}` whose last message is the assistant's expected answer; the prompt is
every message before it, rendered with the model's chat template and generation prompt.
- With `labels`: every label is scored teacher-forced (its tokens plus the end-of-turn token) and the
  most likely one is the prediction; accuracy, per-class metrics and the confusion matrix follow.
- Without: greedy generation (left-padded, in token-budget batches) scored by eval_metrics (exact match,
  character F1, BLEU/chrF/ROUGE-L or JSON validity/fields, each with a bootstrap interval).
`prefix_messages` (few-shot turns) go before every prompt, after its system messages; `prompt_tokens` is the
mean prompt length a request then costs, `seconds_per_example` the wall time per request.
Either way `valid_loss` is the mean per-token loss on the expected answers (plus end-of-turn), the same
tokens training puts its loss on.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Optional

import torch
from pydantic import ValidationError

from . import protocol
from .chat_format import prompt_ids, without_empty_reasoning
from .eval_metrics import score_systems
from .loading import load_model, stop_token_ids
from .metrics import label_metrics
from .protocol import ChatExample, EngineError, EvaluateRequest
from .scoring import answer_token_ids, continuation_scores, label_token_ids, token_budget_batches

# Enough for a label or a short sentence; longer expected answers raise the limit to fit them.
MIN_NEW_TOKENS = 64
# Padded tokens (prompt + new tokens) per generation pass; the key/value cache grows with it.
GENERATION_TOKENS_PER_PASS = 4096


def run(request: EvaluateRequest) -> dict[str, Any]:
    examples = read_examples(request.data_file, request.max_examples)
    model, tokenizer = load_model(request.model, request.adapter)
    protocol.log(f"evaluating {len(examples)} examples / 评估 {len(examples)} 条样本")

    started = time.perf_counter()
    prefix = [m.model_dump() for m in request.prefix_messages]
    prompts = [with_prefix(messages[:-1], prefix) for messages in examples]
    expected = [messages[-1]["content"] for messages in examples]
    report = _Progress(len(examples))

    if request.labels:
        labels = list(request.labels)
        missing = sum(1 for e in expected if e not in labels)
        if missing:
            protocol.log(
                f"{missing} expected answers are not among the labels {labels} / {missing} 条答案不在标签集中",
                level="warning",
            )
        # One pass scores every label and, for answers outside the label set, the answer itself (for the loss).
        scores, answer_logp, answer_tokens = _score(model, tokenizer, prompts, expected, labels, request.batch_size, report)
        predicted = [labels[max(range(len(labels)), key=lambda j: row[j])] for row in scores]
        metrics: Optional[dict[str, Any]] = label_metrics(expected, predicted, labels)
    else:
        predicted = generate_greedy(model, tokenizer, prompts, request.batch_size, _max_new_tokens(tokenizer, expected), report)
        _, answer_logp, answer_tokens = _score(model, tokenizer, prompts, expected, [], request.batch_size, None)
        metrics = None
    valid_loss = -sum(answer_logp) / answer_tokens if answer_tokens else None
    generation = None
    if not request.labels:
        table = score_systems(expected, {"model": predicted}, seed=request.seed)
        generation = {"metrics": table["metrics"]["model"], "per_example": table["per_example"]["model"], "tokenizer": table["tokenizer"]}
    prompt_tokens = sum(len(prompt_ids(tokenizer, p)) for p in prompts) / len(prompts)

    elapsed = time.perf_counter() - started
    report(len(examples), force=True)
    return {
        "n": len(examples),
        "valid_loss": valid_loss,
        "label_metrics": metrics,
        "predictions": [{"index": i, "expected": e, "predicted": p} for i, (e, p) in enumerate(zip(expected, predicted))],
        "examples_per_second": len(examples) / elapsed if elapsed > 0 else 0.0,
        "seconds_per_example": elapsed / len(examples),
        "prompt_tokens": prompt_tokens,
        "generation_metrics": generation,
    }


def with_prefix(prompt: list[dict[str, str]], prefix: list[dict[str, str]]) -> list[dict[str, str]]:
    """The prompt with the few-shot turns after its leading system (or developer) messages."""
    head = 0
    while head < len(prompt) and prompt[head]["role"] in ("system", "developer"):
        head += 1
    return prompt[:head] + prefix + prompt[head:]


# --------------------------------------------------------------------------------------------------- data


def read_examples(path: str, max_examples: Optional[int] = None) -> list[list[dict[str, str]]]:
    """Reads a chat JSONL file; every problem is an `invalid_file` error naming `file:line: field`."""
    p = Path(path)
    if not p.is_file():
        raise EngineError("not_found", f"data file not found: {path} / 找不到数据文件：{path}", "data_file")
    examples: list[list[dict[str, str]]] = []
    with p.open(encoding="utf-8-sig") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
            except json.JSONDecodeError as e:
                raise EngineError("invalid_file", f"{path}:{line_no}: not valid JSON ({e.msg}) / 不是有效的 JSON") from e
            try:
                example = ChatExample.model_validate(raw)
            except ValidationError as e:
                err = e.errors()[0]
                field = _field(err["loc"])
                raise EngineError(
                    "invalid_file", f"{path}:{line_no}: {field}: {err['msg']} / 字段无效", field or None
                ) from e
            messages = example.messages
            if not messages or messages[-1].role != "assistant":
                raise EngineError(
                    "invalid_file",
                    f"{path}:{line_no}: messages: the last message must be the assistant's expected answer"
                    " / 最后一条消息必须是助手的标准答案",
                    "messages",
                )
            examples.append([{"role": m.role, "content": m.content} for m in messages])
            if max_examples is not None and len(examples) >= max_examples:
                break
    if not examples:
        raise EngineError("invalid_file", f"{path}: no examples / 文件中没有样本", "data_file")
    return examples


def _field(loc: tuple[Any, ...]) -> str:
    """('messages', 1, 'role') -> 'messages[1].role', the form the control plane prints."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


# ------------------------------------------------------------------------------------------------- passes


def _score(
    model: Any,
    tokenizer: Any,
    prompts: list[list[dict[str, str]]],
    expected: list[str],
    labels: list[str],
    batch_size: int,
    report: Any,
) -> tuple[list[list[float]], list[float], int]:
    """(label scores per example, log-likelihood of each expected answer, total expected-answer tokens)."""
    prompt_ids, label_conts = label_token_ids(tokenizer, prompts, labels)
    # Answers outside the label set (all of them when there is none) are scored as one more continuation.
    others = [i for i, answer in enumerate(expected) if answer not in labels]
    extra = {i: conts[0] for i, (_, conts) in zip(others, answer_token_ids(tokenizer, [prompts[i] for i in others], [[expected[i]] for i in others]))}
    conts = [label_conts[i] + ([extra[i]] if i in extra else []) for i in range(len(prompts))]
    scores = continuation_scores(model, prompt_ids, conts, batch_size, tokenizer.pad_token_id, report)
    k = len(labels)
    at = [k if i in extra else labels.index(answer) for i, answer in enumerate(expected)]
    tokens = sum(len(conts[i][at[i]]) for i in range(len(prompts)))
    return [row[:k] for row in scores], [row[j] for row, j in zip(scores, at)], tokens


def _max_new_tokens(tokenizer: Any, expected: list[str]) -> int:
    longest = max(len(tokenizer.encode(e, add_special_tokens=False)) for e in expected)
    return max(MIN_NEW_TOKENS, longest + 8)  # room for the end-of-turn token and a little more


@torch.no_grad()
def generate_greedy(
    model: Any,
    tokenizer: Any,
    prompts: list[list[dict[str, str]]],
    batch_size: int,
    max_new_tokens: int,
    report: Any = None,
) -> list[str]:
    """Greedy answers (stripped) for each prompt, in batches of similar length, left-padded."""
    from transformers import GenerationConfig

    stops = sorted(stop_token_ids(model, tokenizer))
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=stops,
        pad_token_id=tokenizer.pad_token_id,
    )
    encoded = [prompt_ids(tokenizer, p) for p in prompts]
    out = [""] * len(prompts)
    device = next(model.parameters()).device
    done = 0
    # A pass holds rows of similar length up to a padded-token budget (prompt plus room for the answer), as
    # label scoring does: a fixed row count would pad every short prompt to the longest one of its pass.
    lengths = [len(e) + max_new_tokens for e in encoded]
    for rows in token_budget_batches(lengths, batch_size, GENERATION_TOKENS_PER_PASS):
        width = max(len(encoded[i]) for i in rows)
        ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, i in enumerate(rows):
            ids[r, width - len(encoded[i]) :] = torch.tensor(encoded[i])
            mask[r, width - len(encoded[i]) :] = 1
        generated = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config)
        for r, i in enumerate(rows):
            new = generated[r, width:].tolist()
            for j, t in enumerate(new):
                if t in stops:
                    new = new[:j]
                    break
            out[i] = without_empty_reasoning(tokenizer.decode(new, skip_special_tokens=True)).strip()
        done += len(rows)
        if report is not None:
            report(done)
    return out


class _Progress:
    """Emits `progress` events (phase `evaluate`, in examples), at most two a second, never the same twice."""

    def __init__(self, total: int):
        self.total = total
        self.when = 0.0
        self.sent = -1

    def __call__(self, current: int, force: bool = False) -> None:
        current = min(current, self.total)
        now = time.monotonic()
        if current != self.sent and (force or now - self.when >= 0.5):
            self.when, self.sent = now, current
            protocol.progress("evaluate", current, self.total)
