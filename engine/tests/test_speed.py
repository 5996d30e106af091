"""The LoRA recipe's speed techniques change how fast, not what is computed: padding-free packing and its
attention one sequence at a time, the geometric LoRA dropout mask folded into lora_A, q/k/v and gate/up as one
matmul each, SwiGLU keeping less, and selective gradient checkpointing (the benchmark and bench/profile_step.py
--compare measure how much faster)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from weitiao_engine.training import activation_checkpointing as checkpointing, batching, packed_attention
from weitiao_engine.chat_format import tokenize_examples
from weitiao_engine.training.lora_dropout import FoldedIntoLoraA, LoraDropout, drop_mask, use_lora_dropout
from weitiao_engine.training.lora_forward import use_lean_lora_forward
from weitiao_engine.training.packed_attention import causal_attention, sequence_layout, use_packed_attention
from weitiao_engine.training.batching import collate, pack, packing_supported
from weitiao_engine.training.data import load_examples
from weitiao_engine.training.lora import linear_module_names
from weitiao_engine.training.loss import token_loss
from weitiao_engine.training.precision import compute_in_fp32

from conftest import run_train as run_in_process, train_request as request


@pytest.fixture(scope="module")
def batch(tiny_model, waimai_small):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    examples, _ = tokenize_examples(tokenizer, load_examples(waimai_small["train"], "training_file")[:12], 1024)
    return examples, tokenizer.pad_token_id


def lora_model(tiny_model: str, dropout: float = 0.0, dtype=torch.float32):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=dtype)
    torch.manual_seed(0)
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, target_modules=linear_module_names(model))
    model = get_peft_model(model, config)
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    with torch.no_grad():  # B starts at 0, which would hide LoRA's share of every gradient
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    return model.train()


def loss_and_grads(model, args, n: int) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss, count, _ = token_loss(model, *args)
    (loss / n).backward()
    assert count == n
    return loss.item(), {k: p.grad.clone() for k, p in model.named_parameters() if p.requires_grad}


def assert_same_loss_and_grads(got, want, rel: float = 1e-6, rtol: float = 1e-5, atol: float = 1e-7) -> None:
    """(loss, gradients) of loss_and_grads: the same loss (relative `rel`) and every gradient close."""
    (got_loss, got_grads), (want_loss, want_grads) = got, want
    assert got_loss == pytest.approx(want_loss, rel=rel)
    for name, g in want_grads.items():
        torch.testing.assert_close(got_grads[name], g, rtol=rtol, atol=atol)


# ---------------------------------------------------------------------------------------------- packing


def test_packed_rows_hold_every_token_once_with_positions_restarting(batch, monkeypatch) -> None:
    examples, pad = batch
    monkeypatch.setattr(batching, "PACKED_ROW_TOKENS", 200)  # several rows
    ids, mask, labels, positions = pack(examples, pad)
    total = sum(len(e.input_ids) for e in examples)
    assert ids.shape[1] % batching.ROW_MULTIPLE == 0
    assert mask is None and ids.shape[0] == math.ceil(total / 200) and ids.numel() - total < ids.shape[0] * max(len(e.input_ids) for e in examples)
    real = labels != -100
    assert int(real.sum()) == sum(e.n_trained for e in examples)  # every trained token once, nothing else
    starts = (positions == 0).sum().item()
    assert starts >= len(examples)  # one restart per example (and per row's padding block)
    for row in range(ids.shape[0]):  # positions count up inside each example
        p = positions[row]
        assert all(p[i] in (0, p[i - 1] + 1) for i in range(1, len(p)))


def test_packed_batch_gives_the_padded_loss_and_gradients(tiny_model, batch) -> None:
    examples, pad = batch
    model = lora_model(tiny_model)
    n = sum(e.n_trained for e in examples)
    padded_loss, padded_grads = loss_and_grads(model, collate(examples, pad), n)
    packed_loss, packed_grads = loss_and_grads(model, pack(examples, pad), n)
    assert packed_loss == pytest.approx(padded_loss, rel=1e-5)
    for name, g in padded_grads.items():
        torch.testing.assert_close(packed_grads[name], g, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("explicit_up_to", [256, 0], ids=["explicit scores", "fused kernel"])
def test_packed_attention_gives_the_masked_attention_loss_and_gradients(tiny_model, batch, monkeypatch, explicit_up_to) -> None:
    """Each sequence attended alone (padded to the longest, causal, no mask) equals SDPA over the row with
    transformers' block-diagonal mask; rows of several lengths, each ending in a padding block. Both ways of
    attending the sequences: explicit scores (short ones) and torch's fused kernel (long ones)."""
    examples, pad = batch
    monkeypatch.setattr(batching, "PACKED_ROW_TOKENS", 300)
    monkeypatch.setattr(packed_attention, "EXPLICIT_UP_TO", explicit_up_to)
    model = lora_model(tiny_model)
    args, n = pack(examples, pad), sum(e.n_trained for e in examples)
    assert args[0].shape[0] > 1
    want_loss, want = loss_and_grads(model, args, n)
    assert use_packed_attention(model) and model.get_base_model().config._attn_implementation == "weitiao_packed_sdpa"
    got_loss, got = loss_and_grads(model, args, n)
    assert_same_loss_and_grads((got_loss, got), (want_loss, want), rel=1e-5, rtol=1e-4, atol=1e-6)
    assert packing_supported(model, examples[0].input_ids) is True


def test_causal_attention_equals_sdpa_with_grouped_query_heads() -> None:
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 6, 9, 8, requires_grad=True), torch.randn(3, 2, 9, 8, requires_grad=True), torch.randn(3, 2, 9, 8, requires_grad=True)
    got = causal_attention(q, k, v, 0.3)
    want = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.3, enable_gqa=True)
    torch.testing.assert_close(got, want)
    g = torch.randn_like(want)
    grads = torch.autograd.grad(got, (q, k, v), g)
    for a, b in zip(grads, torch.autograd.grad(want, (q, k, v), g)):
        torch.testing.assert_close(a, b)


def test_sequence_layout_cuts_rows_at_restarting_positions() -> None:
    positions = torch.tensor([[0, 1, 2, 3, 0, 1, 2, 3, 4, 0, 1, 2], [0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5]])
    gather, scatter, n_seq, longest = sequence_layout(positions)
    assert (n_seq, longest) == (5, 6)
    tokens = torch.arange(24.0)
    by_sequence = tokens[gather].view(n_seq, longest)
    assert by_sequence[:, 0].tolist() == [0, 4, 9, 12, 18]  # each sequence's first token
    assert by_sequence[3].tolist() == [12, 13, 14, 15, 16, 17] and by_sequence[0, :4].tolist() == [0, 1, 2, 3]
    assert torch.equal(by_sequence.flatten()[scatter], tokens), "scatter puts every token back where it was"
    assert sequence_layout(torch.arange(6).repeat(2, 1)) is None, "one sequence per row: nothing packed"
    assert sequence_layout(torch.tensor([[0, 1, 2, 3, 4, 5, 6, 7, 0, 0, 0, 0, 0, 0, 0, 0]])) is None, "padding would cost more than the mask"


def test_packing_is_checked_on_the_model(tiny_model, batch) -> None:
    """A model that lets packed sequences see each other (here: a decoder given an all-ones mask) is caught."""
    examples, _ = batch
    model = lora_model(tiny_model)
    assert packing_supported(model, examples[0].input_ids) is True
    decoder = model.get_base_model().get_decoder()
    real_forward = decoder.forward

    def leaky(input_ids=None, position_ids=None, **kwargs):
        return real_forward(input_ids=input_ids, position_ids=position_ids, attention_mask=torch.ones_like(input_ids), **kwargs)

    decoder.forward = leaky
    assert packing_supported(model, examples[0].input_ids) is False
    assert model.training, "the check leaves the model in training mode"


def test_packing_check_runs_on_a_bf16_base_with_fp32_trainables(tiny_model, batch) -> None:
    """A base held in bf16 beside fp32 trainables (LoRA, modules_to_save) is checked under autocast, as it trains:
    without it the check's matmuls mixed dtypes and every such run fell back to padded batches."""
    examples, _ = batch
    model = lora_model(tiny_model)
    for p in model.parameters():
        if not p.requires_grad:
            p.data = p.data.to(torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16, torch.float32}
    assert packing_supported(model, examples[0].input_ids) is True


# ------------------------------------------------------------------------------------------ LoRA dropout


def test_dropout_mask_is_bernoulli_p_per_element() -> None:
    torch.manual_seed(0)
    masks = torch.stack([drop_mask(torch.Size([3, 4]), 0.3, torch.device("cpu")) for _ in range(40_000)]).flatten(1).float()
    rate = masks.mean(0)
    assert (rate - 0.3).abs().max() < 0.012, rate  # every position ~0.3 (4.5 standard errors)
    corr = torch.corrcoef(masks.T)
    assert (corr - torch.eye(12)).abs().max() < 0.03  # and independent of the others
    torch.manual_seed(5)
    a = drop_mask(torch.Size([1000]), 0.05, torch.device("cpu"))
    torch.manual_seed(5)
    assert torch.equal(a, drop_mask(torch.Size([1000]), 0.05, torch.device("cpu"))), "torch's generator decides it"
    assert drop_mask(torch.Size([0]), 0.5, torch.device("cpu")).numel() == 0


def test_dropout_scales_kept_inputs_and_their_gradients() -> None:
    dropout = LoraDropout(0.2)
    x = torch.randn(64, 32, requires_grad=True)
    y = dropout(x)
    dropped = y == 0
    torch.testing.assert_close(y[~dropped], x[~dropped] / 0.8)
    y.sum().backward()
    assert torch.all(x.grad[dropped] == 0) and torch.allclose(x.grad[~dropped], torch.full_like(x.grad[~dropped], 1 / 0.8))
    assert dropout.eval()(x) is x, "eval mode is the identity, like nn.Dropout"


def test_peft_dropouts_are_replaced(tiny_model) -> None:
    model = lora_model(tiny_model, dropout=0.1)
    n_lora = sum(1 for m in model.modules() if hasattr(m, "lora_A") and isinstance(m.lora_dropout, torch.nn.ModuleDict))
    assert use_lora_dropout(model) == n_lora > 0
    assert not any(isinstance(m, torch.nn.Dropout) for m in model.modules() if type(m) is torch.nn.Dropout and m.p > 0)
    assert sum(isinstance(m, FoldedIntoLoraA) for m in model.modules()) == n_lora, "plain LoRA: folded into lora_A"


def test_dropout_folded_into_lora_a_computes_what_dropout_then_lora_a_does(tiny_model, batch, monkeypatch) -> None:
    """Same masks (same generator draws), same loss and gradients as LoraDropout in front of an unchanged lora_A."""
    from weitiao_engine.training import lora_dropout

    examples, pad = batch
    args, n = pack(examples, pad), sum(e.n_trained for e in examples)
    results = []
    for fold in (False, True):
        monkeypatch.setattr(lora_dropout, "FOLD_INTO_LORA_A", fold)
        model = lora_model(tiny_model, dropout=0.2)
        use_lora_dropout(model)
        torch.manual_seed(11)
        results.append(loss_and_grads(model, args, n))
    (want_loss, want), (got_loss, got) = results
    assert_same_loss_and_grads((got_loss, got), (want_loss, want))
    model.eval()
    torch.manual_seed(0)
    assert torch.equal(model.get_base_model().get_decoder()(input_ids=args[0][:, :8]).last_hidden_state,
                       model.get_base_model().get_decoder()(input_ids=args[0][:, :8]).last_hidden_state), "eval: no dropout"  # fmt: skip


# ------------------------------------------------------------------------------------ lean LoRA forward


def test_lean_lora_forward_computes_what_peft_does(tiny_model, batch) -> None:
    """One addmm over the base output, the scaling on B (alpha/r = 1.75, not a power of two): PEFT's loss and
    gradients, with the dropout folded in; disabled adapters (DPO's reference) still take PEFT's forward."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    examples, pad = batch
    args, n = pack(examples, pad), sum(e.n_trained for e in examples)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    torch.manual_seed(0)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=7, lora_dropout=0.1, target_modules=linear_module_names(model))).train()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    use_lora_dropout(model)
    torch.manual_seed(2)
    want_loss, want = loss_and_grads(model, args, n)
    assert use_lean_lora_forward(model) == sum(1 for m in model.modules() if isinstance(m, FoldedIntoLoraA)) > 0
    torch.manual_seed(2)
    got_loss, got = loss_and_grads(model, args, n)
    assert_same_loss_and_grads((got_loss, got), (want_loss, want))
    ids = args[0][:, :16]
    with torch.no_grad():
        with model.disable_adapter():
            base = model(input_ids=ids).logits
        model.eval()
        adapted = model(input_ids=ids).logits
    assert not torch.allclose(base, adapted), "the adapter's share is there, and gone when disabled"


# ------------------------------------------------------------------------ fused projections and SwiGLU


def test_fused_projections_compute_what_separate_linears_do(tiny_model, batch, monkeypatch) -> None:
    """q/k/v and gate/up as one matmul each (their LoRA too): the separate layers' loss and gradients; the members'
    weights are views of the group's one matrix; dropout in training or disabled adapters take the members' own way."""
    from weitiao_engine.training.fused_projections import ProjectionGroup, use_fused_projections

    original = ProjectionGroup.outputs
    examples, pad = batch
    args, n = pack(examples, pad), sum(e.n_trained for e in examples)
    model = lora_model(tiny_model)
    use_lean_lora_forward(model)
    want_loss, want = loss_and_grads(model, args, n)
    layers = model.get_base_model().get_decoder().layers
    assert use_fused_projections(model) == 2 * len(layers)
    attention = layers[0].self_attn
    weights = [getattr(attention, f"{p}_proj").base_layer.weight for p in "qkv"]
    assert weights[0].untyped_storage().data_ptr() == weights[2].untyped_storage().data_ptr(), "views of one matrix"
    got_loss, got = loss_and_grads(model, args, n)
    assert_same_loss_and_grads((got_loss, got), (want_loss, want), rel=1e-6, rtol=1e-5, atol=1e-6)

    ids = args[0][:, :16]
    with torch.no_grad():
        with model.disable_adapter():
            base = model(input_ids=ids).logits
        plain = lora_model(tiny_model)
        with plain.disable_adapter():
            torch.testing.assert_close(base, plain(input_ids=ids).logits, rtol=1e-5, atol=1e-6)
    dropout = lora_model(tiny_model, dropout=0.1)
    use_lean_lora_forward(dropout)
    use_fused_projections(dropout)
    fused_calls = []
    monkeypatch.setattr(ProjectionGroup, "outputs", lambda self, *a: fused_calls.append(1) or original(self, *a))
    loss_and_grads(dropout, args, n)
    assert not fused_calls, "dropout in training: each member's own forward"
    with torch.no_grad():
        dropout.eval()(input_ids=ids)
    assert len(fused_calls) == 2 * len(layers), "in eval the dropout is the identity: fused"


def test_fused_lora_widths_are_recomputed_by_selective_checkpointing() -> None:
    """The policy keeps frozen matmuls' outputs, not LoRA's, also where a group's A's sit side by side (3 x rank)."""
    from torch.utils.checkpoint import CheckpointPolicy

    widths = checkpointing._lora_widths(8)
    mm, x = torch.ops.aten.mm.default, torch.zeros(5, 64)
    assert checkpointing._policy(widths, None, mm, x, torch.zeros(64, 24)) == CheckpointPolicy.PREFER_RECOMPUTE
    assert checkpointing._policy(widths, None, mm, x, torch.zeros(64, 8)) == CheckpointPolicy.PREFER_RECOMPUTE
    assert checkpointing._policy(widths, None, mm, x, torch.zeros(64, 96)) == CheckpointPolicy.MUST_SAVE


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_silu_mul_keeps_less_and_computes_the_same(tiny_model, batch, dtype) -> None:
    """SwiGLU through SiluMul: bit for bit the MLP's output and input gradient, with a third less kept for backward."""
    from transformers import AutoModelForCausalLM

    from weitiao_engine.training.fused_ops import use_silu_mul

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=dtype)
    mlp = model.get_decoder().layers[0].mlp
    x = torch.randn(1, 40, model.config.hidden_size, dtype=dtype, generator=torch.Generator().manual_seed(0), requires_grad=True)

    def run() -> tuple[torch.Tensor, torch.Tensor, int]:
        kept: list[int] = []

        def pack_hook(t: torch.Tensor) -> torch.Tensor:
            kept.append(t.untyped_storage().nbytes() if t is not x else 0)
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack_hook, lambda t: t):
            out = mlp(x)
        (grad,) = torch.autograd.grad(out.float().square().sum(), x)
        return out.detach(), grad, sum(kept)

    want, want_grad, want_kept = run()
    assert use_silu_mul(model) == model.config.num_hidden_layers
    got, got_grad, got_kept = run()
    assert torch.equal(got, want) and torch.equal(got_grad, want_grad)
    intermediate = 40 * model.config.intermediate_size * x.element_size()
    assert got_kept <= want_kept - intermediate, (got_kept, want_kept)


# -------------------------------------------------------------------------------- gradient checkpointing


@pytest.mark.parametrize("mode", ["full", "selective"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_checkpointing_gives_the_gradients_of_none(tiny_model, batch, mode, dtype) -> None:
    """With LoRA dropout on (the recomputation must redraw the same mask), packed attention, and, for bf16 weights,
    fp32 compute from upcast weights (backward reusing the recomputation's upcast)."""
    examples, pad = batch
    args, n = pack(examples, pad), sum(e.n_trained for e in examples)
    model = lora_model(tiny_model, dropout=0.1, dtype=dtype)
    use_lora_dropout(model)
    use_packed_attention(model)  # its sequence layout is computed once, reused by the recomputation
    if dtype == torch.bfloat16:
        compute_in_fp32(model, keep_upcast=True)
    torch.manual_seed(3)
    want_loss, want = loss_and_grads(model, args, n)
    checkpointing.enable(model, mode == "selective", lora_rank=4)
    torch.manual_seed(3)
    got_loss, got = loss_and_grads(model, args, n)
    assert_same_loss_and_grads((got_loss, got), (want_loss, want))


@pytest.mark.parametrize("mode", ["full", "selective"])
def test_checkpointing_gives_the_gradients_of_none_with_fused_projections_and_silu_mul(tiny_model, batch, mode) -> None:
    """The recipe's default forward (no LoRA dropout): fused q/k/v and gate/up, SiluMul, packed attention."""
    from weitiao_engine.training.fused_ops import use_silu_mul
    from weitiao_engine.training.fused_projections import use_fused_projections

    examples, pad = batch
    args, n = pack(examples, pad), sum(e.n_trained for e in examples)
    model = lora_model(tiny_model)
    use_lean_lora_forward(model)
    assert use_fused_projections(model) > 0 and use_silu_mul(model) > 0
    use_packed_attention(model)
    want_loss, want = loss_and_grads(model, args, n)
    checkpointing.enable(model, mode == "selective", lora_rank=4)
    got_loss, got = loss_and_grads(model, args, n)
    assert_same_loss_and_grads((got_loss, got), (want_loss, want))


def test_selective_checkpointing_only_while_its_outputs_fit(tiny_model, waimai_small, tmp_path, monkeypatch) -> None:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(tiny_model)
    model = lora_model(tiny_model)
    layer = model.get_base_model().get_decoder().layers[0]
    # q 64 + k 32 + v 32 + o 64 + gate 256 + up 256 + down 64 + attention output 64 (LoRA's A and B not counted)
    assert checkpointing.kept_values_per_token(config, layer) == 832
    per_token = 832 * config.num_hidden_layers * 4
    assert checkpointing.selective_fits(config, layer, 100, 4, base_bytes=100 * per_token)
    assert not checkpointing.selective_fits(config, layer, 101, 4, base_bytes=100 * per_token)

    hp = {"n_epochs": 1, "batch_size": 16, "learning_rate": 3e-3, "seed": 7, "gradient_checkpointing": True}
    # The tiny base is ~0.6 MB and a batch's outputs ~6 MB: full by default, selective given room.
    monkeypatch.setattr(checkpointing, "SELECTIVE_MAX_SHARE", 1000.0)
    selective, events = run_in_process(request(tiny_model, waimai_small, tmp_path / "s", hyperparameters=hp, max_steps=1), monkeypatch)
    monkeypatch.setattr(checkpointing, "SELECTIVE_MAX_SHARE", 0.0)
    full, _ = run_in_process(request(tiny_model, waimai_small, tmp_path / "f", hyperparameters=hp, max_steps=1), monkeypatch)
    assert (selective["gradient_checkpointing"], full["gradient_checkpointing"]) == ("selective", "full")
    assert selective["packed"] is True
    assert any(e["type"] == "log" and "gradient checkpointing selective" in e["message"] for e in events)
    assert full["final_train_loss"] == pytest.approx(selective["final_train_loss"], rel=1e-6)


def test_auto_checkpointing_is_off_while_every_activation_fits(tiny_model, monkeypatch) -> None:
    from types import SimpleNamespace

    model = lora_model(tiny_model)
    config = model.get_base_model().config
    layer = model.get_base_model().get_decoder().layers[0]
    all_per_token = 832 * config.num_hidden_layers * 4 * checkpointing.ALL_ACTIVATIONS_PER_KEPT
    assert checkpointing.all_fit(config, layer, 100, 4, base_bytes=round(100 * all_per_token) + 1)
    assert not checkpointing.all_fit(config, layer, 101, 4, base_bytes=round(100 * all_per_token) + 1)

    monkeypatch.setattr(checkpointing, "GRADIENT_CHECKPOINTING_MIN_PARAMETERS", 0)  # the tiny base counts as large
    base = model.get_base_model()
    base_bytes = sum(t.numel() * t.element_size() for t in [*base.parameters(), *base.buffers()] if not t.requires_grad)
    # Batch 4 of 10-token examples, packed: 40 tokens. The share decides between off, selective and full.
    mode = lambda setting, share: (  # noqa: E731
        monkeypatch.setattr(checkpointing, "SELECTIVE_MAX_SHARE", share),
        checkpointing.checkpointing_mode(SimpleNamespace(gradient_checkpointing=setting, batch_size=4, gradient_accumulation_steps=1), model, [10] * 8, True, False),
    )[1]
    needed_all = 40 * all_per_token / base_bytes
    needed_selective = 40 * 832 * config.num_hidden_layers * 4 / base_bytes
    assert mode("auto", needed_all * 1.001) == "off"
    assert mode("auto", (needed_all + needed_selective) / 2) == "selective"
    assert mode("auto", needed_selective / 2) == "full"
    assert mode(True, needed_all * 10) == "selective", "asked for checkpointing: never off"
    assert mode(False, 0.0) == "off"
