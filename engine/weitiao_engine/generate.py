"""Command `chat`: one answer from a model (+ adapter), streamed as `token` events.

`chat_completion` works on an already loaded model, so a warm inference process can hold the base model
once and answer many requests; `run` is the one-shot command that loads the model first.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import torch

from . import protocol
from .chat_format import EMPTY_REASONING, Message, prompt_ids, without_empty_reasoning
from .loading import load_model, stop_token_ids
from .protocol import ChatRequest, EngineError


def run(request: ChatRequest) -> dict[str, Any]:
    model, tokenizer = load_model(request.model, request.adapter)
    on_text = (lambda piece: protocol.emit("token", text=piece)) if request.stream else None
    return answer_request(model, tokenizer, request, on_text)


def answer_request(model: Any, tokenizer: Any, request: ChatRequest, on_text: Optional[Callable[[str], None]] = None) -> dict[str, Any]:
    """`chat_completion` with a chat request's messages and sampling settings (the one-shot command and the warm process)."""
    return chat_completion(
        model,
        tokenizer,
        request.messages,
        max_tokens=request.max_tokens,
        temperature=request.temperature,
        top_p=request.top_p,
        stop=request.stop,
        seed=request.seed,
        on_text=on_text,
    )


@torch.no_grad()
def chat_completion(
    model: Any,
    tokenizer: Any,
    messages: Sequence[Message],
    *,
    max_tokens: int = 256,
    temperature: float = 1.0,
    top_p: float = 1.0,
    stop: Sequence[str] = (),
    seed: Optional[int] = None,
    on_text: Optional[Callable[[str], None]] = None,
) -> dict[str, Any]:
    """Generates the assistant's answer: `{text, finish_reason, usage}`; `on_text` gets the text as it firms up.

    temperature 0 is greedy. Generation ends at the template's end-of-turn or eos token (finish_reason
    `stop`), at the first stop string (cut from the text, finish_reason `stop`), or after `max_tokens`
    (`length`). The pieces passed to `on_text` concatenate to exactly `text`.
    """
    ids = prompt_ids(tokenizer, messages)
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit is not None and len(ids) >= limit:
        raise EngineError(
            "invalid_request",
            f"the prompt has {len(ids)} tokens, the model's limit is {limit} / 提示词长度 {len(ids)} 超过模型上限 {limit}",
            "messages",
        )
    budget = max_tokens if limit is None else min(max_tokens, limit - len(ids))
    stops = stop_token_ids(model, tokenizer)
    generator = torch.Generator()
    if seed is not None:
        generator.manual_seed(seed)
    else:
        generator.seed()
    stream = TextStream(tokenizer, stop)
    device = next(model.parameters()).device

    step_input = torch.tensor([ids], device=device)
    past = None
    completion = 0
    finish = "length"
    while completion < budget:
        out = model(input_ids=step_input, past_key_values=past, use_cache=True)
        past = out.past_key_values
        token = _sample(out.logits[0, -1].float(), temperature, top_p, generator)
        completion += 1  # every sampled token costs compute, the end-of-turn one included
        if token in stops:
            finish = "stop"
            break
        piece = stream.push(token)
        if piece and on_text is not None:
            on_text(piece)
        if stream.stopped:
            finish = "stop"
            break
        step_input = torch.tensor([[token]], device=device)
    rest = stream.finish()
    if rest and on_text is not None:
        on_text(rest)
    return {
        "text": stream.text,
        "finish_reason": finish,
        "usage": {"prompt_tokens": len(ids), "completion_tokens": completion, "total_tokens": len(ids) + completion},
    }


def _sample(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator) -> int:
    if temperature == 0:
        return int(logits.argmax())
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1:
        sorted_probs, order = probs.sort(descending=True)
        # Keep the smallest head whose mass reaches top_p (the most likely token always stays).
        keep = (sorted_probs.cumsum(0) - sorted_probs) < top_p
        choice = torch.multinomial(sorted_probs * keep, 1, generator=generator)
        return int(order[choice])
    return int(torch.multinomial(probs, 1, generator=generator))


class TextStream:
    """Turns generated token ids into text pieces that never change once handed out.

    Three things are held back until the next token settles them: a trailing U+FFFD (a Chinese character
    whose UTF-8 bytes are split over tokens decodes as U+FFFD until its last byte arrives), a tail that
    could be the start of a stop string, and an opening that could be Qwen3's empty reasoning block (left
    out of the text, chat_format.EMPTY_REASONING). When a stop string appears, the text is cut just before
    it and `stopped` becomes true.
    """

    def __init__(self, tokenizer: Any, stop: Sequence[str] = ()):
        self.tokenizer = tokenizer
        self.stop = [s for s in stop if s]
        self.ids: list[int] = []
        self.decoded = ""  # everything decoded so far
        self.skip: Optional[int] = None  # characters of an empty reasoning block left out; None: not known yet
        self.text = ""  # the answer so far (cut at a stop string)
        self.sent = 0  # characters of `text` already handed out
        self.stopped = False

    def push(self, token: int) -> str:
        """Adds one token; returns the newly settled text (maybe empty)."""
        self.ids.append(token)
        self.decoded = self.tokenizer.decode(self.ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        if self.skip is None:
            if EMPTY_REASONING.startswith(self.decoded) and self.decoded != EMPTY_REASONING:
                return ""  # maybe the opening of an empty reasoning block: wait for the next token
            self.skip = len(self.decoded) - len(without_empty_reasoning(self.decoded))
        self.text = self.decoded[self.skip :]
        hits = [i for i in (self.text.find(s, self.sent) for s in self.stop) if i >= 0]
        if hits:
            self.text = self.text[: min(hits)]
            self.stopped = True
            return self._take(len(self.text))
        return self._take(len(self.text) - self._held())

    def finish(self) -> str:
        """Whatever is still held back, once generation is over."""
        if self.skip is None:  # ended inside what looked like an empty reasoning block: it was text after all
            self.skip, self.text = 0, self.decoded
        return self._take(len(self.text))

    def _held(self) -> int:
        settled = self.text.rstrip("\ufffd")
        tail = 0  # the longest end of `settled` that is a proper prefix of a stop string
        for s in self.stop:
            for k in range(min(len(s) - 1, len(settled) - self.sent), tail, -1):
                if settled.endswith(s[:k]):
                    tail = k
                    break
        return len(self.text) - len(settled) + tail

    def _take(self, upto: int) -> str:
        if upto <= self.sent:
            return ""
        piece = self.text[self.sent : upto]
        self.sent = upto
        return piece
