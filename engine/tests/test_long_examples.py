"""Examples longer than max_seq_length (issue 18): truncate keeps the system message and the whole answer and
cuts the earliest prompt tokens; skip leaves them out; error fails naming them. On the tiny model's ChatML tokenizer."""

from __future__ import annotations

import pytest
from conftest import trained_text
from transformers import AutoTokenizer

from weitiao_engine.chat_format import IGNORE_INDEX, tokenize_examples
from weitiao_engine.protocol import EngineError, TrainRequest
from weitiao_engine.training.data import tokenize_sft

SYSTEM = {"role": "system", "content": "你是一位酒店评论好评差评评论专家。"}
SHORT = [SYSTEM, {"role": "user", "content": "干净"}, {"role": "assistant", "content": "好评"}]
LONG = [SYSTEM, {"role": "user", "content": "房间很大，早餐一般，" * 40 + "总的来说还不错"}, {"role": "assistant", "content": "好评"}]


@pytest.fixture(scope="module")
def chatml(tiny_model: str):
    return AutoTokenizer.from_pretrained(tiny_model)


def test_truncate_keeps_system_and_answer(chatml) -> None:
    full = tokenize_examples(chatml, [LONG])[0][0]
    system_ids = chatml.apply_chat_template([SYSTEM], tokenize=True, return_dict=False)
    limit = len(system_ids) + 30
    assert len(full.input_ids) > limit
    (cut,), n = tokenize_examples(chatml, [LONG], limit, keep_answer=True)
    assert n == 1 and cut.truncated and len(cut.input_ids) == limit
    assert cut.input_ids[: len(system_ids)] == system_ids  # the system message is whole
    assert cut.input_ids[-12:] == full.input_ids[-12:]  # the end (user's last words, the answer) is whole
    assert trained_text(chatml, cut) == ["好评<|im_end|>"] == trained_text(chatml, full)
    # The old behaviour, cutting the end, loses the answer: what keep_answer is for.
    (end_cut,), _ = tokenize_examples(chatml, [LONG], limit)
    assert all(label == IGNORE_INDEX for label in end_cut.labels)


def _request(tmp_path, policy: str, max_len: int) -> TrainRequest:
    return TrainRequest.model_validate({
        "base_model": "unused", "output_dir": str(tmp_path), "training_file": "train.jsonl",
        "hyperparameters": {"n_epochs": 1, "batch_size": 2, "learning_rate": 1e-3, "max_seq_length": max_len, "long_examples": policy},
    })  # fmt: skip


def test_policies_in_tokenize_sft(chatml, tmp_path) -> None:
    max_len = len(tokenize_examples(chatml, [SHORT])[0][0].input_ids) + 20
    data = [SHORT, LONG, SHORT, LONG]
    train, valid, long = tokenize_sft(chatml, _request(tmp_path, "truncate", max_len), data, [LONG])
    assert long == (2, 1) and len(train) == 4 and len(valid) == 1
    assert all(len(e.input_ids) <= max_len and trained_text(chatml, e) == ["好评<|im_end|>"] for e in train)

    train, valid, long = tokenize_sft(chatml, _request(tmp_path, "skip", max_len), data, [SHORT, LONG])
    assert long == (2, 1) and len(train) == 2 and len(valid) == 1

    with pytest.raises(EngineError) as e:
        tokenize_sft(chatml, _request(tmp_path, "error", max_len), data, [])
    assert e.value.code == "invalid_file" and "training examples [2, 4]" in str(e.value)
