"""chat_format: token ids exactly as the chat template makes them, loss only on assistant turns."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
from conftest import MULTI, SINGLE, SYSTEM, trained_text
from transformers import AutoTokenizer

from weitiao_engine import tiny
from weitiao_engine.chat_format import IGNORE_INDEX, answer_ids, count_tokens, prompt_ids, tokenize_example, tokenize_examples
from weitiao_engine.protocol import ChatMessage, CreateTinyRequest, EngineError



@pytest.fixture(scope="module")
def chatml(tiny_model: str):
    return AutoTokenizer.from_pretrained(tiny_model)


@pytest.fixture(scope="module")
def llama3(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("llama3")
    corpus = root / "corpus.txt"
    corpus.write_text("很快，好吃，味道足，量大\n送餐太慢了\n味道不错，下次还点\n好评\n差评\n" * 40, encoding="utf-8")
    request = CreateTinyRequest(
        output_dir=str(root / "m"), architecture="llama", chat_template="llama3", hidden_size=16, intermediate_size=32,
        num_attention_heads=2, num_key_value_heads=1, vocab_size=400, corpus_files=[str(corpus)],
    )  # fmt: skip
    return AutoTokenizer.from_pretrained(tiny.run(request)["path"])


@pytest.mark.parametrize("name", ["chatml", "llama3"])
def test_ids_identical_to_apply_chat_template(name: str, request: pytest.FixtureRequest) -> None:
    tokenizer = request.getfixturevalue(name)
    for messages in [SINGLE, MULTI]:
        example = tokenize_example(tokenizer, messages)
        assert example.input_ids == tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False)
        assert len(example.labels) == len(example.input_ids) and not example.truncated
    assert count_tokens(tokenizer, [SINGLE, MULTI]) == [
        len(tokenizer.apply_chat_template(m, tokenize=True, return_dict=False)) for m in [SINGLE, MULTI]
    ]
    assert prompt_ids(tokenizer, SINGLE[:2]) == tokenizer.apply_chat_template(
        SINGLE[:2], tokenize=True, add_generation_prompt=True, return_dict=False
    )


def test_mask_is_assistant_content_and_end_token(chatml, llama3) -> None:
    assert trained_text(chatml, tokenize_example(chatml, SINGLE)) == ["好评<|im_end|>"]
    assert trained_text(llama3, tokenize_example(llama3, SINGLE)) == ["好评<|eot_id|>"]
    # The newline ChatML puts after <|im_end|> is template scaffolding, not something the model writes.
    example = tokenize_example(chatml, SINGLE)
    assert example.labels[-1] == IGNORE_INDEX and chatml.decode(example.input_ids[-1:]) == "\n"
    assert example.n_trained == len(chatml.encode("好评", add_special_tokens=False)) + 1


def test_multi_turn_and_weight_zero(chatml, llama3) -> None:
    for tokenizer, end in [(chatml, "<|im_end|>"), (llama3, "<|eot_id|>")]:
        assert trained_text(tokenizer, tokenize_example(tokenizer, MULTI)) == [f"差评{end}", f"好评{end}"]
        skipped = copy.deepcopy(MULTI)
        skipped[2]["weight"] = 0
        example = tokenize_example(tokenizer, skipped)
        assert trained_text(tokenizer, example) == [f"好评{end}"]
        # weight is OpenAI's training field, not part of the text: the ids do not change.
        assert example.input_ids == tokenize_example(tokenizer, MULTI).input_ids
    # pydantic messages (as the engine receives them) work the same as dicts.
    as_models = [ChatMessage(**m) for m in MULTI]
    assert tokenize_example(chatml, as_models) == tokenize_example(chatml, MULTI)


def test_truncation_is_counted(chatml) -> None:
    full = len(tokenize_example(chatml, MULTI).input_ids)
    examples, n_truncated = tokenize_examples(chatml, [SINGLE, MULTI, MULTI], max_seq_length=full - 3)
    assert n_truncated == 2
    assert [len(e.input_ids) for e in examples[1:]] == [full - 3, full - 3]
    assert [e.truncated for e in examples] == [False, True, True]
    assert examples[1].input_ids == tokenize_example(chatml, MULTI).input_ids[: full - 3]


def test_template_that_rewrites_history_is_refused(chatml) -> None:
    # Like reasoning templates that drop past turns' thoughts: the last assistant turn renders differently.
    broken = copy.copy(chatml)
    broken.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
        "{% if m['role'] == 'assistant' and not loop.last %}(past){% endif %}{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    tokenize_example(broken, SINGLE)  # one assistant turn: still a prefix
    with pytest.raises(EngineError, match="incrementally") as e:
        tokenize_example(broken, MULTI)
    assert e.value.code == "invalid_request"


def test_answer_ids_for_label_scoring(chatml, llama3) -> None:
    for tokenizer, end in [(chatml, "<|im_end|>"), (llama3, "<|eot_id|>")]:
        prompt, answers = answer_ids(tokenizer, SINGLE[:2], ["好评", "差评"])
        assert prompt == prompt_ids(tokenizer, SINGLE[:2])
        assert [tokenizer.decode(a) for a in answers] == [f"好评{end}", f"差评{end}"]
        # prompt + answer is exactly the training sequence up to the end-of-turn token.
        example = tokenize_example(tokenizer, SINGLE)
        assert example.input_ids[: len(prompt) + len(answers[0])] == prompt + answers[0]


def test_count_tokens_command(tiny_model, chatml, run_engine) -> None:
    examples = [{"messages": SINGLE}, {"messages": MULTI}, {"messages": [{"role": "user", "content": "你好"}]}]
    code, events = run_engine("count-tokens", {"model": tiny_model, "examples": examples})
    assert code == 0 and events[-1]["type"] == "result"
    expected = [len(chatml.apply_chat_template(e["messages"], tokenize=True, return_dict=False)) for e in examples]
    # Trained tokens: the answer's tokens and <|im_end|> per assistant turn, nothing for a prompt alone.
    answer = lambda text: len(chatml(text, add_special_tokens=False)["input_ids"]) + 1  # noqa: E731
    trained = [answer("好评"), answer("差评") + answer("好评"), 0]
    assert events[-1]["data"] == {"counts": expected, "trained_counts": trained, "model_max_length": 512}

    code, events = run_engine("count-tokens", {"model": "/nonexistent/model", "examples": examples})
    assert code == 1 and (events[-1]["code"], events[-1]["param"]) == ("not_found", "model")


# ------------------------------------------------------------------------------------------------ GLM-4
# GLM-4 writes no end-of-turn token: the next role tag (<|user|>) closes an assistant turn and nothing follows
# the last one. The model must still learn to stop, so <|user|> is trained after each answer (appended after the
# last, as GLM-4's own fine-tuning script does) and generation stops at it.


@pytest.fixture(scope="module")
def glm4(glm4_model: str):
    return AutoTokenizer.from_pretrained(glm4_model)


def test_glm4_ids_are_the_templates_plus_the_closing_tag(glm4) -> None:
    user = glm4.convert_tokens_to_ids("<|user|>")
    assert glm4.apply_chat_template(SINGLE, tokenize=False).startswith("[gMASK]<sop><|system|>\n你是")
    for messages in [SINGLE, MULTI]:
        template = glm4.apply_chat_template(messages, tokenize=True, return_dict=False)
        example = tokenize_example(glm4, messages)
        assert example.input_ids == template + [user]
        # The appended token is exactly what the template writes next when the conversation goes on.
        more = glm4.apply_chat_template(messages + [{"role": "user", "content": "再来一单"}], tokenize=True, return_dict=False)
        assert example.input_ids == more[: len(template) + 1]
        assert count_tokens(glm4, [messages]) == [len(example.input_ids)]
    # Nothing to train at the end (a prompt, or a last turn with weight 0): nothing appended, ids identical.
    assert tokenize_example(glm4, SINGLE[:2]).input_ids == glm4.apply_chat_template(SINGLE[:2], tokenize=True, return_dict=False)
    unweighted = copy.deepcopy(MULTI)
    unweighted[-1]["weight"] = 0
    assert tokenize_example(glm4, unweighted).input_ids == glm4.apply_chat_template(MULTI, tokenize=True, return_dict=False)
    assert prompt_ids(glm4, SINGLE[:2]) == glm4.apply_chat_template(SINGLE[:2], tokenize=True, add_generation_prompt=True, return_dict=False)


def test_glm4_trains_every_answer_and_its_closing_tag(glm4) -> None:
    # The newline after <|assistant|> belongs to the answer in GLM-4's template (the generation prompt ends at the tag).
    assert trained_text(glm4, tokenize_example(glm4, SINGLE)) == ["\n好评<|user|>"]
    assert trained_text(glm4, tokenize_example(glm4, MULTI)) == ["\n差评<|user|>", "\n好评<|user|>"]
    for index, kept in [(2, ["\n好评<|user|>"]), (4, ["\n差评<|user|>"])]:
        skipped = copy.deepcopy(MULTI)
        skipped[index]["weight"] = 0
        assert trained_text(glm4, tokenize_example(glm4, skipped)) == kept
    # Label scoring sees the same answer tokens training trains.
    prompt, answers = answer_ids(glm4, SINGLE[:2], ["好评", "差评"])
    assert [glm4.decode(a) for a in answers] == ["\n好评<|user|>", "\n差评<|user|>"]
    assert tokenize_example(glm4, SINGLE).input_ids == prompt + answers[0]


def test_glm4_generation_stops_at_the_closing_tag(glm4_model, waimai_small, tmp_path, run_engine) -> None:
    from transformers import AutoModelForCausalLM

    from weitiao_engine.loading import stop_token_ids

    tokenizer = AutoTokenizer.from_pretrained(glm4_model)
    model = AutoModelForCausalLM.from_pretrained(glm4_model)
    # Not in the model's generation config (eos only): the template alone makes <|user|> a stop token.
    assert model.generation_config.eos_token_id == [tokenizer.eos_token_id]
    assert tokenizer.convert_tokens_to_ids("<|user|>") in stop_token_ids(model, tokenizer)

    # Trained on GLM-4-rendered waimai answers, the model writes one label and stops there by itself.
    raw = {
        "base_model": glm4_model, "output_dir": str(tmp_path / "job"), "training_file": waimai_small["train"], "method": "full",
        "hyperparameters": {"n_epochs": 1, "batch_size": 16, "learning_rate": 3e-3, "seed": 7, "bf16": "off"}, "threads": 1,
    }  # fmt: skip
    code, events = run_engine("train", raw)
    assert code == 0, events[-1]
    model_dir = events[-1]["data"]["model_dir"]
    conversation = [SYSTEM, {"role": "user", "content": "味道很好，送餐很快"}]
    code, events = run_engine("chat", {"model": model_dir, "messages": conversation, "max_tokens": 16, "temperature": 0, "stream": False})
    assert code == 0, events[-1]
    reply = events[-1]["data"]
    assert reply["finish_reason"] == "stop" and reply["usage"]["completion_tokens"] < 16, reply
    assert reply["text"].strip() in ("好评", "差评"), reply
    # Its last token was the stop: the answer's tokens as training labelled them, <|user|> included.
    assert reply["usage"]["completion_tokens"] == len(answer_ids(tokenizer, conversation, [reply["text"].strip()])[1][0])
