"""The `chat` command on the tiny model: greedy and seeded sampling, streaming, stop strings, usage, errors."""

from __future__ import annotations

import pytest

from weitiao_engine.chat_format import prompt_ids
from weitiao_engine import generate
from weitiao_engine.generate import TextStream, chat_completion
from weitiao_engine.loading import load_model
from weitiao_engine.protocol import ChatRequest, EngineError

MESSAGES = [
    {"role": "system", "content": "你是一位外卖评论好评差评评论专家。"},
    {"role": "user", "content": "送餐很快，味道也不错，下次还点！"},
]


def chat(model_and_tokenizer, **kwargs):
    """chat_completion that also collects the streamed pieces."""
    pieces: list[str] = []
    result = chat_completion(*model_and_tokenizer, kwargs.pop("messages", MESSAGES), on_text=pieces.append, **kwargs)
    return result, pieces


def test_greedy_is_deterministic_and_stream_concatenates_to_text(tuned):
    first, pieces = chat(tuned, max_tokens=40, temperature=0)
    again, pieces_again = chat(tuned, max_tokens=40, temperature=0, top_p=0.5, seed=123)  # greedy ignores both
    assert first["text"] and first["text"] == again["text"]
    assert "".join(pieces) == first["text"] and "".join(pieces_again) == first["text"]
    assert all(pieces)


def test_adapter_changes_the_answer(base, tuned):
    assert chat(base, max_tokens=20, temperature=0)[0]["text"] != chat(tuned, max_tokens=20, temperature=0)[0]["text"]


def test_seeded_sampling_repeats_and_seeds_differ(base):
    a, pieces = chat(base, max_tokens=30, temperature=1.0, seed=1)
    b, _ = chat(base, max_tokens=30, temperature=1.0, seed=1)
    c, _ = chat(base, max_tokens=30, temperature=1.0, seed=2)
    assert a == b and a["text"] != c["text"]
    assert "".join(pieces) == a["text"]
    # top_p near 0 keeps only the most likely token: sampling becomes greedy.
    assert chat(base, max_tokens=15, temperature=1.0, top_p=1e-6, seed=5)[0]["text"] == chat(base, max_tokens=15, temperature=0)[0]["text"]


def test_max_tokens_gives_length_and_usage_counts(base):
    result, _ = chat(base, max_tokens=7, temperature=1.0, seed=3)
    assert result["finish_reason"] == "length"
    prompt = len(prompt_ids(base[1], MESSAGES))
    assert result["usage"] == {"prompt_tokens": prompt, "completion_tokens": 7, "total_tokens": prompt + 7}


def test_stop_string_cuts_the_text(base):
    full, _ = chat(base, max_tokens=40, temperature=1.0, seed=11)
    assert full["finish_reason"] == "length"
    # A stretch of Chinese from the middle of the free run: the same seeded run must stop right before it.
    text = full["text"]
    start = next(i for i in range(len(text) // 2, len(text) - 1) if "\u4e00" <= text[i] <= "\u9fff" and "\ufffd" not in text[i : i + 2])
    stop = text[start : start + 2]
    cut, pieces = chat(base, max_tokens=40, temperature=1.0, seed=11, stop=["不会出现的停止词", stop])
    assert cut["text"] == text[: text.index(stop)]
    assert cut["finish_reason"] == "stop"
    assert "".join(pieces) == cut["text"]
    assert cut["usage"]["completion_tokens"] < 40


def test_end_of_turn_stops_generation(base):
    # Make the end-of-turn token the only choice after two tokens by steering the logits with a hook.
    model, tokenizer = base
    eot = tokenizer.convert_tokens_to_ids("<|im_end|>")
    calls = {"n": 0}

    def steer(_module, _inputs, output):
        calls["n"] += 1
        if calls["n"] == 3:
            output.logits[..., eot] = 1e4
        return output

    handle = model.register_forward_hook(steer)
    try:
        result, pieces = chat(base, max_tokens=50, temperature=0)
    finally:
        handle.remove()
    assert result["finish_reason"] == "stop"
    assert result["usage"]["completion_tokens"] == 3  # two words and the end-of-turn token
    assert "<|im_end|>" not in result["text"] and "".join(pieces) == result["text"]


def test_adapter_directory_without_adapter_config(tiny_model, tmp_path):
    with pytest.raises(EngineError) as e:
        load_model(tiny_model, tmp_path)
    assert (e.value.code, e.value.param) == ("not_found", "adapter")
    assert "adapter_config.json" in e.value.message and str(tmp_path) in e.value.message


def byte_tokens(tokenizer, text: str) -> list[int]:
    """`text` as one byte-level token per UTF-8 byte, so every Chinese character spans three tokens."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    table = bytes_to_unicode()
    return tokenizer.convert_tokens_to_ids([table[b] for b in text.encode("utf-8")])


def test_stream_never_splits_a_chinese_character(base):
    tokenizer = base[1]
    text = "很快，好吃，味道足，量大😀"
    stream = TextStream(tokenizer)
    pieces = [stream.push(t) for t in byte_tokens(tokenizer, text)]
    pieces.append(stream.finish())
    assert "".join(pieces) == text == stream.text
    assert not any("\ufffd" in p for p in pieces)
    assert sum(1 for p in pieces if p) == len(text)  # one piece per character: nothing waits longer than needed

    stream = TextStream(tokenizer, stop=["味道足", "量大"])
    pieces = []
    for t in byte_tokens(tokenizer, text):
        pieces.append(stream.push(t))
        if stream.stopped:
            break
    pieces.append(stream.finish())
    assert stream.stopped and "".join(pieces) == "很快，好吃，" == stream.text
    # The held-back "味" (a possible start of "味道足") is never handed out before it is ruled out.
    assert "味" not in "".join(pieces)


def test_stop_prefix_is_released_when_it_does_not_complete(base):
    tokenizer = base[1]
    stream = TextStream(tokenizer, stop=["好吃吗"])
    out = [stream.push(t) for t in byte_tokens(tokenizer, "真好吃！")] + [stream.finish()]
    assert "".join(out) == "真好吃！" and not stream.stopped


def test_chat_through_the_engine(run_engine, tiny_model, adapter, tmp_path, monkeypatch):
    request = {"model": tiny_model, "adapter": adapter, "messages": MESSAGES, "max_tokens": 12, "temperature": 0.7, "seed": 4}
    code, events = run_engine("chat", request)
    assert code == 0 and events[0]["type"] == "hello" and events[-1]["type"] == "result"
    result = events[-1]["data"]
    assert set(result) == {"text", "finish_reason", "usage"}
    assert "".join(e["text"] for e in events if e["type"] == "token") == result["text"]
    assert result["usage"]["total_tokens"] == result["usage"]["prompt_tokens"] + result["usage"]["completion_tokens"]

    # In-process with stream off: no token events, and the same answer for the same seed.
    emitted: list[str] = []
    monkeypatch.setattr(generate.protocol, "emit", lambda type, **fields: emitted.append(type))
    assert generate.run(ChatRequest.model_validate({**request, "stream": False})) == result
    assert "token" not in emitted
    assert generate.run(ChatRequest.model_validate(request)) == result and "token" in emitted  # the recorder works

    missing = tmp_path / "没有这个模型"
    code, events = run_engine("chat", {"model": str(missing), "messages": MESSAGES})
    assert code == 1 and events[0]["type"] == "hello" and events[-1]["type"] == "error"
    assert events[-1]["code"] == "not_found" and events[-1]["param"] == "model"
    assert str(missing) in events[-1]["message"]
