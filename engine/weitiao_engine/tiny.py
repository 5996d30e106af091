"""`create-tiny`: a random-weight model in a real architecture, with a tokenizer trained on given text.

Tests and the offline demo need a base model without downloading one. This builds a Qwen2 or Llama
model (real transformers classes, so every code path is the one a real model takes), trains a
byte-level BPE tokenizer on the corpus (Qwen's pre-tokenizer, so Chinese text is merged into
character and word tokens), sets the family's real chat template and special tokens, and saves it
all in Hugging Face format. Same request + same seed = identical files.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator

from .atomic import atomic_dir
from .protocol import CreateTinyRequest, EngineError, log, progress

# Qwen2's pre-tokenizer split (from its tokenizer.json): letters stay together (a run of Chinese
# characters is one "word" for BPE to merge), digits are split one by one.
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# ChatML as Qwen2.5 writes it, without the tool-calling branches; like Qwen2.5 it adds a default
# system turn when the conversation has none.
CHATML_TEMPLATE = (
    "{%- if messages[0]['role'] != 'system' %}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- endif %}"
)

# Meta-Llama-3-8B-Instruct's template, verbatim.
LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

# GLM-4's template, verbatim from THUDM/glm-4-9b-chat's tokenizer_config.json (as quoted in llama.cpp's
# tests/test-chat-template.cpp, case "ChatGLM4"). It writes no end-of-turn token: the next role tag closes a turn.
GLM4_TEMPLATE = (
    "[gMASK]<sop>{% for item in messages %}{% if item['tools'] is defined %}<|system|>\n你是一个名为 ChatGLM 的人工智能助手。"
    "你是基于智谱AI训练的语言模型 GLM-4 模型开发的，你的任务是针对用户的问题和要求提供适当的答复和支持。\n\n# 可用工具"
    "{% set tools = item['tools'] %}{% for tool in tools %}{% if tool['type'] == 'function' %}\n\n## {{ tool['function']['name'] }}"
    "\n\n{{ tool['function'] | tojson(indent=4) }}\n......{% endif %}{% endfor %}{% endif %}{% if item['content'] %}"
    "<|{{ item['role'] }}|>{{ item['metadata'] }}\n{{ item['content'] }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

# template -> (special tokens in id order, chat template, roles of the special tokens)
TEMPLATES: dict[str, dict[str, Any]] = {
    "chatml": {
        "special": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        "template": CHATML_TEMPLATE,
        "bos": None,
        "eos": "<|im_end|>",  # end of an assistant turn: generation stops there
        "pad": "<|endoftext|>",
        "stop": ["<|im_end|>", "<|endoftext|>"],
    },
    "llama3": {
        "special": ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
        "template": LLAMA3_TEMPLATE,
        "bos": "<|begin_of_text|>",
        "eos": "<|eot_id|>",
        "pad": "<|end_of_text|>",  # Llama 3 has no pad token; its end-of-text token is never trained on
        "stop": ["<|eot_id|>", "<|end_of_text|>"],
    },
    "glm4": {  # GLM-4's special tokens in its id order; its generation config also stops at <|user|>, <|observation|>
        "special": ["<|endoftext|>", "[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>", "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>"],
        "template": GLM4_TEMPLATE,
        "bos": None,
        "eos": "<|endoftext|>",
        "pad": "<|endoftext|>",
        "stop": ["<|endoftext|>"],  # eos only, so stopping at <|user|> has to come from the template (chat_format)
    },
}

# The config.json keys that define a model's shape (copied by `config_from`).
SHAPE_KEYS = [
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "max_position_embeddings",
    "vocab_size",
    "tie_word_embeddings",
    "rms_norm_eps",
    "rope_theta",
    "hidden_act",
    "head_dim",
]


def run(request: CreateTinyRequest) -> dict[str, Any]:
    """Builds the model and tokenizer into `request.output_dir`; returns {path, parameters, vocab_size}."""
    import torch

    spec = TEMPLATES[request.chat_template]
    architecture, shape = _shape(request)

    progress("tokenizer", 0, 3, "training the tokenizer / 训练分词器")
    tokenizer = train_tokenizer(
        _corpus_lines(request.corpus_files), min(shape["vocab_size"], request.vocab_size), spec, shape["max_position_embeddings"]
    )
    if len(tokenizer) > shape["vocab_size"]:
        raise EngineError(
            "invalid_request",
            f"the tokenizer has {len(tokenizer)} tokens but the model's vocab_size is {shape['vocab_size']} / 词表大于模型的 vocab_size",
            "vocab_size",
        )

    progress("model", 1, 3, "initialising random weights / 随机初始化权重")
    torch.manual_seed(request.seed)
    config = _config(architecture, shape, tokenizer, spec)
    model = _model_class(architecture)(config)
    model.generation_config = _generation_config(tokenizer, spec)
    parameters = sum(p.numel() for p in model.parameters())

    progress("save", 2, 3, "saving / 保存")
    out = Path(request.output_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Written next to the target then renamed, so a failed run never leaves a half-written model.
    with atomic_dir(out, mode=0o777 & ~_umask()) as tmp:
        model.save_pretrained(tmp)
        # chat_template inside tokenizer_config.json (not only chat_template.jinja): older tools read it there.
        tokenizer.save_pretrained(tmp, save_jinja_files=False)
    progress("save", 3, 3)
    log(f"{architecture} model with {parameters:,} parameters, tokenizer of {len(tokenizer)} tokens -> {out}")
    return {"path": str(out), "parameters": parameters, "vocab_size": config.vocab_size}


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def train_tokenizer(lines: Iterator[str], vocab_size: int, spec: dict[str, Any], model_max_length: int):
    """A byte-level BPE tokenizer trained on `lines`, wrapped as a transformers fast tokenizer with the chat template."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(byte_fallback=False))
    tok.normalizer = None
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=spec["special"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte, so no text is ever unknown
        min_frequency=2,
        show_progress=False,
    )
    tok.train_from_iterator(lines, trainer=trainer)
    if tok.get_vocab_size() <= len(spec["special"]) + 256:
        raise EngineError("invalid_file", "the corpus is too small to train a tokenizer / 语料太少，无法训练分词器", "corpus_files")

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=spec["bos"],
        eos_token=spec["eos"],
        pad_token=spec["pad"],
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = spec["template"]
    return tokenizer


def _corpus_lines(files: list[str]) -> Iterator[str]:
    """Non-empty lines of every corpus file (UTF-8, with a GB18030 fallback for Chinese exports)."""
    texts = []
    for name in files:
        try:
            data = Path(name).read_bytes()
        except OSError as e:
            raise EngineError("invalid_file", f"{name}: cannot read corpus file: {e.strerror} / 无法读取语料文件", "corpus_files") from e
        try:
            texts.append(data.decode("utf-8-sig"))
        except UnicodeDecodeError:
            try:
                texts.append(data.decode("gb18030"))
            except UnicodeDecodeError as e:
                raise EngineError(
                    "invalid_file", f"{name}: not UTF-8 or GB18030 text / 不是 UTF-8 或 GB18030 文本", "corpus_files"
                ) from e
    for text in texts:
        for line in text.splitlines():
            if line.strip():
                yield line


def _shape(request: CreateTinyRequest) -> tuple[str, dict[str, Any]]:
    """The architecture and shape: the request's sizes, or those of the `config_from` config.json."""
    shape: dict[str, Any] = {
        "hidden_size": request.hidden_size,
        "intermediate_size": request.intermediate_size,
        "num_hidden_layers": request.num_hidden_layers,
        "num_attention_heads": request.num_attention_heads,
        "num_key_value_heads": request.num_key_value_heads,
        "max_position_embeddings": request.max_position_embeddings,
        "vocab_size": request.vocab_size,
        "tie_word_embeddings": True,  # as Qwen2.5's small models: the embedding doubles as the LM head
    }
    architecture = request.architecture
    if request.config_from:
        path = Path(request.config_from)
        if path.is_dir():
            path = path / "config.json"
        try:
            real = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise EngineError("invalid_file", f"{path}: cannot read config: {e} / 无法读取配置", "config_from") from e
        if real.get("model_type") not in ("qwen2", "llama"):
            raise EngineError(
                "invalid_request",
                f"{path}: model_type {real.get('model_type')!r} is not qwen2 or llama / 不支持的模型类型",
                "config_from",
            )
        architecture = real["model_type"]
        shape.update({k: real[k] for k in SHAPE_KEYS if k in real})
    if shape["hidden_size"] % shape["num_attention_heads"] or shape["num_attention_heads"] % shape["num_key_value_heads"]:
        raise EngineError(
            "invalid_request",
            "hidden_size must be a multiple of num_attention_heads, and num_attention_heads of num_key_value_heads"
            " / hidden_size 须为注意力头数的倍数，注意力头数须为 KV 头数的倍数",
            "num_attention_heads",
        )
    return architecture, shape


def _config(architecture: str, shape: dict[str, Any], tokenizer, spec: dict[str, Any]):
    from transformers import LlamaConfig, Qwen2Config

    ids = {
        "bos_token_id": tokenizer.convert_tokens_to_ids(spec["bos"]) if spec["bos"] else None,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    cls = Qwen2Config if architecture == "qwen2" else LlamaConfig
    return cls(**shape, **ids)


def _model_class(architecture: str):
    from transformers import LlamaForCausalLM, Qwen2ForCausalLM

    return Qwen2ForCausalLM if architecture == "qwen2" else LlamaForCausalLM


def _generation_config(tokenizer, spec: dict[str, Any]):
    from transformers import GenerationConfig

    return GenerationConfig(
        bos_token_id=tokenizer.convert_tokens_to_ids(spec["bos"]) if spec["bos"] else None,
        eos_token_id=[tokenizer.convert_tokens_to_ids(t) for t in spec["stop"]],
        pad_token_id=tokenizer.pad_token_id,
    )
