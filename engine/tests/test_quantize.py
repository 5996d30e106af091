"""NF4 quantization (quantize.py) and the `qlora` method: codes equal a reference NF4, NF4Linear matches the
dense layer within NF4's error, QLoRA on the tiny model learns, resumes exactly, and its adapter chats on
the un-quantized base."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from conftest import run_train, train_request
from weitiao_engine import protocol
from weitiao_engine.protocol import TrainRequest
from weitiao_engine.quantize import (
    BLOCK_SIZE,
    NF4_LEVELS,
    NF4Embedding,
    NF4Linear,
    dequantize_nf4,
    nf4_bytes,
    quantize_model_nf4,
    quantize_nf4,
    unpack_nf4_codes,
)



def reference_nf4(w: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Level indices and absmax computed the slow, obvious way: per block, argmin |x / absmax - level|."""
    flat = w.reshape(-1).double()
    codes, absmaxes = [], []
    for start in range(0, flat.numel(), block):
        chunk = flat[start : start + block]
        absmax = chunk.abs().max()
        absmaxes.append(absmax)
        for x in chunk:
            codes.append(int(torch.argmin((x / absmax - NF4_LEVELS.double()).abs())))
    return torch.tensor(codes), torch.stack(absmaxes).float()


def test_codes_are_the_nearest_nf4_level_and_error_is_bounded() -> None:
    torch.manual_seed(0)
    w = torch.randn(6, 40) * torch.linspace(0.01, 3, 40)  # 240 values: 3 full blocks and a padded one
    packed, absmax = quantize_nf4(w)
    assert packed.dtype == torch.uint8 and packed.numel() == 240 // 2 + (256 - 240) // 2
    assert absmax.dtype == torch.float32 and absmax.numel() == 4

    ref_codes, ref_absmax = reference_nf4(w, BLOCK_SIZE)
    torch.testing.assert_close(absmax, ref_absmax, rtol=0, atol=0)
    assert torch.equal(unpack_nf4_codes(packed, 240), ref_codes)

    back = dequantize_nf4(packed, absmax, w.shape)
    assert back.shape == w.shape and back.dtype == torch.float32
    # Nearest level: the error is at most half the widest gap between levels, times the block's absmax.
    half_gap = float((NF4_LEVELS[1:] - NF4_LEVELS[:-1]).max()) / 2
    block_absmax = absmax.repeat_interleave(BLOCK_SIZE)[:240].view(6, 40)
    assert ((back - w).abs() <= half_gap * block_absmax + 1e-6).all()
    # Each block's largest value is exact (it becomes ±1), and exact zeros stay zero.
    assert torch.equal(back.reshape(-1)[:64].abs().max(), w.reshape(-1)[:64].abs().max())
    # Quantizing in chunks (as a 150k-token embedding is) gives the same bytes as one pass.
    import weitiao_engine.quantize as quantize

    big = torch.randn(1000, 64)
    whole = quantize_nf4(big)
    old_chunk, quantize.QUANTIZE_CHUNK = quantize.QUANTIZE_CHUNK, 384
    try:
        chunked = quantize_nf4(big)
    finally:
        quantize.QUANTIZE_CHUNK = old_chunk
    assert torch.equal(chunked[0], whole[0]) and torch.equal(chunked[1], whole[1])
    zeros = torch.zeros(3, 64)
    p, a = quantize_nf4(zeros)
    assert torch.equal(dequantize_nf4(p, a, zeros.shape), zeros)


def test_nf4_linear_forward_matches_dense_within_nf4_error() -> None:
    torch.manual_seed(1)
    dense = nn.Linear(128, 96, bias=True)
    q = NF4Linear.from_linear(dense, compute_dtype=torch.float32)
    assert q.weight is None and isinstance(q, nn.Linear) and (q.in_features, q.out_features) == (128, 96)
    assert q.qweight.numel() == 128 * 96 // 2 and q.nf4_absmax.numel() == 128 * 96 // 64
    x = torch.randn(4, 7, 128)
    exact = dense(x)
    out = q(x)
    assert out.shape == exact.shape
    # Exactly a linear layer with the dequantized weight…
    torch.testing.assert_close(out, nn.functional.linear(x, q.dequantized_weight(torch.float32), dense.bias), rtol=1e-5, atol=1e-5)
    # …whose relative error is what 4 bits per weight give (NF4 on Gaussian weights: ~10 % per weight, less per output).
    rel = (out - exact).norm() / exact.norm()
    assert 0 < rel < 0.15, rel
    # Gradients reach the input (LoRA's A sits before it in the backward pass), none go to the frozen base.
    # The custom backward (dequantize again, save nothing dense) gives the dense layer's input gradient.
    x.requires_grad_(True)
    (q(x) * exact.detach()).sum().backward()
    x_ref = x.detach().clone().requires_grad_(True)
    (nn.functional.linear(x_ref, q.dequantized_weight(torch.float32), dense.bias) * exact.detach()).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-5)


def test_quantize_model_replaces_linears_but_not_the_head(tiny_model) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    linears = [n for n, m in model.named_modules() if type(m) is nn.Linear and m is not model.get_output_embeddings()]
    dense_bytes = sum(model.get_submodule(n).weight.numel() * 4 for n in linears)
    quantize_model_nf4(model)
    assert all(isinstance(model.get_submodule(n), NF4Linear) for n in linears)
    assert type(model.get_output_embeddings()) is nn.Linear and type(model.get_input_embeddings()) is nn.Embedding
    assert not any(p.requires_grad for p in model.parameters())
    # 4.5 bits per weight against 32.
    assert nf4_bytes(model) == pytest.approx(dense_bytes * 4.5 / 32, rel=0.01)
    ids = torch.tensor([[1, 5, 9, 300]])
    assert torch.isfinite(model(ids).logits).all()


def test_nf4_embedding_and_tied_head_share_codes() -> None:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(2)
    config = Qwen2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                         vocab_size=40000, tie_word_embeddings=True)  # fmt: skip
    model = Qwen2ForCausalLM(config)
    ids = torch.randint(0, 40000, (2, 9))
    quantize_model_nf4(model, compute_dtype=torch.float32, embeddings=True)
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    assert isinstance(emb, NF4Embedding) and isinstance(head, NF4Linear) and head.qweight is emb.qweight
    table = dequantize_nf4(emb.qweight, emb.nf4_absmax, (40000, 64))
    assert torch.equal(emb(ids), table[ids])  # a lookup dequantizes exactly the rows it reads
    assert len(head.row_chunks()) == 3  # the head is dequantized 16,384 rows at a time…
    h = torch.randn(5, 64, requires_grad=True)
    out = head(h)
    torch.testing.assert_close(out, h @ table.T, rtol=1e-5, atol=1e-5)  # …with the same result
    (out * out.detach()).sum().backward()
    h_ref = h.detach().clone().requires_grad_(True)
    ((h_ref @ table.T) * out.detach()).sum().backward()
    torch.testing.assert_close(h.grad, h_ref.grad, rtol=1e-4, atol=1e-4)
    # One set of codes for both: 40000 × 64 × 4.5 bits, plus the decoder's linears.
    linears = sum(m.qweight.numel() + m.nf4_absmax.numel() * 4 for m in model.modules() if isinstance(m, NF4Linear) and m is not head)
    assert nf4_bytes(model) == linears + 40000 * 64 * 9 // 16
    assert torch.isfinite(model(ids).logits).all()


# ------------------------------------------------------------------------------------------ the qlora method


def qlora_request(tiny_model: str, data: dict[str, str], output_dir: Path, **overrides: Any) -> dict[str, Any]:
    return train_request(tiny_model, data, output_dir, **{"method": "qlora", **overrides})


def test_qlora_trains_and_the_adapter_chats_on_the_plain_base(tiny_model, waimai_small, tmp_path, monkeypatch) -> None:
    from weitiao_engine.generate import chat_completion
    from weitiao_engine.loading import load_model
    from weitiao_engine.recipes import lora_finetune

    # The recipe really trains on NF4 layers (setup only: cheap), the embedding and the tied LM head included.
    state = lora_finetune.setup(TrainRequest.model_validate(qlora_request(tiny_model, waimai_small, tmp_path / "setup")))
    wrapped = [m for m in state.model.modules() if hasattr(m, "base_layer")]
    assert wrapped and all(isinstance(m.base_layer, NF4Linear) for m in wrapped)
    causal_lm = state.model.get_base_model()
    emb, head = causal_lm.get_input_embeddings(), causal_lm.get_output_embeddings()
    assert isinstance(emb, NF4Embedding) and isinstance(head, NF4Linear) and head.qweight is emb.qweight

    result, events = run_train(qlora_request(tiny_model, waimai_small, tmp_path / "job", max_steps=20), monkeypatch)
    assert result["steps"] == 20 and not result["interrupted"]
    losses = [e["train_loss"] for e in events if e["type"] == "metrics" and "train_loss" in e]
    assert sum(losses[-5:]) / 5 < losses[0] - 0.5, losses
    model_dir = Path(result["model_dir"])
    assert json.loads((model_dir / "weitiao.json").read_text())["method"] == "qlora"

    # The adapter is an ordinary LoRA adapter: it loads on the un-quantized base and answers.
    model, tokenizer = load_model(tiny_model, adapter_dir=model_dir, threads=1)
    messages = [{"role": "system", "content": "你是一位外卖评论好评差评评论专家。"}, {"role": "user", "content": "很好吃，送得也快"}]
    answer = chat_completion(model, tokenizer, messages, max_tokens=4, temperature=0)
    assert answer["usage"]["completion_tokens"] >= 1 and answer["finish_reason"] in ("stop", "length")
    assert answer["text"].strip() in ("好评", "差评") or answer["finish_reason"] == "length"


def test_qlora_keeps_a_trained_embedding_dense_and_says_so(tiny_model, waimai_small, tmp_path, monkeypatch) -> None:
    from weitiao_engine.recipes import lora_finetune

    out = io.StringIO()
    monkeypatch.setattr(protocol, "_out", out)
    raw = qlora_request(tiny_model, waimai_small, tmp_path / "setup", lora={"modules_to_save": ["embed_tokens"]})
    state = lora_finetune.setup(TrainRequest.model_validate(raw))
    causal_lm = state.model.get_base_model()
    assert not any(isinstance(m, NF4Embedding) for m in causal_lm.modules())
    assert any(isinstance(m, NF4Linear) for m in causal_lm.modules())  # the decoder's linears are still NF4
    trained = [p for n, p in state.model.named_parameters() if p.requires_grad and "embed_tokens" in n]
    assert trained and all(p.dtype == torch.float32 for p in trained)
    logs = [json.loads(line)["message"] for line in out.getvalue().splitlines() if json.loads(line)["type"] == "log"]
    assert any("embedding and LM head stay dense" in m for m in logs), logs


def test_qlora_sigterm_then_resume_equals_uninterrupted(tiny_model, waimai_small, tmp_path, run_engine, train_stopped_at_step, monkeypatch) -> None:
    train = tmp_path / "train.jsonl"
    train.write_text("".join(Path(waimai_small["train"]).read_text(encoding="utf-8").splitlines(keepends=True)[:128]), encoding="utf-8")
    data = {**waimai_small, "train": str(train)}
    lora = {"r": 4, "alpha": 8, "dropout": 0.1, "target_modules": "all-linear"}
    full, _ = run_train(qlora_request(tiny_model, data, tmp_path / "full", lora=lora), monkeypatch)
    assert full["steps"] == 16 and not full["interrupted"]

    job = tmp_path / "stopped"
    raw = qlora_request(tiny_model, data, job, lora=lora)
    events = train_stopped_at_step(raw, 2)
    stopped = events[-1]["data"]
    assert stopped["interrupted"] and 2 <= stopped["steps"] < 16

    code, events = run_engine("train", {**raw, "resume": True})
    assert code == 0
    resumed = events[-1]["data"]
    assert resumed["steps"] == full["steps"] and resumed["trained_tokens"] == full["trained_tokens"]
    assert resumed["final_train_loss"] == pytest.approx(full["final_train_loss"], abs=1e-6)
    a = load_file(Path(full["model_dir"]) / "adapter_model.safetensors")
    b = load_file(Path(resumed["model_dir"]) / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=1e-6, rtol=0)
