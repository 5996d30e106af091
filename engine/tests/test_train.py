"""The LoRA recipe on the tiny model: loss falls, checkpoints are complete, label metrics are right,
and a run stopped by SIGTERM then resumed ends exactly where an uninterrupted run ends."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from conftest import run_train as run_in_process, train_request as request
from weitiao_engine.metrics import label_metrics
from weitiao_engine.protocol import EngineError, TrainRequest
from weitiao_engine.training import loss as training_loss
from weitiao_engine.training.batching import collate, epoch_batches, epoch_order
from weitiao_engine.training.data import load_examples
from weitiao_engine.training.labels import build_label_task, score_sequences
from weitiao_engine.training.loss import token_loss
from weitiao_engine.training.precision import compute_in_fp32


RESULT_KEYS = {
    "model_dir", "interrupted", "early_stopped", "steps", "total_steps", "trained_tokens", "final_train_loss",
    "final_valid_loss", "last_checkpoint", "truncated_examples", "precision", "precision_choice", "gradient_checkpointing", "packed",
}  # fmt: skip
METRICS_KEYS = {
    "step", "total_steps", "epoch", "train_loss", "train_mean_token_accuracy", "learning_rate", "grad_norm",
    "tokens_per_second", "examples_per_second", "trained_tokens", "elapsed_seconds", "eta_seconds",
}  # fmt: skip






def test_loss_falls_checkpoints_and_label_metrics(tiny_model, waimai_small, tmp_path, monkeypatch) -> None:
    raw = request(tiny_model, waimai_small, tmp_path / "job", max_steps=20, save_every_steps=8, eval_every_steps=10, label_set=["好评", "差评"])
    result, events = run_in_process(raw, monkeypatch)

    assert set(result) == RESULT_KEYS
    assert result["steps"] == result["total_steps"] == 20 and not result["interrupted"]
    train = [e for e in events if e["type"] == "metrics" and "train_loss" in e]
    assert [e["step"] for e in train] == list(range(1, 21))
    assert set(train[0]) - {"type"} == METRICS_KEYS
    assert train[-1]["epoch"] == pytest.approx(20 / 16)
    first, last = train[0]["train_loss"], sum(e["train_loss"] for e in train[-5:]) / 5
    assert last < first - 0.5, (first, last)
    assert result["final_train_loss"] == train[-1]["train_loss"]
    assert result["trained_tokens"] == train[-1]["trained_tokens"] > 0

    # Validation every 10 steps, at the epoch end (16) and at the last step; label metrics at 16 and 20.
    valid = [e for e in events if e["type"] == "metrics" and "valid_loss" in e]
    assert [e["step"] for e in valid] == [10, 16, 20]
    assert result["final_valid_loss"] == valid[-1]["valid_loss"] < valid[0]["valid_loss"]
    evals = [e for e in events if e["type"] == "eval"]
    assert [e["step"] for e in evals] == [16, 20]
    metrics = evals[-1]["label_metrics"]
    assert metrics["n"] == 128 and metrics["labels"] == ["好评", "差评"]
    assert sum(map(sum, metrics["confusion_matrix"])) == 128
    assert sum(c["support"] for c in metrics["per_class"].values()) == 128

    # Checkpoints every 8 steps, at the epoch end and at the end; each one complete and inspectable.
    checkpoints = [e for e in events if e["type"] == "checkpoint"]
    assert [e["step"] for e in checkpoints] == [8, 16, 20]
    root = tmp_path / "job" / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["step-000008", "step-000016", "step-000020"]
    for e in checkpoints:
        path = Path(e["path"])
        names = ["adapter_config.json", "adapter_model.safetensors", "manifest.json", "state.json", "training_state.pt"]
        assert sorted(p.name for p in path.iterdir()) == names
        manifest = json.loads((path / "manifest.json").read_text())
        assert manifest["step"] == e["step"] and [f["name"] for f in manifest["files"]] == [n for n in names if n != "manifest.json"]
        state = json.loads((path / "state.json").read_text())
        assert state["step"] == e["step"] and state["config"]["hyperparameters"]["learning_rate"] == 3e-3
        saved = torch.load(path / "training_state.pt", weights_only=True)
        assert saved["step"] == e["step"] and {"optimizer", "scheduler", "rng"} <= set(saved)
    assert json.loads((root / "step-000020" / "state.json").read_text())["best_valid_loss"] == min(e["valid_loss"] for e in valid)
    assert result["last_checkpoint"] == str(root / "step-000020")

    model_dir = Path(result["model_dir"])
    assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "tokenizer_config.json", "weitiao.json"} <= {
        p.name for p in model_dir.iterdir()
    }
    lineage = json.loads((model_dir / "weitiao.json").read_text())
    assert lineage["base_model"] == str(Path(tiny_model).resolve()) and lineage["request"]["label_set"] == ["好评", "差评"]
    # Training only ever touches the adapter: no stray temp directories either.
    assert sorted(p.name for p in (tmp_path / "job").iterdir()) == ["checkpoints", "model"]


def test_batched_label_scores_equal_one_by_one(tiny_model, waimai_small) -> None:
    """Padding and batching must not change a label's score (the argmax decides the prediction)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    examples = load_examples(waimai_small["validation"], "validation_file")[:12]
    task = build_label_task(tokenizer, examples, ["好评", "差评"])
    assert len(task.sequences) == 24 and task.expected == [m[-1]["content"] for m in examples]
    batched = score_sequences(model, task.sequences, task.answer_lengths, tokenizer.pad_token_id, batch_size=8)
    with torch.no_grad():
        for seq, k, score in zip(task.sequences, task.answer_lengths, batched):
            logp = torch.log_softmax(model(torch.tensor([seq])).logits[0, :-1], dim=-1)
            expected = sum(logp[len(seq) - k - 1 + j, seq[len(seq) - k + j]].item() for j in range(k))
            assert score == pytest.approx(expected, abs=1e-4)


def test_sigterm_then_resume_equals_uninterrupted(tiny_model, waimai_small, tmp_path, run_engine, train_stopped_at_step, monkeypatch) -> None:
    # Dropout on, so the restored RNG state matters. 2 epochs of 8 steps, stopped by a real SIGTERM
    # early in the first, so the resumed run skips part of an epoch and then crosses an epoch boundary.
    train = tmp_path / "train.jsonl"
    train.write_text("".join(Path(waimai_small["train"]).read_text(encoding="utf-8").splitlines(keepends=True)[:128]), encoding="utf-8")
    data = {**waimai_small, "train": str(train)}
    # modules_to_save too: the fully trained (tied) embedding and its AdamW state must survive the stop.
    lora = {"r": 4, "alpha": 8, "dropout": 0.1, "target_modules": "all-linear", "modules_to_save": ["embed_tokens"]}
    full, _ = run_in_process(request(tiny_model, data, tmp_path / "full", lora=lora), monkeypatch)
    assert full["steps"] == 16 and not full["interrupted"]

    job = tmp_path / "stopped"
    raw = request(tiny_model, data, job, lora=lora)
    stopped_events = train_stopped_at_step(raw, 2)
    stopped = stopped_events[-1]["data"]
    assert stopped["interrupted"] and stopped["model_dir"] is None
    assert 2 <= stopped["steps"] < 16, "the run must stop before its end"
    assert stopped["last_checkpoint"] == str(job / "checkpoints" / f"step-{stopped['steps']:06d}")
    assert stopped_events[-2]["type"] == "log" and stopped_events[-3]["type"] == "checkpoint"
    assert not (job / "model").exists()

    code, events = run_engine("train", {**raw, "resume": True})
    assert code == 0
    resumed = events[-1]["data"]
    first_step = next(e["step"] for e in events if e["type"] == "metrics")
    assert first_step == stopped["steps"] + 1

    assert resumed["steps"] == full["steps"] and resumed["trained_tokens"] == full["trained_tokens"]
    assert resumed["final_train_loss"] == pytest.approx(full["final_train_loss"], abs=1e-6)
    assert resumed["final_valid_loss"] == pytest.approx(full["final_valid_loss"], abs=1e-6)
    a = load_file(Path(full["model_dir"]) / "adapter_model.safetensors")
    b = load_file(Path(resumed["model_dir"]) / "adapter_model.safetensors")
    assert a.keys() == b.keys() and "base_model.model.model.embed_tokens.weight" in a
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=1e-6, rtol=0)


def test_bad_training_files_name_file_and_line(tiny_model, waimai_small, tmp_path, monkeypatch) -> None:
    bad = tmp_path / "bad.jsonl"
    good = Path(waimai_small["train"]).read_text(encoding="utf-8").splitlines()
    bad.write_text("\n".join([good[0], good[1], "{not json", good[2]]) + "\n", encoding="utf-8")
    with pytest.raises(EngineError) as e:
        run_in_process(request(tiny_model, {**waimai_small, "train": str(bad)}, tmp_path / "a"), monkeypatch)
    assert (e.value.code, e.value.param) == ("invalid_file", "training_file")
    assert e.value.message.startswith(f"{bad}:3: invalid JSON")

    bad.write_text(good[0] + "\n" + json.dumps({"messages": [{"role": "bot", "content": "x"}]}) + "\n", encoding="utf-8")
    with pytest.raises(EngineError) as e:
        run_in_process(request(tiny_model, {"train": waimai_small["train"], "validation": str(bad)}, tmp_path / "b"), monkeypatch)
    assert e.value.param == "validation_file" and e.value.message.startswith(f"{bad}:2: messages.0.role")

    with pytest.raises(EngineError) as e:
        run_in_process(request(tiny_model, {**waimai_small, "train": str(tmp_path / "missing.jsonl")}, tmp_path / "c"), monkeypatch)
    assert e.value.code == "invalid_file" and "missing.jsonl" in e.value.message


def test_label_metrics_hand_checked() -> None:
    # 3 好评 and 5 差评; the model gets 2 of the 好评 and 3 of the 差评 right.
    expected = ["好评", "好评", "好评", "差评", "差评", "差评", "差评", "差评"]
    predicted = ["好评", "好评", "差评", "差评", "差评", "差评", "好评", "好评"]
    m = label_metrics(expected, predicted, ["好评", "差评"])
    assert m["n"] == 8 and m["accuracy"] == pytest.approx(5 / 8)
    assert m["confusion_matrix"] == [[2, 1], [2, 3]]
    good, bad = m["per_class"]["好评"], m["per_class"]["差评"]
    # 好评: predicted 4 times, 2 right -> P 1/2; 3 answers, 2 found -> R 2/3; F1 = 2PR/(P+R) = 4/7
    assert (good["precision"], good["recall"], good["f1"], good["support"]) == pytest.approx((1 / 2, 2 / 3, 4 / 7, 3))
    # 差评: predicted 4 times, 3 right -> P 3/4; 5 answers, 3 found -> R 3/5; F1 = 2/3
    assert (bad["precision"], bad["recall"], bad["f1"], bad["support"]) == pytest.approx((3 / 4, 3 / 5, 2 / 3, 5))
    assert m["macro_f1"] == pytest.approx((4 / 7 + 2 / 3) / 2)  # = 13/21


def test_epoch_order_depends_only_on_seed_and_epoch() -> None:
    a = epoch_order(7, 0, 100)
    assert a == epoch_order(7, 0, 100) and sorted(a) == list(range(100))
    assert a != epoch_order(7, 1, 100) and a != epoch_order(8, 0, 100)


def test_unknown_lora_modules_are_named(tiny_model, waimai_small, tmp_path, monkeypatch) -> None:
    raw = request(tiny_model, waimai_small, tmp_path / "a", lora={"modules_to_save": ["embed_tokenz"]})
    with pytest.raises(EngineError) as e:
        run_in_process(raw, monkeypatch)
    assert (e.value.code, e.value.param) == ("invalid_request", "lora.modules_to_save") and "embed_tokenz" in e.value.message


# ------------------------------------------------------------------------------------- training controls


def test_gradient_accumulation_equals_the_bigger_batch(tiny_model, waimai_small, tmp_path, monkeypatch) -> None:
    """2 micro-batches of 8 give the update of one batch of 16 (fp32, no dropout: only summation order differs)."""
    lora = {"r": 4, "alpha": 8, "dropout": 0.0}
    hp = {"n_epochs": 1, "batch_size": 16, "learning_rate": 3e-3, "seed": 7, "bf16": "off"}
    one, _ = run_in_process(request(tiny_model, waimai_small, tmp_path / "one", lora=lora, hyperparameters=hp, max_steps=3), monkeypatch)
    hp2 = {**hp, "gradient_accumulation_steps": 2}
    two, _ = run_in_process(request(tiny_model, waimai_small, tmp_path / "two", lora=lora, hyperparameters=hp2, max_steps=3), monkeypatch)
    assert one["trained_tokens"] == two["trained_tokens"]
    assert two["final_train_loss"] == pytest.approx(one["final_train_loss"], abs=1e-5)
    assert two["final_valid_loss"] == pytest.approx(one["final_valid_loss"], abs=1e-5)
    a = load_file(Path(one["model_dir"]) / "adapter_model.safetensors")
    b = load_file(Path(two["model_dir"]) / "adapter_model.safetensors")
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=1e-5, rtol=1e-4)


def test_early_stopping_stops_and_saves(tiny_model, waimai_small, tmp_path, monkeypatch) -> None:
    # A min_delta no loss can beat: the first validation sets the best, the next one fails to improve on it.
    hp = {"n_epochs": 2, "batch_size": 16, "learning_rate": 3e-3, "seed": 7, "early_stopping_patience": 1, "early_stopping_min_delta": 100.0}
    result, events = run_in_process(request(tiny_model, waimai_small, tmp_path / "job", hyperparameters=hp, eval_every_steps=2), monkeypatch)
    assert result["early_stopped"] and not result["interrupted"]
    assert result["steps"] == 4 < result["total_steps"] == 32
    assert [e["step"] for e in events if e["type"] == "metrics" and "valid_loss" in e] == [2, 4]
    assert result["last_checkpoint"] == str(tmp_path / "job" / "checkpoints" / "step-000004")
    assert (Path(result["model_dir"]) / "adapter_model.safetensors").is_file()
    assert any(e["type"] == "log" and "early stopping at step 4" in e["message"] for e in events)


def test_bf16_modes_keep_the_loss(tiny_model, waimai_small, tmp_path, monkeypatch) -> None:
    """bf16 changes rounding only: the validation loss after the same steps stays within 2% of fp32's."""
    hp = {"n_epochs": 1, "batch_size": 16, "learning_rate": 3e-3, "seed": 7}
    runs = {}
    for mode in ("off", "on", "auto"):
        runs[mode], _ = run_in_process(request(tiny_model, waimai_small, tmp_path / mode, hyperparameters={**hp, "bf16": mode}, max_steps=6), monkeypatch)
    assert (runs["off"]["precision"], runs["on"]["precision"]) == ("fp32", "bf16")
    # auto is measured on this machine (training/precision_probe.py): the run trains with what the probe chose.
    assert runs["auto"]["precision"] == runs["auto"]["precision_choice"]["precision"]
    assert runs["auto"]["precision"] in ("fp32", "bf16", "bf16-weights")
    for mode in ("on", "auto"):
        assert runs[mode]["final_valid_loss"] == pytest.approx(runs["off"]["final_valid_loss"], rel=0.02)
        adapter = load_file(Path(runs[mode]["model_dir"]) / "adapter_model.safetensors")
        assert all(t.dtype == torch.float32 for t in adapter.values()), "trained weights stay fp32"


def test_bf16_weights_with_fp32_compute_match_fp32_on_bf16_values(tiny_model, waimai_small, monkeypatch) -> None:
    """The bf16-weights mode computes exactly what fp32 computes on the same (bf16-rounded) weights."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from weitiao_engine.chat_format import tokenize_examples

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    stored = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.bfloat16).eval()
    reference = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.bfloat16).float().eval()
    compute_in_fp32(stored.requires_grad_(False))  # as under LoRA: only frozen weights are upcast
    examples, _ = tokenize_examples(tokenizer, load_examples(waimai_small["validation"], "validation_file")[:8], 1024)
    batch = collate(examples, tokenizer.pad_token_id)
    with torch.no_grad():
        got, want = token_loss(stored, *batch)[0], token_loss(reference, *batch)[0]
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=2e-3, atol=1e-2)  # only the LM head multiplies in bf16


def test_gradient_checkpointing_gives_the_same_update(tiny_model, waimai_small, tmp_path, monkeypatch) -> None:
    hp = {"n_epochs": 1, "batch_size": 16, "learning_rate": 3e-3, "seed": 7, "bf16": "off"}
    lora = {"r": 4, "alpha": 8, "dropout": 0.0}
    plain, _ = run_in_process(request(tiny_model, waimai_small, tmp_path / "a", lora=lora, hyperparameters=hp, max_steps=2), monkeypatch)
    ckpt, _ = run_in_process(
        request(tiny_model, waimai_small, tmp_path / "b", lora=lora, hyperparameters={**hp, "gradient_checkpointing": True}, max_steps=2), monkeypatch
    )
    assert ckpt["final_train_loss"] == pytest.approx(plain["final_train_loss"], abs=1e-5)
    assert ckpt["final_valid_loss"] == pytest.approx(plain["final_valid_loss"], abs=1e-5)


def test_length_grouped_batches_partition_the_epoch_and_pad_less() -> None:
    lengths = [int(x) for x in torch.randint(5, 200, (1000,), generator=torch.Generator().manual_seed(0))]
    grouped = epoch_batches(3, 0, lengths, 8, group_by_length=True)
    plain = epoch_batches(3, 0, lengths, 8, group_by_length=False)
    assert grouped == epoch_batches(3, 0, lengths, 8, group_by_length=True), "a function of (seed, epoch)"
    assert grouped != epoch_batches(3, 1, lengths, 8, group_by_length=True)
    assert sorted(i for b in grouped for i in b) == list(range(1000)) and len(grouped) == len(plain) == 125
    padded = lambda batches: sum(len(b) * max(lengths[i] for i in b) for b in batches)  # noqa: E731
    assert padded(grouped) < 0.75 * padded(plain), (padded(grouped), padded(plain), sum(lengths))


def test_lm_head_at_labels_only_gives_the_full_head_loss(tiny_model, waimai_small, monkeypatch) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from weitiao_engine.chat_format import tokenize_examples

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    examples, _ = tokenize_examples(tokenizer, load_examples(waimai_small["validation"], "validation_file")[:16], 1024)
    batch = collate(examples, tokenizer.pad_token_id)
    with torch.no_grad():
        sliced = token_loss(model, *batch)
        monkeypatch.setattr(training_loss, "LM_HEAD_AT_LABELS_ONLY", False)
        full = token_loss(model, *batch)
        reference = torch.nn.functional.cross_entropy(model(batch[0], attention_mask=batch[1]).logits[:, :-1].flatten(0, 1), batch[2][:, 1:].flatten(), reduction="sum")
    assert sliced[1:] == full[1:] and sliced[1] == 32  # 好评/差评 + <|im_end|> per example
    torch.testing.assert_close(sliced[0], full[0], atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(sliced[0], reference, atol=1e-4, rtol=1e-5)


def test_truncation_is_counted_in_the_result(tiny_model, waimai_small, tmp_path, monkeypatch) -> None:
    hp = {"n_epochs": 1, "batch_size": 16, "learning_rate": 3e-3, "seed": 7, "max_seq_length": 80}
    result, events = run_in_process(request(tiny_model, waimai_small, tmp_path / "job", hyperparameters=hp, max_steps=1), monkeypatch)
    counts = result["truncated_examples"]
    assert counts["training"] > 0 and counts["validation"] > 0
    assert any(e["type"] == "log" and e["level"] == "warning" and f"{counts['training']} training" in e["message"] for e in events)
