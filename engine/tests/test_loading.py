"""The tensor-by-tensor loader (loading.load_causal_lm): the same model as from_pretrained (+ quantize_model_nf4), bit for bit."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM

from weitiao_engine.loading import checkpoint_dtype, load_causal_lm, read_tensor, safetensors_index, set_threads
from weitiao_engine.quantize import NF4Embedding, NF4Linear, quantize_model_nf4, quantize_nf4, quantize_nf4_by_rows
from weitiao_engine.training.activation_checkpointing import base_parameter_count, use_gradient_checkpointing


def assert_same_model(new, old) -> None:
    a, b = new.state_dict(), old.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key
    ids = torch.randint(0, new.config.vocab_size, (2, 11), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(new(input_ids=ids).logits, old(input_ids=ids).logits)


@pytest.mark.parametrize(
    "dtype, nf4, embeddings",
    [(torch.float32, False, False), (torch.bfloat16, False, False), (torch.float32, True, False), (torch.float32, True, True)],
)
def test_streamed_model_equals_from_pretrained(tiny_model, dtype, nf4, embeddings) -> None:
    new = load_causal_lm(tiny_model, dtype, nf4=nf4, nf4_embeddings=embeddings)
    old = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=dtype)
    if nf4:
        quantize_model_nf4(old, embeddings=embeddings)
    assert_same_model(new, old)
    assert not any(p.requires_grad for p in new.parameters())
    emb, head = new.get_input_embeddings(), new.get_output_embeddings()
    if embeddings:  # the tied head shares the embedding's codes
        assert isinstance(emb, NF4Embedding) and isinstance(head, NF4Linear) and head.qweight is emb.qweight
    else:
        assert head.weight is emb.weight and emb.weight.dtype == dtype
    if nf4:
        assert isinstance(new.model.layers[0].self_attn.q_proj, NF4Linear) and new.model.layers[0].self_attn.q_proj.bias is not None


def test_modules_to_keep_dense_stay_dense_with_their_tied_partner(tiny_model) -> None:
    model = load_causal_lm(tiny_model, torch.float32, nf4=True, nf4_embeddings=True, keep_dense=["embed_tokens"])
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    assert type(emb) is torch.nn.Embedding and head.weight is emb.weight  # the head is tied to it: dense too
    assert isinstance(model.model.layers[0].mlp.down_proj, NF4Linear)


def test_quantizing_by_rows_equals_quantizing_the_whole() -> None:
    w = torch.randn(1000, 96, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)  # 1000 rows: the last piece is partial
    packed, absmax = quantize_nf4(w)
    p, a = quantize_nf4_by_rows(lambda i, j: w[i:j], w.shape, rows_at_a_time=128)
    assert torch.equal(p, packed) and torch.equal(a, absmax)


def test_reads_rows_of_a_tensor_without_the_rest(tiny_model) -> None:
    file = next(iter(__import__("pathlib").Path(tiny_model).glob("*.safetensors")))
    start, header = safetensors_index(file)
    info = header["model.embed_tokens.weight"]
    full = AutoModelForCausalLM.from_pretrained(tiny_model).get_input_embeddings().weight
    with open(file, "rb") as f:
        assert torch.equal(read_tensor(f, start, info, (10, 20)).float(), full[10:20])
    assert checkpoint_dtype(tiny_model) == full.dtype


def test_falls_back_when_the_names_differ(tiny_model, tmp_path) -> None:
    """A checkpoint whose tensor names are not the model's: None, so the recipe loads it the usual way."""
    renamed = tmp_path / "renamed"
    shutil.copytree(tiny_model, renamed)
    file = next(renamed.glob("*.safetensors"))
    raw = file.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    header["model.norm.WEIGHT"] = header.pop("model.norm.weight")  # same length
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (n - len(text))  # same header length: the data offsets stay valid
    assert len(text) == n
    file.write_bytes(raw[:8] + text + raw[8 + n :])
    assert load_causal_lm(renamed, torch.float32) is None


def test_gradient_checkpointing_auto_follows_the_base_size(tiny_model) -> None:
    model = load_causal_lm(tiny_model, torch.float32, nf4=True, nf4_embeddings=True)
    dense = AutoModelForCausalLM.from_pretrained(tiny_model)
    assert base_parameter_count(model) == sum(p.numel() for p in dense.parameters())  # NF4 weights counted too
    assert use_gradient_checkpointing("auto", model) is False  # a tiny model: recompute costs more than it saves
    assert use_gradient_checkpointing(True, model) is True and use_gradient_checkpointing(False, model) is False


def test_a_bf16_checkpoint_trains_with_bf16_frozen_weights_by_default(tiny_model, waimai_small, tmp_path, monkeypatch) -> None:
    """bf16: auto keeps a bf16 checkpoint's frozen weights in bf16 (no fp32 copy) when the probe finds them no slower;
    what trains stays fp32. The probe's figures are made up here (its decision on real timings depends on the
    machine and its load: test_precision_probe covers the decision), so this tests what the recipe does with it."""
    from weitiao_engine.protocol import TrainRequest
    from weitiao_engine.recipes import lora_finetune
    from weitiao_engine.training import precision_probe

    made_up = {"seconds": {"fp32": 1.0, "bf16": 2.0, "bf16-weights": 1.0}, "gflops": {"fp32": 100.0, "bf16": 50.0, "bf16-weights": 100.0},
               "native_bf16": False, "bf16_safe": True, "bf16_error": 0.003, "threads": 1, "cpu": "test", "flags": []}  # fmt: skip
    monkeypatch.setattr(precision_probe, "probe", lambda *args, **kwargs: dict(made_up))

    bf16_dir = tmp_path / "bf16"
    AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.bfloat16).save_pretrained(bf16_dir)
    for f in __import__("pathlib").Path(tiny_model).glob("tokenizer*"):
        shutil.copy(f, bf16_dir)
    assert checkpoint_dtype(bf16_dir) == torch.bfloat16
    request = TrainRequest.model_validate({"base_model": str(bf16_dir), "output_dir": str(tmp_path / "job"), "training_file": waimai_small["train"],
                                           "hyperparameters": {"n_epochs": 1, "batch_size": 8, "learning_rate": 1e-3}, "threads": 1})  # fmt: skip
    state = lora_finetune.setup(request)
    assert state.precision == state.precision_choice["precision"] == "bf16-weights"
    frozen = [p for p in state.model.parameters() if not p.requires_grad and p.ndim == 2]
    trained = [p for p in state.model.parameters() if p.requires_grad]
    assert frozen and all(p.dtype == torch.bfloat16 for p in frozen)
    assert trained and all(p.dtype == torch.float32 for p in trained)
    assert state.model.is_gradient_checkpointing is False  # auto: a tiny base does not need it


def test_threads_come_from_the_request_then_weitiao_engine_threads_then_the_cores(monkeypatch) -> None:
    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("WEITIAO_ENGINE_THREADS", "1")
        assert (set_threads(None), torch.get_num_threads()) == (1, 1)
        assert set_threads(2) == 2  # a request's own count wins
        monkeypatch.setenv("WEITIAO_ENGINE_THREADS", "many")  # not a count: ignored
        cores = set_threads(None)
        monkeypatch.delenv("WEITIAO_ENGINE_THREADS")
        assert set_threads(None) == cores >= 1
    finally:
        torch.set_num_threads(before)
