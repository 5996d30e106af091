"""The special tokens an exported model must carry so that other runtimes start and stop turns as the engine does."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from ..chat_format import answer_ids, end_of_turn_ids


@dataclass
class SpecialTokens:
    bos: Optional[int]
    eos: Optional[int]
    eot: Optional[int]  # the token the chat template closes an assistant turn with (<|im_end|>, <|eot_id|>…)
    pad: Optional[int]
    stop: list[int]  # every id that ends a generated answer: eos and eot first, then the rest, no repeats
    add_bos: bool  # the tokenizer puts bos in front of plain text by itself (Llama 3's post-processor does)
    add_eos: bool


def special_tokens(tokenizer: Any, generation_eos: Any = None) -> SpecialTokens:
    """bos/eos/eot/pad ids and the stop list, as the engine's generation uses them (loading.stop_token_ids)."""
    # The end-of-turn token is what the engine trains after an answer: the last of answer_ids' tokens.
    probe = [{"role": "user", "content": "1"}]
    closing = answer_ids(tokenizer, probe, ["2"])[1][0][-1]
    ends = end_of_turn_ids(tokenizer)
    eot = closing if closing in ends else None
    extra = [generation_eos] if isinstance(generation_eos, int) else list(generation_eos or [])
    stop: list[int] = []
    for token in [tokenizer.eos_token_id, eot, *extra, *sorted(ends)]:
        if token is not None and token not in stop:
            stop.append(token)
    plain = tokenizer("1", add_special_tokens=True)["input_ids"]
    bare = tokenizer("1", add_special_tokens=False)["input_ids"]
    return SpecialTokens(
        bos=tokenizer.bos_token_id,
        eos=tokenizer.eos_token_id,
        eot=eot,
        pad=tokenizer.pad_token_id,
        stop=stop,
        add_bos=tokenizer.bos_token_id is not None and plain[:1] == [tokenizer.bos_token_id] and bare[:1] != plain[:1],
        add_eos=tokenizer.eos_token_id is not None and plain[-1:] == [tokenizer.eos_token_id] and bare[-1:] != plain[-1:],
    )


def generation_eos(model_dir: str) -> Any:
    """generation_config.json's eos_token_id (an id or a list), or None."""
    import json

    path = Path(model_dir) / "generation_config.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8")).get("eos_token_id")
