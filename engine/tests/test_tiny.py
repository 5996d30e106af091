"""create-tiny: a real-architecture model that transformers loads, with a Chinese-aware tokenizer and chat template."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from weitiao_engine import tiny
from weitiao_engine.protocol import CreateTinyRequest

MESSAGES = [
    {"role": "system", "content": "你是一位外卖评论好评差评评论专家。"},
    {"role": "user", "content": "送餐太慢了，菜都凉了"},
    {"role": "assistant", "content": "差评"},
]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_fixture_loads_with_auto_classes(tiny_model: str) -> None:
    root = Path(tiny_model)
    for name in ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json"]:
        assert (root / name).is_file(), name
    assert "<|im_start|>" in json.loads((root / "tokenizer_config.json").read_text())["chat_template"]

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    config = model.config
    assert (config.model_type, config.num_hidden_layers, config.hidden_size, config.vocab_size) == ("qwen2", 2, 64, 1024)
    assert len(tokenizer) == 1024
    im_end, endoftext = tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    assert (config.eos_token_id, config.pad_token_id) == (im_end, endoftext)
    assert (tokenizer.eos_token_id, tokenizer.pad_token_id) == (im_end, endoftext)
    assert model.generation_config.eos_token_id == [im_end, endoftext]

    # The model runs: logits over the whole vocabulary for a rendered chat.
    ids = tokenizer.apply_chat_template(MESSAGES, tokenize=True, return_dict=False)
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits
    assert logits.shape == (1, len(ids), 1024)


def test_chinese_tokenizes_into_characters_and_words(tiny_model: str) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    for word in ["好评", "差评", "好", "差", "不", "吃"]:
        assert len(tokenizer.encode(word, add_special_tokens=False)) == 1, word
    text = "送餐太慢了，菜都凉了！Pizza 不错 123"
    assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text


def test_chatml_template_renders_like_qwen(tiny_model: str) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    text = tokenizer.apply_chat_template(MESSAGES, tokenize=False)
    assert text == (
        "<|im_start|>system\n你是一位外卖评论好评差评评论专家。<|im_end|>\n"
        "<|im_start|>user\n送餐太慢了，菜都凉了<|im_end|>\n"
        "<|im_start|>assistant\n差评<|im_end|>\n"
    )
    prompt = tokenizer.apply_chat_template(MESSAGES[1:2], tokenize=False, add_generation_prompt=True)
    assert prompt.startswith("<|im_start|>system\n")  # Qwen2.5's default system turn
    assert prompt.endswith("<|im_start|>user\n送餐太慢了，菜都凉了<|im_end|>\n<|im_start|>assistant\n")


def test_same_seed_same_files_and_llama3(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("很快，好吃，味道足，量大\n送餐太慢了，菜都凉了\n味道不错，下次还点\n" * 50, encoding="utf-8")

    def build(name: str, seed: int) -> Path:
        request = CreateTinyRequest(
            output_dir=str(tmp_path / name),
            architecture="llama",
            chat_template="llama3",
            hidden_size=32,
            intermediate_size=64,
            num_attention_heads=2,
            num_key_value_heads=1,
            vocab_size=400,
            corpus_files=[str(corpus)],
            seed=seed,
        )
        result = tiny.run(request)
        assert result["vocab_size"] == 400 and result["parameters"] > 0
        return Path(result["path"])

    a, b, c = build("a", 7), build("b", 7), build("c", 8)
    for name in ["model.safetensors", "tokenizer.json"]:
        assert _digest(a / name) == _digest(b / name), name
    assert _digest(a / "model.safetensors") != _digest(c / "model.safetensors")

    tokenizer = AutoTokenizer.from_pretrained(a)
    model = AutoModelForCausalLM.from_pretrained(a)
    assert model.config.model_type == "llama"
    text = tokenizer.apply_chat_template(MESSAGES, tokenize=False)
    assert text == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n你是一位外卖评论好评差评评论专家。<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\n送餐太慢了，菜都凉了<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n差评<|eot_id|>"
    )
    ids = tokenizer.apply_chat_template(MESSAGES, tokenize=True, return_dict=False)
    assert ids.count(tokenizer.convert_tokens_to_ids("<|begin_of_text|>")) == 1
    assert model.config.eos_token_id == tokenizer.convert_tokens_to_ids("<|eot_id|>")


def test_config_from_copies_shape(tmp_path: Path) -> None:
    # A Qwen2.5-style config.json, scaled down so the test stays small; the vocab comes from it.
    real = {
        "model_type": "qwen2",
        "architectures": ["Qwen2ForCausalLM"],
        "hidden_size": 48,
        "intermediate_size": 96,
        "num_hidden_layers": 3,
        "num_attention_heads": 6,
        "num_key_value_heads": 2,
        "max_position_embeddings": 4096,
        "vocab_size": 2000,
        "tie_word_embeddings": True,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
    }
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "config.json").write_text(json.dumps(real))
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("很快，好吃，味道足，量大\n送餐太慢了\n" * 50, encoding="utf-8")
    result = tiny.run(
        CreateTinyRequest(output_dir=str(tmp_path / "m"), corpus_files=[str(corpus)], vocab_size=300, config_from=str(tmp_path / "real"))
    )
    config = AutoModelForCausalLM.from_pretrained(result["path"]).config
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads, config.vocab_size) == (48, 3, 6, 2000)
    assert config.max_position_embeddings == 4096
    assert result["vocab_size"] == 2000
    assert len(AutoTokenizer.from_pretrained(result["path"])) <= 300  # a small tokenizer in a big embedding


def test_engine_command_and_errors(tmp_path: Path, run_engine) -> None:
    corpus = tmp_path / "语料.txt"
    corpus.write_text("很快，好吃，味道足，量大\n送餐太慢了\n" * 50, encoding="utf-8")
    request = {"output_dir": str(tmp_path / "m"), "hidden_size": 32, "intermediate_size": 64, "vocab_size": 300, "corpus_files": [str(corpus)]}
    code, events = run_engine("create-tiny", request)
    assert code == 0
    assert events[0]["type"] == "hello" and any(e["type"] == "progress" for e in events)
    result = events[-1]
    assert result["type"] == "result" and set(result["data"]) == {"path", "parameters", "vocab_size"}
    assert result["data"]["vocab_size"] == 300

    code, events = run_engine("create-tiny", {**request, "corpus_files": [str(tmp_path / "missing.txt")]})
    assert code == 1
    assert events[-1]["type"] == "error" and events[-1]["code"] == "invalid_file"
    assert "missing.txt" in events[-1]["message"] and events[-1]["param"] == "corpus_files"

    code, events = run_engine("create-tiny", {**request, "hidden_size": 30, "num_attention_heads": 4})
    assert events[-1]["code"] == "invalid_request" and events[-1]["param"] == "num_attention_heads"


def test_unreadable_corpus_encoding(tmp_path: Path) -> None:
    corpus = tmp_path / "bad.txt"
    corpus.write_bytes(b"\xff\xff\xff\x80\x81" * 10)
    with pytest.raises(tiny.EngineError) as e:
        tiny.run(CreateTinyRequest(output_dir=str(tmp_path / "m"), corpus_files=[str(corpus)]))
    assert e.value.code == "invalid_file" and "bad.txt" in e.value.message
