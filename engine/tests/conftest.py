"""Shared fixtures: a tiny real model and small chat files made from the waimai reviews, built once per session.

    tiny_model    path of a 2-layer, 64-wide Qwen2 (ChatML, vocab 1024) with a tokenizer trained on 2,000 reviews
    waimai_small  {"train": path, "validation": path}: 256 / 128 chat examples (system, review, 好评/差评)
    run_engine    run(command, request) -> (returncode, events): `python -m weitiao_engine` as a subprocess
"""

from __future__ import annotations

import csv
import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest

ENGINE_DIR = Path(__file__).resolve().parents[1]
REPO_ROOT = ENGINE_DIR.parent
WAIMAI_CSV = (REPO_ROOT / ".." / "shared" / "data" / "waimai_10k.csv").resolve()
SYSTEM_PROMPT = "你是一位外卖评论好评差评评论专家。"
LABELS = {"1": "好评", "0": "差评"}
# Conversations for the chat-format tests: one turn, and two assistant turns after one system prompt.
SYSTEM = {"role": "system", "content": SYSTEM_PROMPT}
SINGLE = [SYSTEM, {"role": "user", "content": "很快，好吃，味道足，量大"}, {"role": "assistant", "content": "好评"}]
MULTI = [
    SYSTEM,
    {"role": "user", "content": "送餐太慢了"},
    {"role": "assistant", "content": "差评"},
    {"role": "user", "content": "味道不错，下次还点"},
    {"role": "assistant", "content": "好评"},
]

if str(ENGINE_DIR) not in sys.path:
    sys.path.insert(0, str(ENGINE_DIR))


def waimai_rows() -> list[dict[str, str]]:
    """Every row of the waimai CSV as {label, review} (csv module: reviews contain commas and quotes)."""
    if not WAIMAI_CSV.exists():
        pytest.skip(f"{WAIMAI_CSV} is not present")
    with WAIMAI_CSV.open(encoding="utf-8-sig", newline="") as f:
        return list(csv.DictReader(f))


def chat_example(row: dict[str, str]) -> dict[str, Any]:
    """One waimai row in OpenAI's chat fine-tuning format."""
    return {
        "messages": [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": row["review"]},
            {"role": "assistant", "content": LABELS[row["label"]]},
        ]
    }


def write_jsonl(path: Path, examples: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in examples), encoding="utf-8")
    return path


def train_request(tiny_model: str, data: dict[str, str], output_dir: Path, **overrides: Any) -> dict[str, Any]:
    """A `train` request on the tiny model and a data fixture ({"train", "validation"}): the settings the recipe
    tests share; `overrides` replace whole top-level fields (method, lora, hyperparameters…)."""
    base = {
        "base_model": tiny_model,
        "output_dir": str(output_dir),
        "training_file": data["train"],
        "validation_file": data["validation"],
        "hyperparameters": {"n_epochs": 2, "batch_size": 16, "learning_rate": 3e-3, "seed": 7},
        "threads": 1,  # the same reductions in every run, and the machine is shared
    }
    return {**base, **overrides}


def run_train(raw: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Runs `train` (the recipe dispatcher, as __main__ does) in this process; (result, its stdout events)."""
    import io

    from weitiao_engine import protocol, recipes
    from weitiao_engine.protocol import TrainRequest

    out = io.StringIO()
    monkeypatch.setattr(protocol, "_out", out)
    result = recipes.run(TrainRequest.model_validate(raw))
    return result, [json.loads(line) for line in out.getvalue().splitlines()]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A 2-layer, 64-wide random-weight Qwen2 whose tokenizer is trained on 2,000 reviews of both labels."""
    from weitiao_engine import tiny
    from weitiao_engine.protocol import CreateTinyRequest

    root = tmp_path_factory.mktemp("tiny")
    # The file is sorted by label, so sample across it: the tokenizer must see 差评 reviews too.
    rows = random.Random(0).sample(waimai_rows(), 2000)
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(r["review"] for r in rows) + "\n", encoding="utf-8")
    request = CreateTinyRequest(
        output_dir=str(root / "qwen2-tiny"),
        architecture="qwen2",
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=256,
        vocab_size=1024,
        max_position_embeddings=512,
        corpus_files=[str(corpus)],
        chat_template="chatml",
        seed=0,
    )
    return tiny.run(request)["path"]


@pytest.fixture(scope="session")
def glm4_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The tiny Qwen2 shape with GLM-4's tokenizer conventions: its special tokens (in GLM-4's id order), eos
    <|endoftext|> and chat template. Its generation config stops at eos only, so stopping at <|user|> must come
    from the template (real GLM-4 lists <|endoftext|>, <|user|>, <|observation|> there)."""
    from weitiao_engine import tiny
    from weitiao_engine.protocol import CreateTinyRequest

    root = tmp_path_factory.mktemp("glm4")
    rows = random.Random(0).sample(waimai_rows(), 2000)
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(r["review"] for r in rows) + "\n", encoding="utf-8")
    request = CreateTinyRequest(
        output_dir=str(root / "glm4-tiny"), architecture="qwen2", chat_template="glm4", hidden_size=64, intermediate_size=256,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, vocab_size=1024,
        corpus_files=[str(corpus)], seed=0,
    )  # fmt: skip
    return tiny.run(request)["path"]


@pytest.fixture(scope="session")
def waimai_small(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """256 training and 128 validation chat examples, a seeded sample of the waimai file (both labels)."""
    root = tmp_path_factory.mktemp("waimai")
    rows = random.Random(1).sample(waimai_rows(), 384)
    return {
        "train": str(write_jsonl(root / "train.jsonl", [chat_example(r) for r in rows[:256]])),
        "validation": str(write_jsonl(root / "validation.jsonl", [chat_example(r) for r in rows[256:]])),
    }


@pytest.fixture(scope="session")
def run_engine() -> Callable[..., tuple[int, list[dict[str, Any]]]]:
    """Runs `python -m weitiao_engine <command>` with `request` on stdin; returns (exit code, events)."""

    def run(command: str, request: dict[str, Any], timeout: float = 300) -> tuple[int, list[dict[str, Any]]]:
        env = {**os.environ, "PYTHONPATH": str(ENGINE_DIR), "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
        proc = subprocess.run(
            [sys.executable, "-m", "weitiao_engine", command],
            input=json.dumps(request, ensure_ascii=False) + "\n",
            capture_output=True,
            text=True,
            cwd=ENGINE_DIR,
            env=env,
            timeout=timeout,
        )
        events = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
        if proc.returncode != 0 and not any(e["type"] == "error" for e in events):
            raise AssertionError(f"engine {command} crashed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        return proc.returncode, events

    return run


@pytest.fixture(scope="session")
def adapter(tiny_model: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A LoRA adapter with random (non-zero) B matrices, so it really changes the model's outputs (inference tests)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(7)
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
    out = tmp_path_factory.mktemp("adapter") / "lora"
    peft_model.save_pretrained(str(out))
    return str(out)


@pytest.fixture(scope="module")
def base(tiny_model: str):
    from weitiao_engine.loading import load_model

    return load_model(tiny_model)


@pytest.fixture(scope="module")
def tuned(tiny_model: str, adapter: str):
    from weitiao_engine.loading import load_model

    return load_model(tiny_model, adapter)


@pytest.fixture
def train_stopped_at_step() -> Callable[[dict[str, Any], int], list[dict[str, Any]]]:
    """Runs `train` as a real subprocess and sends it SIGTERM once it reports `step`; returns its events
    (it must exit 0: the recipe finishes the step, checkpoints and reports `interrupted`)."""

    def run(request: dict[str, Any], step: int) -> list[dict[str, Any]]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "weitiao_engine", "train"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ENGINE_DIR,
            env={**os.environ, "PYTHONPATH": str(ENGINE_DIR), "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        proc.stdin.write(json.dumps(request) + "\n")
        proc.stdin.close()
        events = []
        for line in proc.stdout:
            events.append(json.loads(line))
            if events[-1]["type"] == "metrics" and events[-1].get("step") == step:
                proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0
        return events

    return run


def trained_text(tokenizer, example) -> list[str]:
    """The trained spans of a tokenized example, each decoded (consecutive labelled positions form one span)."""
    from weitiao_engine.chat_format import IGNORE_INDEX

    spans, current = [], []
    for token, label in zip(example.input_ids, example.labels):
        if label != IGNORE_INDEX:
            assert label == token
            current.append(token)
        elif current:
            spans.append(current)
            current = []
    if current:
        spans.append(current)
    return [tokenizer.decode(s) for s in spans]


def assert_same_weights(dir_a: str, dir_b: str, filename: str, atol: float = 1e-6) -> None:
    """Every tensor of `filename` in two saved model/adapter directories is equal within `atol`."""
    import torch
    from safetensors.torch import load_file

    a, b = load_file(Path(dir_a) / filename), load_file(Path(dir_b) / filename)
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=atol, rtol=0)
