"""DPO on the tiny model with synthetic preference pairs from waimai (preferred = the right label, non-preferred
= the wrong one): held-out reward accuracy rises well above chance, loss falls, the reference is the base
with the adapter off, stop + resume equals one run, and bad lines name file, line and field."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import LABELS, SYSTEM_PROMPT, assert_same_weights, train_request, waimai_rows, write_jsonl
from safetensors.torch import load_file
from test_full_finetune import run_in_process

from weitiao_engine.protocol import EngineError
from weitiao_engine.recipes import dpo


def preference_pair(row: dict[str, str]) -> dict[str, Any]:
    """One waimai row in OpenAI's preference format: the right label preferred over the wrong one."""
    right = LABELS[row["label"]]
    wrong = LABELS["1" if row["label"] == "0" else "0"]
    return {
        "input": {"messages": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": row["review"]}]},
        "preferred_output": [{"role": "assistant", "content": right}],
        "non_preferred_output": [{"role": "assistant", "content": wrong}],
    }


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """256 training and 128 held-out preference pairs (a seeded sample of both labels)."""
    root = tmp_path_factory.mktemp("pairs")
    rows = random.Random(1).sample(waimai_rows(), 384)
    return {
        "train": str(write_jsonl(root / "train.jsonl", [preference_pair(r) for r in rows[:256]])),
        "validation": str(write_jsonl(root / "validation.jsonl", [preference_pair(r) for r in rows[256:]])),
    }


def request(tiny_model: str, data: dict[str, str], output_dir: Path, **overrides: Any) -> dict[str, Any]:
    own = {
        "method": "dpo",
        "dpo": {"beta": 0.5},
        # A random-weight base: LoRA alone cannot use its tiny random embeddings, so they train too.
        "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "modules_to_save": ["embed_tokens"]},
    }
    return train_request(tiny_model, data, output_dir, **{**own, **overrides})


def test_dpo_raises_held_out_reward_accuracy(tiny_model, pairs, tmp_path, monkeypatch) -> None:
    result, events = run_in_process(request(tiny_model, pairs, tmp_path / "job", eval_every_steps=8), monkeypatch)
    assert result["steps"] == 32 and not result["interrupted"]

    train = [e for e in events if e["type"] == "metrics" and "train_loss" in e]
    assert [e["step"] for e in train] == list(range(1, 33))
    # Step 1: the adapter's B is zero, so the policy is the reference: loss log 2, no margin.
    assert train[0]["train_loss"] == pytest.approx(0.6931, abs=1e-3) and train[0]["rewards/margin"] == pytest.approx(0, abs=1e-4)
    first, last = train[0]["train_loss"], sum(e["train_loss"] for e in train[-8:]) / 8
    assert last < first - 0.2, (first, last)
    assert all(0 <= e["rewards/accuracy"] <= 1 for e in train)

    evals = [e for e in events if e["type"] == "eval"]
    assert [e["step"] for e in evals] == [16, 32]  # epoch ends
    final = evals[-1]
    assert final["rewards/accuracy"] >= 0.7, final  # chance is 0.5
    assert final["rewards/margin"] > 0.3 and final["valid_loss"] < 0.69
    assert result["final_valid_loss"] == final["valid_loss"]

    model_dir = Path(result["model_dir"])
    assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "weitiao.json"} <= {p.name for p in model_dir.iterdir()}
    assert json.loads((model_dir / "weitiao.json").read_text())["method"] == "dpo"


def test_reference_is_the_base_with_the_adapter_disabled(tiny_model, pairs) -> None:
    """No second model: the reference log-probabilities are the plain base model's, whatever the adapter holds."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    base = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    data = dpo.tokenize_pairs(tokenizer, dpo.load_pairs(pairs["validation"], "validation_file")[:6], 512, pairs["validation"], "validation_file")
    with torch.no_grad():
        expected = dpo.sequence_logps(base, data.chosen, tokenizer.pad_token_id)
    policy = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model), LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    ref_chosen, _ = dpo.reference_logps(policy, data, tokenizer.pad_token_id)
    torch.testing.assert_close(ref_chosen, expected, atol=1e-5, rtol=0)
    with torch.no_grad():
        assert not torch.allclose(dpo.sequence_logps(policy, data.chosen, tokenizer.pad_token_id), expected, atol=1e-3)
    # Only the answer tokens count: 好评/差评 plus <|im_end|>, two or three tokens each.
    assert all(1 <= e.n_trained <= 4 for e in data.chosen + data.rejected)


def test_dpo_stop_then_resume_equals_uninterrupted(tiny_model, pairs, tmp_path, monkeypatch) -> None:
    train = tmp_path / "train.jsonl"
    train.write_text("".join(Path(pairs["train"]).read_text(encoding="utf-8").splitlines(keepends=True)[:48]), encoding="utf-8")
    valid = tmp_path / "valid.jsonl"
    valid.write_text("".join(Path(pairs["validation"]).read_text(encoding="utf-8").splitlines(keepends=True)[:16]), encoding="utf-8")
    data = {"train": str(train), "validation": str(valid)}
    lora = {"r": 4, "alpha": 8, "dropout": 0.1, "modules_to_save": ["embed_tokens"]}  # dropout: the RNG state matters
    full, _ = run_in_process(request(tiny_model, data, tmp_path / "full", lora=lora), monkeypatch)
    assert full["steps"] == 6

    raw = request(tiny_model, data, tmp_path / "stopped", lora=lora)
    stopped, _ = run_in_process(raw, monkeypatch, stop_at_step=2)
    assert stopped["interrupted"] and stopped["steps"] == 2
    resumed, events = run_in_process({**raw, "resume": True}, monkeypatch)
    assert next(e["step"] for e in events if e["type"] == "metrics") == 3
    assert resumed["final_train_loss"] == pytest.approx(full["final_train_loss"], abs=1e-6)
    assert resumed["final_valid_loss"] == pytest.approx(full["final_valid_loss"], abs=1e-6)
    assert_same_weights(full["model_dir"], resumed["model_dir"], "adapter_model.safetensors")


def test_bad_preference_lines_name_file_line_and_field(tiny_model, pairs, tmp_path, monkeypatch) -> None:
    good = Path(pairs["train"]).read_text(encoding="utf-8").splitlines()
    bad = tmp_path / "bad.jsonl"
    broken = json.loads(good[1])
    del broken["non_preferred_output"]
    bad.write_text("\n".join([good[0], json.dumps(broken, ensure_ascii=False), good[2]]) + "\n", encoding="utf-8")
    with pytest.raises(EngineError) as e:
        run_in_process(request(tiny_model, {**pairs, "train": str(bad)}, tmp_path / "a"), monkeypatch)
    assert (e.value.code, e.value.param) == ("invalid_file", "training_file")
    assert e.value.message.startswith(f"{bad}:2: non_preferred_output")

    wrong_role = json.loads(good[0])
    wrong_role["preferred_output"][0]["role"] = "user"
    bad.write_text(json.dumps(wrong_role, ensure_ascii=False) + "\n", encoding="utf-8")
    with pytest.raises(EngineError) as e:
        run_in_process(request(tiny_model, {"train": pairs["train"], "validation": str(bad)}, tmp_path / "b"), monkeypatch)
    assert e.value.param == "validation_file" and e.value.message.startswith(f"{bad}:1: preferred_output")


def test_dpo_gradient_accumulation_equals_one_pass(tiny_model, pairs, tmp_path, monkeypatch) -> None:
    train = tmp_path / "train.jsonl"
    train.write_text("".join(Path(pairs["train"]).read_text(encoding="utf-8").splitlines(keepends=True)[:32]), encoding="utf-8")
    runs = {}
    for k in (1, 4):
        hp = {"n_epochs": 1, "batch_size": 16, "learning_rate": 3e-3, "seed": 7, "gradient_accumulation_steps": k}
        runs[k], _ = run_in_process(request(tiny_model, {"train": str(train), "validation": None}, tmp_path / f"acc{k}", validation_file=None, hyperparameters=hp), monkeypatch)
    assert runs[4]["final_train_loss"] == pytest.approx(runs[1]["final_train_loss"], abs=1e-5)
    assert_same_weights(runs[1]["model_dir"], runs[4]["model_dir"], "adapter_model.safetensors", atol=1e-5)


def small_pairs(pairs: dict[str, str], tmp_path: Path, n_train: int, n_valid: int) -> dict[str, str]:
    out = {}
    for key, n in (("train", n_train), ("validation", n_valid)):
        path = tmp_path / f"{key}-{n}.jsonl"
        path.write_text("".join(Path(pairs[key]).read_text(encoding="utf-8").splitlines(keepends=True)[:n]), encoding="utf-8")
        out[key] = str(path)
    return out


def test_dpo_early_stopping_on_the_validation_dpo_loss(tiny_model, pairs, tmp_path, monkeypatch) -> None:
    # A min_delta no loss can beat: the first validation sets the best, the next one fails to improve on it.
    data = small_pairs(pairs, tmp_path, 64, 16)  # 4 steps per epoch, 2 epochs
    hp = {"n_epochs": 2, "batch_size": 16, "learning_rate": 3e-3, "seed": 7, "early_stopping_patience": 1, "early_stopping_min_delta": 100.0}
    result, events = run_in_process(request(tiny_model, data, tmp_path / "job", hyperparameters=hp, eval_every_steps=2), monkeypatch)
    assert result["early_stopped"] and not result["interrupted"]
    assert result["steps"] == 4 < result["total_steps"] == 8
    assert [e["step"] for e in events if e["type"] == "metrics" and "valid_loss" in e] == [2, 4]
    assert result["last_checkpoint"] == str(tmp_path / "job" / "checkpoints" / "step-000004")
    assert (Path(result["model_dir"]) / "adapter_model.safetensors").is_file()
    assert any(e["type"] == "log" and "early stopping at step 4" in e["message"] for e in events)

    # Without early stopping the same run goes on to the end.
    hp_off = {k: v for k, v in hp.items() if not k.startswith("early_stopping")}
    result, _ = run_in_process(request(tiny_model, data, tmp_path / "on", hyperparameters=hp_off, eval_every_steps=2), monkeypatch)
    assert not result["early_stopped"] and result["steps"] == 8


def test_dpo_bf16_trains_with_the_reference_in_the_same_precision(tiny_model, pairs, tmp_path, monkeypatch) -> None:
    data = small_pairs(pairs, tmp_path, 96, 32)
    hp = {"n_epochs": 1, "batch_size": 16, "learning_rate": 3e-3, "seed": 7, "bf16": "on"}
    result, events = run_in_process(request(tiny_model, data, tmp_path / "job", hyperparameters=hp), monkeypatch)
    assert result["precision"] == "bf16" and result["steps"] == 6
    train = [e for e in events if e["type"] == "metrics" and "train_loss" in e]
    # Step 1: policy and reference are computed alike (bf16 autocast, zero B), so the loss is log 2 up to bf16
    # rounding (batches padded differently round differently).
    assert train[0]["train_loss"] == pytest.approx(0.6931, abs=1e-3) and train[0]["rewards/margin"] == pytest.approx(0, abs=2e-3)
    assert train[-1]["train_loss"] < train[0]["train_loss"] - 0.1, [e["train_loss"] for e in train]
    adapter = load_file(Path(result["model_dir"]) / "adapter_model.safetensors")
    assert {t.dtype for t in adapter.values()} == {torch.float32}, "trained weights stay fp32"
