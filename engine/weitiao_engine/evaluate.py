"""Command `evaluate`: a model (+ adapter) on a chat JSONL file — label scoring or greedy generation.

Each line is `{"messages": [...]}` whose last message is the assistant's expected answer; the prompt is
every message before it, rendered with the model's chat template and generation prompt.
- With `labels`: every label is scored teacher-forced (its tokens plus the end-of-turn token) and the
  most likely one is the prediction; accuracy, per-class metrics and the confusion matrix follow.
- Without: greedy generation (batched, left-padded) and an exact match of the stripped text.
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
from .loading import load_model, stop_token_ids
from .metrics import label_metrics
from .protocol import ChatExample, EngineError, EvaluateRequest
from .scoring import answer_token_ids, continuation_scores, label_token_ids

# Enough for a label or a short sentence; longer expected answers raise the limit to fit them.
MIN_NEW_TOKENS = 64


def run(request: EvaluateRequest) -> dict[str, Any]:
    examples = read_examples(request.data_file, request.max_examples)
    model, tokenizer = load_model(request.model, request.adapter)
    protocol.log(f"evaluating {len(examples)} examples / 评估 {len(examples)} 条样本")

    started = time.perf_counter()
    prompts = [messages[:-1] for messages in examples]
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

    elapsed = time.perf_counter() - started
    report(len(examples), force=True)
    return {
        "n": len(examples),
        "valid_loss": valid_loss,
        "label_metrics": metrics,
        "predictions": [{"index": i, "expected": e, "predicted": p} for i, (e, p) in enumerate(zip(expected, predicted))],
        "examples_per_second": len(examples) / elapsed if elapsed > 0 else 0.0,
    }


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
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    out = [""] * len(prompts)
    device = next(model.parameters()).device
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
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
        if report is not None:
            report(start + len(rows))
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
