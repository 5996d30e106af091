"""`count-tokens`: how many tokens each chat example takes with a model's tokenizer and chat template.

Data validation uses it to flag examples over the model's context and to estimate trained tokens.
`counts` is the fully rendered conversation, exactly what training tokenizes; `trained_counts` is how
many of those tokens carry a loss label (assistant answers and their end-of-turn tokens), the same
labels the recipes train on.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .chat_format import count_tokens, tokenize_examples
from .protocol import CountTokensRequest, EngineError, progress

BATCH = 2048  # examples per tokenizer call: large enough to be fast, small enough for steady progress


def run(request: CountTokensRequest) -> dict[str, Any]:
    """Returns {counts, trained_counts, model_max_length}: per example, all tokens and trained tokens."""
    tokenizer = load_tokenizer(request.model)
    max_length = model_max_length(request.model, tokenizer)
    examples = [e.messages for e in request.examples]
    counts: list[int] = []
    trained: list[int] | None = []
    for start in range(0, len(examples), BATCH):
        chunk = examples[start : start + BATCH]
        counts += count_tokens(tokenizer, chunk)
        if trained is not None:
            try:
                trained += [e.n_trained for e in tokenize_examples(tokenizer, chunk)[0]]
            except EngineError:  # a template that is not incremental: training refuses it; counting still works
                trained = None
        progress("count", len(counts), len(examples))
    return {"counts": counts, "trained_counts": trained, "model_max_length": max_length}


def load_tokenizer(model: str):
    """The model directory's fast tokenizer, or a user-facing error when it cannot be loaded."""
    from transformers import AutoTokenizer

    if not Path(model).is_dir():
        raise EngineError("not_found", f"model directory {model} does not exist / 模型目录不存在", "model")
    try:
        return auto_tokenizer(model)
    except Exception as e:  # transformers raises OSError, ValueError… for a broken or partial directory
        raise EngineError("invalid_file", f"{model}: cannot load the tokenizer: {e} / 无法加载分词器", "model") from e


ROUND_TRIP_PROBE = "很快，好吃 good food!"


def auto_tokenizer(model: str | Path):
    """`AutoTokenizer.from_pretrained`, unless the class it picks mangles the directory's own tokenizer.json.

    transformers 5 maps `tokenizer_class: LlamaTokenizerFast` to its SentencePiece-style Llama tokenizer even
    when tokenizer.json is byte-level (DeepSeek-R1-Distill-Llama and other Llama-architecture models with
    their own vocabulary), and that one silently drops spaces and Chinese (huggingface/transformers#45488;
    its workaround only matches Hub names, never a local directory). A probe that does not survive
    encode/decode falls back to the tokenizer.json as written, with the same tokenizer_config.
    """
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    tokenizer = AutoTokenizer.from_pretrained(str(model))
    if (Path(model) / "tokenizer.json").is_file() and not _round_trips(tokenizer):
        exact = PreTrainedTokenizerFast.from_pretrained(str(model))
        if _round_trips(exact):
            return exact
    return tokenizer


def _round_trips(tokenizer) -> bool:
    ids = tokenizer.encode(ROUND_TRIP_PROBE, add_special_tokens=False)
    return tokenizer.decode(ids) == ROUND_TRIP_PROBE


def model_max_length(model: str, tokenizer) -> int:
    """The context length: config.json's max_position_embeddings, else the tokenizer's model_max_length."""
    try:
        config = json.loads((Path(model) / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        config = {}
    # Multimodal configs keep the language model's settings in text_config.
    value = config.get("max_position_embeddings") or config.get("text_config", {}).get("max_position_embeddings")
    if value is None:
        value = tokenizer.model_max_length if tokenizer.model_max_length < 10**9 else 0
    return int(value)
