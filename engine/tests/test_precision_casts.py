"""bf16 autocast without needless casts (training/lora.lora_input_in_compute_dtype): a LoRA layer's input stays
bf16 instead of PEFT's fp32 round trip, with the same numbers: lora_A multiplies in bf16 either way."""

from types import SimpleNamespace

import torch
from transformers import AutoModelForCausalLM

from weitiao_engine.training import lora as lora_setup
from weitiao_engine.training.precision import autocast_context


def lora_model(tiny_model: str):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.bfloat16)
    request = SimpleNamespace(lora=SimpleNamespace(r=4, alpha=8, dropout=0.0, target_modules="all-linear", modules_to_save=None),
                              hyperparameters=SimpleNamespace(seed=0))  # fmt: skip
    model, _ = lora_setup.add_lora(model, request)
    for p in model.parameters():
        if p.requires_grad:  # B = 0 would leave LoRA out of the output
            p.data.normal_(0, 0.05)
    return model


def loss_and_grads(model, ids):
    with autocast_context(True):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return loss.item(), [p.grad.clone() for p in model.parameters() if p.requires_grad]


def copies_of(model, ids, shape) -> int:
    """aten::_to_copy calls in one forward whose output has the LoRA layers' input shape (a cast of the input)."""
    from torch.profiler import profile

    with profile(record_shapes=True) as prof, torch.no_grad(), autocast_context(True):
        model(input_ids=ids)
    return sum(e.count for e in prof.key_averages(group_by_input_shape=True) if e.key == "aten::_to_copy" and list(shape) in e.input_shapes)


def test_lora_input_stays_bf16_with_the_same_loss_and_gradients(tiny_model, monkeypatch):
    from weitiao_engine.training import fused_projections, lora_forward

    ids = torch.randint(0, 100, (2, 24), generator=torch.Generator().manual_seed(1))
    monkeypatch.setattr(lora_forward, "LEAN_LORA_FORWARD", False)  # PEFT's forward both ways: bit for bit
    monkeypatch.setattr(fused_projections, "FUSE_PROJECTIONS", False)
    as_peft, kept = lora_model(tiny_model), lora_model(tiny_model)
    assert lora_setup.lora_input_in_compute_dtype(kept) == sum(1 for n, _ in kept.named_modules() if n.endswith("q_proj")) * 7
    (loss_a, grads_a), (loss_b, grads_b) = loss_and_grads(as_peft, ids), loss_and_grads(kept, ids)
    assert loss_a == loss_b
    assert all(torch.equal(a, b) for a, b in zip(grads_a, grads_b))
    hidden = (2, 24, as_peft.config.hidden_size)
    assert copies_of(as_peft, ids, hidden) > copies_of(kept, ids, hidden)  # PEFT's casts of the input are gone
    monkeypatch.setattr(lora_forward, "LEAN_LORA_FORWARD", True)  # the recipe's forward (one addmm): bf16 rounding apart
    monkeypatch.setattr(fused_projections, "FUSE_PROJECTIONS", True)  # and q/k/v, gate/up fused
    lean = lora_model(tiny_model)
    lora_setup.lora_input_in_compute_dtype(lean)
    loss_c, grads_c = loss_and_grads(lean, ids)
    assert abs(loss_c - loss_b) < 1e-2 * abs(loss_b) and copies_of(lean, ids, hidden) == copies_of(kept, ids, hidden)
    errors = [((c - b).norm() / b.norm()).item() for b, c in zip(grads_b, grads_c)]
    assert max(errors) < 0.05, errors


def test_fused_rms_norm_in_fp32_gives_the_same_loss_and_gradients(tiny_model):
    from weitiao_engine.training.fused_ops import use_fused_rms_norm

    ids = torch.randint(0, 100, (2, 24), generator=torch.Generator().manual_seed(1))
    runs = []
    for fused in (False, True):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
        if fused:
            assert use_fused_rms_norm(model) == 2 * model.config.num_hidden_layers + 1  # two per layer, the final norm
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        runs.append((loss.detach(), [p.grad for p in model.parameters()]))
    (loss_a, grads_a), (loss_b, grads_b) = runs
    torch.testing.assert_close(loss_b, loss_a, rtol=1e-6, atol=0)
    for a, b in zip(grads_a, grads_b):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7)
