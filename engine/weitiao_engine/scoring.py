"""Label scoring: the teacher-forced log-probability of fixed answers after each prompt, many prompts per pass.

```python
model, tokenizer = load_model("/home/me/.weitiao/models/tiny", adapter_dir="/…/jobs/ftjob-1/model")
score_labels(model, tokenizer, [[{"role": "user", "content": "很好吃"}]], ["好评", "差评"], batch_size=32)
# -> ["好评"]
```
An answer scores its tokens followed by the template's end-of-turn token (`<|im_end|>` for ChatML,
`<|eot_id|>` for Llama 3), exactly the tokens LoRA training puts its loss on (chat_format).

Speed: the prompts are rendered and tokenized in one batched tokenizer call, and one forward pass scores
every answer of every prompt in a batch. Each row is a prompt (left-padded, so all prompts end in the same
column) followed by all its answers' tokens side by side; a 4-D attention mask lets each answer's tokens
see the prompt and their own earlier tokens only, so the prompt is computed once, not once per answer.
The LM head runs only from the prompt's last column on. When the template renders an assistant turn the
same way after any prompt (ChatML, Llama 3: checked on the first and last prompt), the labels' tokens are
found once for the whole call; otherwise per prompt.
"""

from __future__ import annotations

import copy
from typing import Any, Callable, Optional, Sequence

import torch

from .chat_format import Message, answers_for_prompts, render


def prompt_token_ids(tokenizer: Any, prompts: Sequence[Sequence[Message]]) -> list[list[int]]:
    """Each prompt rendered with the generation prompt, all tokenized in one call."""
    texts = [render(tokenizer, p, add_generation_prompt=True) for p in prompts]
    return tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []


def answer_token_ids(
    tokenizer: Any, prompts: Sequence[Sequence[Message]], answers: Sequence[Sequence[str]]
) -> list[tuple[list[int], list[list[int]]]]:
    """For each prompt, its ids and the tokens of each of its own answers (content + end-of-turn token),
    found as training finds them (chat_format.answers_for_prompts), one prompt at a time."""
    return [answers_for_prompts(tokenizer, [p], list(a))[0] for p, a in zip(prompts, answers)]


def label_token_ids(
    tokenizer: Any, prompts: Sequence[Sequence[Message]], labels: Sequence[str]
) -> tuple[list[list[int]], list[list[list[int]]]]:
    """(ids of each prompt, the labels' tokens after each prompt), with as few renders as the template allows."""
    if not prompts:
        return [], []
    if not labels:
        return prompt_token_ids(tokenizer, prompts), [[] for _ in prompts]
    probes = [prompts[0], prompts[-1]]
    found = answers_for_prompts(tokenizer, probes, labels)
    suffixes = [_answer_suffixes(tokenizer, p, labels) for p in probes]
    # The same text after both probes' generation prompts, and the same tokens: then every prompt gets these
    # tokens too (the generation prompt ends in the same text, so tokenization splits there the same way).
    if suffixes[0] is not None and suffixes[0] == suffixes[1] and found[0][1] == found[1][1]:
        shared = found[0][1]
        return prompt_token_ids(tokenizer, prompts), [shared] * len(prompts)
    pairs = answers_for_prompts(tokenizer, prompts, labels)
    return [p for p, _ in pairs], [c for _, c in pairs]


def _answer_suffixes(tokenizer: Any, messages: Sequence[Message], answers: Sequence[str]) -> Optional[list[str]]:
    """The text each answer's turn adds after the rendered prompt, or None if the rendering is not incremental."""
    prompt = render(tokenizer, messages, add_generation_prompt=True)
    out = []
    for a in answers:
        full = render(tokenizer, list(messages) + [{"role": "assistant", "content": a}])
        if not full.startswith(prompt):
            return None
        out.append(full[len(prompt) :])
    return out


@torch.no_grad()
def continuation_scores(
    model: Any,
    prompts: Sequence[Sequence[int]],
    continuations: Sequence[Sequence[Sequence[int]]],
    batch_size: int,
    pad_id: int,
    on_batch: Optional[Callable[[int], None]] = None,
) -> list[list[float]]:
    """Sum of log p(continuation | prompt), teacher-forced, for every continuation of every prompt.

    One forward pass per batch of up to `batch_size` prompts of similar length (and SCORING_TOKENS_PER_PASS
    padded tokens, `token_budget_batches`), each prompt followed by all of its continuations
    in a tree-shaped attention mask (see the module's docstring). The tokens every prompt starts with (a
    shared system prompt, the template's header) run once, and each batch attends to their cached keys
    and values. `on_batch(prompts_done)` follows each pass.
    """
    scores: list[list[float]] = [[0.0] * len(c) for c in continuations]
    if not prompts:
        return scores
    device = next(model.parameters()).device
    shared, prefix = _shared_prefix(model, prompts, device)
    # A row's length: what its prompt adds after the shared prefix, then its continuations but their last tokens.
    lengths = [len(p) - shared + sum(max(len(c) - 1, 0) for c in conts) for p, conts in zip(prompts, continuations)]
    done = 0
    for rows in token_budget_batches(lengths, batch_size, SCORING_TOKENS_PER_PASS):
        own = [prompts[i][shared:] for i in rows]  # what each prompt adds after the shared prefix
        width = max(len(p) for p in own)  # every prompt ends at column width - 1
        # A continuation's last token is only predicted, never fed: the branch of each row holds the rest.
        fed = [[list(c[:-1]) for c in continuations[i]] for i in rows]
        total = width + max(sum(len(f) for f in row) for row in fed)
        # Built as lists, one tensor each at the end: per-row tensors cost more than the tiny model's forward.
        ids, segment, positions = [], [], []  # segment: -1 padding, 0 prompt, j + 1 continuation j
        picks_row, picks_col, picks_target, slots = [], [], [], []  # what each label token is predicted from
        for r, (i, p) in enumerate(zip(rows, own)):
            n = len(p)
            tokens, segs, pos = list(p), [0] * n, list(range(shared, shared + n))
            for j, (cont, f) in enumerate(zip(continuations[i], fed[r])):
                column = width + len(tokens) - n
                for k, target in enumerate(cont):  # token k is predicted by the prompt's last column, then by token k - 1
                    picks_row.append(r)
                    picks_col.append(width - 1 if k == 0 else column + k - 1)
                    picks_target.append(target)
                    slots.append((i, j))
                tokens += f
                segs += [j + 1] * len(f)
                pos += range(shared + n, shared + n + len(f))
            left, right = width - n, total - width + n - len(tokens)
            ids.append([pad_id] * left + tokens + [pad_id] * right)
            segment.append([-1] * left + segs + [-1] * right)
            positions.append([0] * left + pos + [0] * right)
        ids, segment, positions = (torch.tensor(t, dtype=torch.long) for t in (ids, segment, positions))
        # Causal, and a key is seen only if it is a prompt token or in the query's own continuation; the shared
        # prefix is seen by every query (so no row of the softmax is empty, padding rows included).
        key, query = segment[:, None, :], segment[:, :, None]
        mask = torch.ones(total, total, dtype=torch.bool).tril() & (key >= 0) & ((key == 0) | (key == query))
        if shared:
            mask = torch.cat([torch.ones(len(rows), total, shared, dtype=torch.bool), mask], dim=-1)
        else:
            mask |= torch.eye(total, dtype=torch.bool)
        past = None
        if prefix is not None:
            past = copy.deepcopy(prefix)
            past.batch_repeat_interleave(len(rows))
        logits = model(
            input_ids=ids.to(device),
            attention_mask=mask[:, None].to(device),
            position_ids=positions.to(device),
            past_key_values=past,
            use_cache=past is not None,
            logits_to_keep=torch.arange(width - 1, total, device=device),
        ).logits
        if slots:
            r_idx = torch.tensor(picks_row, device=device)
            c_idx = torch.tensor(picks_col, device=device) - (width - 1)
            targets = torch.tensor(picks_target, device=device)
            logp = torch.log_softmax(logits[r_idx, c_idx].float(), dim=-1).gather(-1, targets[:, None])[:, 0].tolist()
            for (i, j), value in zip(slots, logp):
                scores[i][j] += value
        done += len(rows)
        if on_batch is not None:
            on_batch(done)
    return scores


# Padded tokens per forward pass: rows of similar length share a pass until this many (vLLM's max_num_batched_tokens
# in spirit). A fixed count of rows would pad every row of a pass to its longest: on waimai reviews, whose lengths
# have a long tail, 32 rows a pass computed 1.9x the real tokens; this budget, ~1.2x.
SCORING_TOKENS_PER_PASS = 1024


def token_budget_batches(lengths: Sequence[int], max_rows: int, max_tokens: int) -> list[list[int]]:
    """Indexes by increasing length, cut into passes of at most `max_rows` rows whose padded size (rows x longest)
    stays within `max_tokens`; a row longer than that gets a pass of its own."""
    passes: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        current = passes[-1] if passes else None
        if current is None or len(current) >= max_rows or (len(current) + 1) * lengths[i] > max_tokens:
            passes.append([i])
        else:
            current.append(i)
    return passes


def _shared_prefix(model: Any, prompts: Sequence[Sequence[int]], device: Any) -> tuple[int, Any]:
    """(length, key/value cache) of the tokens all prompts start with; at least each prompt's last token is left
    out, since its output predicts the first answer token. (0, None) when nothing is shared."""
    first, limit = prompts[0], min(len(p) for p in prompts) - 1
    n = 0
    while n < limit and all(p[n] == first[n] for p in prompts):
        n += 1
    if n == 0:
        return 0, None
    out = model(input_ids=torch.tensor([list(first[:n])], device=device), use_cache=True, logits_to_keep=1)
    return n, out.past_key_values


def label_scores(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Sequence[Message]],
    labels: Sequence[str],
    batch_size: int,
    on_batch: Optional[Callable[[int], None]] = None,
) -> list[list[float]]:
    """For each prompt, the teacher-forced log-probability of each label's tokens plus end-of-turn."""
    prompt_ids, conts = label_token_ids(tokenizer, prompts, labels)
    return continuation_scores(model, prompt_ids, conts, batch_size, tokenizer.pad_token_id, on_batch)


def score_labels(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Sequence[Message]],
    labels: Sequence[str],
    batch_size: int,
) -> list[str]:
    """The most likely label for each prompt (argmax of `label_scores`; ties go to the first label)."""
    return [labels[max(range(len(labels)), key=lambda j: row[j])] for row in label_scores(model, tokenizer, prompts, labels, batch_size)]
