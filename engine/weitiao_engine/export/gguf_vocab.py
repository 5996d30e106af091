"""A Hugging Face byte-level BPE tokenizer as GGUF vocabulary metadata (`tokenizer.ggml.model = gpt2`).

llama.cpp re-implements the tokenizer from three things: the tokens with their types, the merges, and the name
of the pre-tokenizer (`tokenizer.ggml.pre`), which selects one of its built-in split regexes. The name is chosen
from the Split regex in tokenizer.json; a regex llama.cpp has no name for is refused, since any other choice
would tokenize text differently from the model's training.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

from gguf import GGUFWriter, TokenType

from ..protocol import EngineError
from .special import SpecialTokens

# Split regexes (tokenizer.json pre_tokenizer) -> llama.cpp's pre-tokenizer names.
PRE_TOKENIZERS = {
    # Qwen2/2.5/3 (and weitiao's tiny models, tiny.QWEN2_SPLIT): single digits
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+": "qwen2",
    # Llama 3.x: digits in groups of up to three
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+": "llama-bpe",
}


def write_vocab(writer: GGUFWriter, tokenizer: Any, model_dir: str, vocab_size: int, special: SpecialTokens) -> None:
    """Adds the tokenizer's metadata: model, pre, tokens, token types, merges, special ids, chat template."""
    spec = _tokenizer_json(model_dir)
    tokens, types = tokens_and_types(tokenizer, vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre_tokenizer_name(spec))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges(spec))
    if special.bos is not None:
        writer.add_bos_token_id(special.bos)
    if special.eos is not None:
        writer.add_eos_token_id(special.eos)
    if special.eot is not None:
        writer.add_eot_token_id(special.eot)
    if special.pad is not None:
        writer.add_pad_token_id(special.pad)
    writer.add_add_bos_token(special.add_bos)
    writer.add_add_eos_token(special.add_eos)
    if tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)


def tokens_and_types(tokenizer: Any, vocab_size: int) -> tuple[list[str], list[int]]:
    """Every id below `vocab_size` (the embedding's rows) with its text and type, as llama.cpp expects them:
    special added tokens are control tokens, other added tokens user-defined, ids no token uses are padding."""
    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder
    if len(by_id) > vocab_size:
        raise EngineError("invalid_file", f"the tokenizer has {len(by_id)} tokens, the model only {vocab_size} embeddings / 词表大于模型的嵌入数", "model")
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(int(TokenType.UNUSED))
        elif i in added:
            tokens.append(added[i].content)
            types.append(int(TokenType.CONTROL if added[i].special else TokenType.USER_DEFINED))
        else:
            tokens.append(by_id[i])
            types.append(int(TokenType.NORMAL))
    return tokens, types


def merges(spec: dict[str, Any]) -> list[str]:
    """BPE merges as "left right" strings (tokenizers writes them as pairs since 0.20, as strings before)."""
    return [m if isinstance(m, str) else " ".join(m) for m in spec.get("model", {}).get("merges", [])]


def pre_tokenizer_name(spec: dict[str, Any]) -> str:
    """llama.cpp's name for tokenizer.json's pre-tokenizer, or an error naming the regex it does not know."""
    model = spec.get("model", {})
    if model.get("type") != "BPE" or not _byte_level(spec.get("pre_tokenizer")):
        raise EngineError(
            "invalid_request",
            f"only byte-level BPE tokenizers can be written to GGUF here; this one is {model.get('type')!r} "
            "/ 目前只支持字节级 BPE 分词器导出 GGUF",
            "format",
        )
    regexes = list(_split_regexes(spec.get("pre_tokenizer")))
    for regex in regexes:
        if regex in PRE_TOKENIZERS:
            return PRE_TOKENIZERS[regex]
    raise EngineError(
        "invalid_request",
        f"the tokenizer's pre-tokenizer split {regexes[:1] or ['(none)']} is not one llama.cpp knows by name "
        f"(known: {', '.join(sorted(set(PRE_TOKENIZERS.values())))}); a GGUF would tokenize differently "
        "/ 分词器的预分词规则不被 llama.cpp 支持，导出的 GGUF 会以不同方式分词",
        "format",
    )


def _tokenizer_json(model_dir: str) -> dict[str, Any]:
    path = Path(model_dir) / "tokenizer.json"
    if not path.is_file():
        raise EngineError("invalid_request", f"{model_dir} has no tokenizer.json (a fast tokenizer is needed for GGUF) / 缺少 tokenizer.json", "model")
    return json.loads(path.read_text(encoding="utf-8"))


def _walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for child in node.get("pretokenizers", []) or []:
            yield from _walk(child)


def _split_regexes(node: Any) -> Iterator[str]:
    for part in _walk(node):
        if part.get("type") == "Split" and isinstance(part.get("pattern"), dict) and "Regex" in part["pattern"]:
            yield part["pattern"]["Regex"]


def _byte_level(node: Any) -> bool:
    return any(part.get("type") == "ByteLevel" for part in _walk(node))
