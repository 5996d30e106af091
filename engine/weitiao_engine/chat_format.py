"""Chat examples -> token ids and loss labels, with the base model's own chat template.

Training sees exactly what `tokenizer.apply_chat_template(messages, tokenize=True)` produces. Labels are
-100 everywhere except the tokens the model must write: each assistant turn's content and its
end-of-turn token (`<|im_end|>`, `<|eot_id|>`…), unless the turn has `weight: 0`.

The assistant spans come from prefix differences: the tokens of `messages[:i]` rendered with the
generation prompt must be a prefix of the tokens of `messages[:i+1]`, and what follows is turn i.
Templates that rewrite earlier turns break that property. One rewrite is harmless: dropping a leading part
of a past answer that holds none of its text (Qwen3 writes an empty `<think>\n\n</think>\n\n` before the
last answer only); the turn is then trained as the full conversation writes it. Anything else (dropped
reasoning, added text) is refused rather than trained on misaligned labels.

Some templates close an assistant turn with no token of its own: in GLM-4's, the next role tag
(`<|user|>`) ends it, and nothing follows the last turn. There the end marker is the special token the
template writes next when a user turn follows (found once per tokenizer by rendering a probe): it is
trained where the conversation has it and appended after a trained last turn (as GLM-4's own fine-tuning
script appends `<|user|>`), and generation stops at it. That appended token is the one difference from
`apply_chat_template`'s ids.

    >>> example = tokenize_example(tokenizer, [{"role": "user", "content": "很好吃"}, {"role": "assistant", "content": "好评"}])
    >>> [tokenizer.decode(t) for t, l in zip(example.input_ids, example.labels) if l != IGNORE_INDEX]
    ['好评', '<|im_end|>']
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Optional, Sequence

from .protocol import EngineError

IGNORE_INDEX = -100  # PyTorch's cross-entropy ignore_index

# Tokens that close an assistant turn in common templates; the tokenizer's eos is added to these.
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>", "</s>")

Message = Mapping[str, Any]


@dataclass
class TokenizedExample:
    input_ids: list[int]
    labels: list[int]  # same length as input_ids; IGNORE_INDEX where there is no loss
    truncated: bool = False

    @property
    def n_trained(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


def as_dicts(messages: Iterable[Any]) -> list[dict[str, Any]]:
    """Messages as plain dicts (pydantic ChatMessage or dict), without the `weight` key templates do not expect."""
    out = []
    for m in messages:
        d = m.model_dump(exclude_none=True) if hasattr(m, "model_dump") else dict(m)
        d.pop("weight", None)
        out.append(d)
    return out


# Qwen3's template opens the last answer with a reasoning block, empty for an answer without reasoning, and so a
# model tuned on plain answers writes it before each reply. Scaffolding, not text the user asked for.
EMPTY_REASONING = "<think>\n\n</think>\n\n"


def without_empty_reasoning(text: str) -> str:
    """A generated answer without the empty reasoning block it may open with (a non-empty one stays)."""
    return text[len(EMPTY_REASONING) :] if text.startswith(EMPTY_REASONING) else text


def end_of_turn_ids(tokenizer) -> set[int]:
    """Ids of the tokens that can end an assistant turn for this tokenizer."""
    ids, next_turn = _turn_ends(tokenizer)
    return ids if next_turn is None else ids | {next_turn}


def _turn_ends(tokenizer) -> tuple[set[int], Optional[int]]:
    """(end-of-turn ids, the special token that starts the next user turn if the template writes no end-of-turn
    token after an assistant turn, else None). Found once per tokenizer: reading a 150k vocabulary takes ~50 ms."""
    template = getattr(tokenizer, "chat_template", None)
    try:
        cached_template, ids, next_turn = _TURN_ENDS[tokenizer]
        if cached_template == template:
            return set(ids), next_turn
    except (KeyError, TypeError):  # not seen yet, or not weak-referenceable
        pass
    ids, next_turn = _find_turn_ends(tokenizer)
    try:
        _TURN_ENDS[tokenizer] = (template, frozenset(ids), next_turn)
    except TypeError:
        pass
    return ids, next_turn


_TURN_ENDS: "weakref.WeakKeyDictionary[Any, tuple[Any, frozenset[int], Optional[int]]]" = weakref.WeakKeyDictionary()


def _find_turn_ends(tokenizer) -> tuple[set[int], Optional[int]]:
    vocab = tokenizer.get_vocab()
    ids = {vocab[t] for t in END_OF_TURN_TOKENS if t in vocab}
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    probe = [{"role": "user", "content": "1"}, {"role": "assistant", "content": "2"}, {"role": "user", "content": "3"}]
    try:
        prompt, turn, more = _encode(
            tokenizer, [render(tokenizer, probe[:1], True), render(tokenizer, probe[:2]), render(tokenizer, probe)]
        )
    except EngineError:  # no template, or one that refuses the probe: nothing to add
        return ids, None
    if turn[: len(prompt)] != prompt or more[: len(turn)] != turn or len(more) == len(turn):
        return ids, None
    if any(t in ids for t in turn[len(prompt) :]):
        return ids, None  # the turn is closed by a token of its own (<|im_end|>, <|eot_id|>, eos…)
    following = more[len(turn)]
    special = following in tokenizer.added_tokens_decoder or following in tokenizer.all_special_ids
    return ids, following if special else None


def render(tokenizer, messages: Sequence[Any], add_generation_prompt: bool = False) -> str:
    """The chat template's text for `messages`."""
    try:
        return tokenizer.apply_chat_template(as_dicts(messages), tokenize=False, add_generation_prompt=add_generation_prompt)
    except Exception as e:  # jinja raises anything (TemplateError, TypeError…) on messages it does not expect
        raise EngineError("invalid_request", f"the model's chat template cannot render this conversation: {e} / 聊天模板无法渲染该对话") from e


def _encode(tokenizer, texts: list[str]) -> list[list[int]]:
    # Exactly as apply_chat_template(tokenize=True) does: the template already holds every special token.
    if not texts:
        return []
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def tokenize_examples(
    tokenizer, examples: Sequence[Sequence[Any]], max_seq_length: Optional[int] = None, keep_answer: bool = False
) -> tuple[list[TokenizedExample], int]:
    """Tokenizes many examples (each a list of messages) in one batch; returns (examples, how many were truncated).
    Longer than max_seq_length: the end is cut, or with keep_answer the earliest prompt tokens after the system
    message (see _cut_prompt), so the last answer, the only part most examples train on, stays whole."""
    if getattr(tokenizer, "chat_template", None) is None:
        raise EngineError("invalid_request", "the model's tokenizer has no chat template / 模型的分词器没有聊天模板", "base_model")
    eot, next_turn = _turn_ends(tokenizer)
    if next_turn is not None:
        eot = eot | {next_turn}

    # All texts of all examples go through the fast tokenizer in one call.
    texts: list[str] = []
    plans: list[tuple[int, list[tuple[int, int, int, Any]]]] = []  # (full text, [(prompt text, turn text, i, message)])
    system_texts: dict[int, int] = {}  # example -> text of its leading system message alone (what keep_answer keeps)
    for number, messages in enumerate(examples):
        messages = list(messages)
        if keep_answer and messages and _get(messages[0], "role") == "system":
            system_texts[number] = len(texts)
            texts.append(render(tokenizer, messages[:1]))
        full = len(texts)
        texts.append(render(tokenizer, messages))
        turns = []
        for i, m in enumerate(messages):
            if _get(m, "role") != "assistant" or _get(m, "weight") == 0:
                continue
            turns.append((len(texts), len(texts) + 1, i, m))
            texts.append(render(tokenizer, messages[:i], add_generation_prompt=True))
            texts.append(render(tokenizer, messages[: i + 1]))
        plans.append((full, turns))
    ids = _encode(tokenizer, texts)

    out: list[TokenizedExample] = []
    n_truncated = 0
    for number, (full, turns) in enumerate(plans):
        input_ids = ids[full]
        labels = [IGNORE_INDEX] * len(input_ids)
        for p, t, i, message in turns:
            start, end = len(ids[p]), len(ids[t])
            if input_ids[:start] == ids[p] and input_ids[:end] != ids[t]:  # written differently once later turns follow
                end = _past_turn_end(tokenizer, input_ids, ids[t], start, eot, message)
            if input_ids[:start] != ids[p] or end is None:
                raise EngineError(
                    "invalid_request",
                    f"example {number + 1}, message {i + 1}: the chat template does not render conversations incrementally: it rewrites "
                    "an earlier assistant turn when a later one is added (e.g. drops its reasoning), so that turn cannot "
                    "be trained as written; remove the reasoning from earlier turns, give them weight 0, or split the "
                    "conversation / 聊天模板不满足前缀性质：后续轮次会改写之前的助手回复（例如删去推理），无法按原样训练；"
                    "请删去之前回复中的推理、将其 weight 设为 0 或拆分对话",
                    "base_model",
                )
            # The turn's content and its end-of-turn token; what the template adds after it (a newline) is not trained.
            closed = False
            for j in range(start, end):
                labels[j] = input_ids[j]
                if input_ids[j] in eot:
                    closed = True
                    break
            if not closed and next_turn is not None:
                # The next role tag closes the turn (GLM-4): train it, appending it after the conversation's last turn.
                if end == len(input_ids):
                    input_ids.append(next_turn)
                    labels.append(next_turn)
                elif input_ids[end] in eot:
                    labels[end] = input_ids[end]
        example = TokenizedExample(input_ids, labels)
        if max_seq_length is not None and len(input_ids) > max_seq_length:
            if keep_answer:
                head = ids[system_texts[number]] if number in system_texts else []
                kept = len(head) if input_ids[: len(head)] == head else 0
                if not kept and tokenizer.bos_token_id is not None and input_ids[:1] == [tokenizer.bos_token_id]:
                    kept = 1
                answer_start = len(ids[turns[-1][0]]) if turns else len(input_ids)
                input_ids, labels = _cut_prompt(input_ids, labels, max_seq_length, kept, answer_start)
            example = TokenizedExample(input_ids[:max_seq_length], labels[:max_seq_length], truncated=True)
            n_truncated += 1
        out.append(example)
    return out, n_truncated


def _cut_prompt(input_ids: list[int], labels: list[int], max_len: int, keep: int, answer_start: int) -> tuple[list[int], list[int]]:
    """Drops the earliest tokens of [keep, answer_start) (after the system message, before the last answer's turn)
    until the example fits in max_len; if the answer alone is still too long, the caller cuts its end."""
    excess = len(input_ids) - max_len
    drop = max(0, min(excess, answer_start - keep))
    return input_ids[:keep] + input_ids[keep + drop :], labels[:keep] + labels[keep + drop :]


def _past_turn_end(tokenizer, full: list[int], last: list[int], start: int, eot: set[int], message: Any) -> Optional[int]:
    """Where an assistant turn that starts at `start` ends in `full`, when the template writes it differently as a
    past turn than as the last one (`last`): accepted only if the past form is the last form minus a leading part
    holding none of the message's text (Qwen3's empty think block), else None."""

    def through_end_token(ids: list[int]) -> list[int]:
        return next((ids[: j + 1] for j, token in enumerate(ids) if token in eot), ids)

    as_last, as_past = through_end_token(last[start:]), through_end_token(full[start:])
    if not as_past or len(as_past) >= len(as_last) or as_last[-len(as_past) :] != as_past:
        return None
    kept = tokenizer.decode(as_past)
    for key in ("content", "reasoning_content"):
        text = _get(message, key)
        if isinstance(text, str) and text.strip() not in kept:
            return None  # the template dropped part of what the assistant wrote (its reasoning)
    return start + len(as_past)


def tokenize_example(tokenizer, messages: Sequence[Any], max_seq_length: Optional[int] = None) -> TokenizedExample:
    """One chat example -> input ids and labels (loss on assistant content + end-of-turn token only)."""
    return tokenize_examples(tokenizer, [messages], max_seq_length)[0][0]


def count_tokens(tokenizer, examples: Sequence[Sequence[Any]]) -> list[int]:
    """The number of tokens of each fully rendered example, as training sees it (before truncation)."""
    if _turn_ends(tokenizer)[1] is not None:  # training may append the end marker: count exactly as it does
        return [len(e.input_ids) for e in tokenize_examples(tokenizer, examples)[0]]
    return [len(ids) for ids in _encode(tokenizer, [render(tokenizer, list(m)) for m in examples])]


def prompt_ids(tokenizer, messages: Sequence[Any]) -> list[int]:
    """Token ids of `messages` followed by the generation prompt (what the model continues at inference)."""
    return _encode(tokenizer, [render(tokenizer, messages, add_generation_prompt=True)])[0]


def answer_ids(tokenizer, messages: Sequence[Any], answers: Sequence[str]) -> tuple[list[int], list[list[int]]]:
    """For scoring fixed answers: the prompt ids and, for each answer, the tokens the assistant would write
    (content + end-of-turn token), both exactly as training renders them."""
    return answers_for_prompts(tokenizer, [messages], answers)[0]


def answers_for_prompts(
    tokenizer, prompts: Sequence[Sequence[Any]], answers: Sequence[str]
) -> list[tuple[list[int], list[list[int]]]]:
    """`answer_ids` for many prompts at once (one tokenizer call: label scoring of a whole validation file)."""
    eot, next_turn = _turn_ends(tokenizer)
    texts = []
    for messages in prompts:
        messages = list(messages)
        texts.append(render(tokenizer, messages, add_generation_prompt=True))
        texts += [render(tokenizer, messages + [{"role": "assistant", "content": a}]) for a in answers]
    ids = _encode(tokenizer, texts)
    out = []
    for i in range(len(prompts)):
        prompt, fulls = ids[i * (len(answers) + 1)], ids[i * (len(answers) + 1) + 1 : (i + 1) * (len(answers) + 1)]
        tokens_per_answer = []
        for answer, full in zip(answers, fulls):
            if full[: len(prompt)] != prompt or len(full) == len(prompt):
                raise EngineError("invalid_request", f"cannot locate the answer {answer!r} after the prompt / 无法定位答案", "labels")
            tokens = []
            for t in full[len(prompt) :]:
                tokens.append(t)
                if t in eot:
                    break
            else:
                if next_turn is not None:  # as training appends it
                    tokens.append(next_turn)
            tokens_per_answer.append(tokens)
        out.append((prompt, tokens_per_answer))
    return out


def _get(message: Any, key: str) -> Any:
    return message.get(key) if isinstance(message, Mapping) else getattr(message, key, None)
