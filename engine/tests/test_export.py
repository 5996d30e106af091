"""`export` on the tiny Qwen2 (ChatML) and Llama (Llama 3 template) models: HF folders equal the PEFT model,
GGUF metadata/tensors/vocabulary read back right, and llama.cpp itself (node-llama-cpp) loads the GGUFs and
answers token for token as the engine does, merged and as base + LoRA GGUF."""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from conftest import REPO_ROOT, run_train, train_request, waimai_rows

from weitiao_engine import export
from weitiao_engine.chat_format import prompt_ids, render
from weitiao_engine.loading import load_model, stop_token_ids
from weitiao_engine.protocol import CreateTinyRequest, EngineError, ExportRequest

LIBLLAMA = REPO_ROOT / "node_modules/@node-llama-cpp/linux-x64/bins/linux-x64/libllama.v0.5.0.so"
GREEDY_SCRIPT = Path(__file__).with_name("llamacpp_greedy.ts")
SYSTEM = {"role": "system", "content": "你是一位外卖评论好评差评评论专家。"}


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def llama_model(tmp_path_factory) -> str:
    """The conftest tiny shape as a Llama with Llama 3's template and special tokens."""
    from weitiao_engine import tiny

    root = tmp_path_factory.mktemp("llama")
    rows = random.Random(0).sample(waimai_rows(), 2000)
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(r["review"] for r in rows) + "\n", encoding="utf-8")
    request = CreateTinyRequest(
        output_dir=str(root / "llama-tiny"), architecture="llama", chat_template="llama3", hidden_size=64, intermediate_size=256,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, vocab_size=1024,
        corpus_files=[str(corpus)], seed=0,
    )  # fmt: skip
    return tiny.run(request)["path"]


def random_adapter(base: str, out: Path, **lora: Any) -> str:
    """A LoRA with random, non-zero B matrices, so it really changes the outputs."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(7)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False, **lora))
    if lora.get("modules_to_save"):  # a trained copy that differs from the base's
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "modules_to_save" in name:
                    p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(str(out))
    return str(out)


@pytest.fixture(scope="module")
def models(tiny_model, llama_model, waimai_small, tmp_path_factory) -> dict[str, dict[str, str]]:
    """Per architecture: the base and a LoRA adapter fine-tuned on waimai reviews (it answers 好评/差评 and ends
    its turn), trained by the engine's own recipe."""
    out = {}
    for arch, base in (("qwen2", tiny_model), ("llama", llama_model)):
        root = tmp_path_factory.mktemp(f"ft-{arch}")
        raw = train_request(base, waimai_small, root, hyperparameters={"n_epochs": 1, "batch_size": 16, "learning_rate": 3e-3, "seed": 7})
        with pytest.MonkeyPatch.context() as mp:
            result, _ = run_train(raw, mp)
        out[arch] = {"base": base, "adapter": result["model_dir"]}
    return out


def export_(tmp_path: Path, **fields: Any) -> dict[str, Any]:
    """Runs `export` in this process."""
    return export.run(ExportRequest.model_validate({"output_dir": str(tmp_path / "export"), **fields}))


# ----------------------------------------------------------------------------------------- engine vs llama.cpp


def engine_greedy(model: Any, tokenizer: Any, ids: list[int], max_tokens: int) -> list[int]:
    """The engine's greedy tokens (as generate.chat_completion picks them), the stop token included."""
    stops = stop_token_ids(model, tokenizer)
    out: list[int] = []
    past, step = None, torch.tensor([ids])
    with torch.no_grad():
        while len(out) < max_tokens:
            result = model(input_ids=step, past_key_values=past, use_cache=True)
            past, token = result.past_key_values, int(result.logits[0, -1].argmax())
            out.append(token)
            if token in stops:
                break
            step = torch.tensor([[token]])
    return out


def llamacpp_greedy(tmp_path: Path, gguf: str, prompts: list[str], lora: str | None = None, check: list[int] = (), max_tokens: int = 16) -> dict[str, Any]:
    """Greedy tokens from llama.cpp (node-llama-cpp) for rendered prompts (engine/tests/llamacpp_greedy.ts)."""
    request = tmp_path / "greedy.json"
    request.write_text(json.dumps({"model": gguf, "lora": lora, "prompts": prompts, "max_tokens": max_tokens, "check_tokens": list(check)}), encoding="utf-8")
    proc = subprocess.run(["node", "--import", "tsx", str(GREEDY_SCRIPT), str(request)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def validation_prompts(waimai_small: dict[str, str], n: int = 4) -> list[list[dict[str, str]]]:
    lines = Path(waimai_small["validation"]).read_text(encoding="utf-8").splitlines()[:n]
    return [json.loads(line)["messages"][:-1] for line in lines] + [[SYSTEM, {"role": "user", "content": "量太少了，而且很咸"}]]


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
@pytest.mark.parametrize("as_lora", [False, True], ids=["merged", "lora-gguf"])
def test_llamacpp_answers_as_the_engine(arch, as_lora, models, waimai_small, tmp_path) -> None:
    """The acceptance test: llama.cpp greedy-decodes the f16 GGUF (merged, or base + LoRA GGUF) to the engine's
    tokens, prompt tokenization included, and stops at the end-of-turn token where the engine does."""
    m = models[arch]
    model, tokenizer = load_model(m["base"], m["adapter"])
    conversations = validation_prompts(waimai_small)
    if as_lora:
        base = export_(tmp_path / "base", model=m["base"], format="gguf")
        adapter = export_(tmp_path / "lora", model=m["base"], adapter=m["adapter"], format="gguf", adapter_only=True)
        gguf, lora = base["path"], adapter["path"]
    else:
        gguf, lora = export_(tmp_path, model=m["base"], adapter=m["adapter"], format="gguf")["path"], None
    stops = sorted(stop_token_ids(model, tokenizer))
    got = llamacpp_greedy(tmp_path, gguf, [render(tokenizer, c, True) for c in conversations], lora, check=stops)
    stopped = 0
    for conversation, answer in zip(conversations, got["results"]):
        ids = prompt_ids(tokenizer, conversation)
        assert answer["prompt_tokens"] == ids  # llama.cpp's tokenizer = the engine's, special tokens included
        assert answer["tokens"] == engine_greedy(model, tokenizer, ids, 16), tokenizer.decode(answer["tokens"])
        stopped += answer["stopped"]
    assert stopped >= len(conversations) - 1  # the fine-tuned model answers a label and ends its turn
    # every token the engine stops at ends generation in llama.cpp too (<|im_end|>/<|endoftext|>, <|eot_id|>/<|end_of_text|>)
    assert all(got["eog"][str(t)] for t in stops), got["eog"]
