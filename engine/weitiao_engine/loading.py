"""Loading a base model (+ LoRA adapter) for inference, and teacher-forced scoring shared by eval and training.

```python
model, tokenizer = load_model("/home/me/.weitiao/models/tiny", adapter_dir="/…/jobs/ftjob-1/model")
score_labels(model, tokenizer, [[{"role": "user", "content": "很好吃"}]], ["好评", "差评"], batch_size=32)
# -> ["好评"]
```
Scoring renders each prompt with the tokenizer's own chat template and generation prompt, then sums the
log-probabilities of the answer's tokens followed by the template's end-of-turn token (`<|im_end|>` for
ChatML, `<|eot_id|>` for Llama 3), which is exactly what LoRA training puts its loss on.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import torch

from .chat_format import Message, answer_ids, end_of_turn_ids
from .protocol import EngineError


# ------------------------------------------------------------------------------------------------ loading


def set_threads(threads: Optional[int] = None) -> int:
    """Uses `threads` or one torch thread per physical core this process may run on; returns the count."""
    if threads is None:
        import psutil

        physical = psutil.cpu_count(logical=False) or os.cpu_count() or 1
        allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else physical
        threads = max(1, min(physical, allowed))
    torch.set_num_threads(threads)
    return threads


def load_model(
    model_dir: Union[str, Path],
    adapter_dir: Union[str, Path, None] = None,
    dtype: torch.dtype = torch.float32,
    threads: Optional[int] = None,
) -> tuple[Any, Any]:
    """Loads a Hugging Face model directory (plus a PEFT LoRA adapter when given) in eval mode: (model, tokenizer)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # stderr is the engine's log; a redrawn bar only clutters it
    _require_dir(model_dir, "config.json", "model", "model directory", "模型目录")
    if adapter_dir is not None:
        _require_dir(adapter_dir, "adapter_config.json", "adapter", "adapter directory", "适配器目录")
    set_threads(threads)

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    except Exception as e:  # transformers raises OSError, ValueError… for a broken or partial directory
        raise EngineError("invalid_file", f"{model_dir}: cannot load the tokenizer: {e} / 无法加载分词器", "model") from e
    if tokenizer.pad_token_id is None:
        # Padding positions are masked out everywhere, so any id will do; eos is always there.
        tokenizer.pad_token = tokenizer.eos_token
    if not tokenizer.chat_template:
        raise EngineError("invalid_request", f"the tokenizer in {model_dir} has no chat template / 该模型的分词器没有对话模板", "model")
    try:
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype)
    except Exception as e:
        raise EngineError("invalid_file", f"{model_dir}: cannot load the model: {e} / 无法加载模型", "model") from e
    if adapter_dir is not None:
        from peft import PeftModel

        try:
            model = PeftModel.from_pretrained(model, str(adapter_dir))
        except Exception as e:  # e.g. an adapter trained on another base: shapes do not match
            raise EngineError("invalid_file", f"{adapter_dir}: cannot load the adapter: {e} / 无法加载适配器", "adapter") from e
    model.eval()
    return model, tokenizer


def _require_dir(path: Union[str, Path], marker: str, param: str, what: str, what_zh: str) -> None:
    p = Path(path)
    if not p.is_dir():
        raise EngineError("not_found", f"{what} not found: {p} / 找不到{what_zh}：{p}", param)
    if not (p / marker).is_file():
        raise EngineError("not_found", f"no {marker} in {what} {p} / {what_zh}中没有 {marker}：{p}", param)


# ----------------------------------------------------------------------------------------------- stopping


def stop_token_ids(model: Any, tokenizer: Any) -> set[int]:
    """Token ids that end a generated answer: the template's end-of-turn tokens, eos, and the model's own eos list."""
    ids = set(end_of_turn_ids(tokenizer))
    # Qwen's generation_config lists both <|endoftext|> and <|im_end|>; honour whatever the model ships.
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(gen_eos, int):
        ids.add(gen_eos)
    elif isinstance(gen_eos, (list, tuple)):
        ids.update(gen_eos)
    return ids


# ------------------------------------------------------------------------------------------------ scoring


@torch.no_grad()
def continuation_logprobs(
    model: Any,
    pairs: Sequence[tuple[Sequence[int], Sequence[int]]],
    batch_size: int,
    pad_id: int,
    on_batch: Optional[Callable[[int], None]] = None,
) -> list[float]:
    """Sum of log p(continuation | prefix), teacher-forced, for each (prefix ids, continuation ids) pair.

    Rows are sorted by length and left-padded so that every continuation ends at the same column; only
    the logits of the last columns are computed (`logits_to_keep`), which keeps memory small even with
    a 150k-token vocabulary. `on_batch(rows_done)` is called after each forward pass.
    """
    scores = [0.0] * len(pairs)
    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]) + len(pairs[i][1]))
    device = next(model.parameters()).device
    done = 0
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        seqs = [list(pairs[i][0]) + list(pairs[i][1]) for i in rows]
        width = max(len(s) for s in seqs)
        keep = max(len(pairs[i][1]) for i in rows)  # continuation columns to score
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, s in enumerate(seqs):
            ids[r, width - len(s) :] = torch.tensor(s, dtype=torch.long)
            mask[r, width - len(s) :] = 1
        # Left padding shifts the real tokens right; positions must still count from 0 at the first real token.
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = model(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            position_ids=positions.to(device),
            logits_to_keep=keep + 1,
            use_cache=False,
        ).logits.float()
        # logits[:, j] predicts the token at column width-keep-1+j+1; the last logit predicts past the end.
        logp = torch.log_softmax(logits[:, :-1, :], dim=-1)
        targets = ids[:, width - keep :].to(device)
        token_logp = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        for r, i in enumerate(rows):
            n = len(pairs[i][1])
            scores[i] = float(token_logp[r, keep - n :].sum()) if n else 0.0
        done += len(rows)
        if on_batch is not None:
            on_batch(done)
    return scores


def label_scores(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Sequence[Message]],
    labels: Sequence[str],
    batch_size: int,
    on_batch: Optional[Callable[[int], None]] = None,
) -> list[list[float]]:
    """For each prompt, the teacher-forced log-probability of each label's tokens plus end-of-turn.

    The label tokens are found as training finds them (chat_format.answer_ids: the conversation rendered
    with the answer, minus the prompt), so a label scores exactly what LoRA training taught.
    """
    pairs = []
    for messages in prompts:
        prompt, answers = answer_ids(tokenizer, messages, labels)
        pairs.extend((prompt, answer) for answer in answers)
    flat = continuation_logprobs(model, pairs, batch_size, tokenizer.pad_token_id, on_batch)
    k = len(labels)
    return [flat[i * k : (i + 1) * k] for i in range(len(prompts))]


def score_labels(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Sequence[Message]],
    labels: Sequence[str],
    batch_size: int,
) -> list[str]:
    """The most likely label for each prompt (argmax of `label_scores`; ties go to the first label)."""
    return [labels[max(range(len(labels)), key=lambda j: row[j])] for row in label_scores(model, tokenizer, prompts, labels, batch_size)]
