"""Precision: what `bf16` on/off/auto becomes for a run on this machine (choose_for_run), bf16 autocast, and bf16-stored frozen
weights computed in fp32. What the optimizer updates always stays fp32 (a bf16 AdamW update underflows)."""

from __future__ import annotations

import types
from contextlib import nullcontext
from typing import Any, Optional

import torch
import torch.nn.functional as F
from transformers import AutoConfig

from .. import distributed
from ..loading import checkpoint_dtype, set_threads
from ..protocol import log
from . import precision_probe


def choose_for_run(request, full: bool = False) -> dict[str, Any]:
    """The run's precision, one rule for every recipe: `bf16` on/off, or auto by measurement (precision_probe.choose:
    this model's linear shapes and one of its layers in fp32 and bf16, cached per machine) — its layer frozen with the
    run's LoRA as under LoRA/DPO/GRPO, or training as under full fine-tuning (`full`), at about the run's tokens per
    micro-batch (micro_batch_tokens). Every rank of a torchrun takes rank 0's choice;
    it is logged with the probe's figures; the probe's thread count applies unless the job set one.

    choice["precision"] is what this run uses: "bf16" (bf16 autocast; frozen weights stored in bf16), "bf16-weights"
    (a bf16 checkpoint's frozen weights kept in bf16, fp32 compute: compute_in_fp32) or "fp32". Full fine-tuning
    keeps fp32 weights ("bf16" is autocast only); QLoRA's dense rest is fp32 (NF4 replaced the base linears)."""
    bf16_checkpoint = not full and checkpoint_dtype(request.base_model) == torch.bfloat16
    config = AutoConfig.from_pretrained(request.base_model)
    lora_rank = None if full or request.method == "qlora" else request.lora.r  # QLoRA's base is NF4: the layer stays plain
    tokens = micro_batch_tokens(request)
    choice = precision_probe.choose(request.hyperparameters.bf16, config, bf16_checkpoint, full=full, tokens=tokens, lora_rank=lora_rank)
    choice = distributed.gather_objects(choice)[0]  # under torchrun every rank trains as rank 0 measured
    if request.method == "qlora" and choice["precision"] == "bf16-weights":
        choice = {**choice, "precision": "fp32", "reason": choice.get("reason", "") + "; QLoRA: the dense rest in fp32"}
    log(precision_probe.describe(choice))
    if request.threads is None and choice.get("threads", torch.get_num_threads()) != torch.get_num_threads():
        set_threads(choice["threads"])  # the probe found all logical CPUs faster than one thread per physical core
    return choice


SAMPLE_EXAMPLES = 64  # training examples read to size the probe's micro-batch


def micro_batch_tokens(request) -> Optional[int]:
    """About how many tokens one forward/backward of this run holds (the probe times its layer at that many): the
    micro-batch's examples (batch_size per process / gradient_accumulation_steps) at the mean length of the training
    file's first SAMPLE_EXAMPLES records, each counted as its strings' tokens (roles included) plus two per string for the chat
    template, capped at max_seq_length. None when the file or tokenizer cannot be read (the recipe reports that)."""
    import json
    import math
    from pathlib import Path

    from ..tokens import auto_tokenizer

    hp = request.hyperparameters
    micro = math.ceil(math.ceil(hp.batch_size / max(request.nproc, 1)) / hp.gradient_accumulation_steps)
    try:
        with Path(request.training_file).open(encoding="utf-8-sig") as f:
            records = [json.loads(line) for line, _ in zip((line for line in f if line.strip()), range(SAMPLE_EXAMPLES))]
        tokenizer = auto_tokenizer(request.base_model)
    except Exception:  # noqa: BLE001 (unreadable file or tokenizer: the probe's default rows; the recipe reports the error)
        return None
    lengths = []
    for record in records:
        texts = list(_strings(record))
        n = len(tokenizer("\n".join(texts), add_special_tokens=False)["input_ids"]) + 2 * len(texts)
        lengths.append(min(n, hp.max_seq_length))
    return round(micro * sum(lengths) / len(lengths)) if lengths else None


def _strings(value):
    """Every string in a JSON record (messages' contents, prompts, answers), in order."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def autocast_context(bf16: bool):
    """bf16 autocast when the run uses bf16, else nothing."""
    if not bf16:
        return nullcontext()
    return torch.autocast("cuda" if torch.cuda.is_available() else "cpu", dtype=torch.bfloat16)


def autocast(state):
    """`autocast_context(state.bf16)`: the run's compute precision."""
    return autocast_context(state.bf16)


def trainable_in_fp32(model) -> None:
    """What the optimizer updates stays fp32 (a bf16 AdamW update underflows); tied weights share the Parameter."""
    for p in model.parameters():
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()


def compute_in_fp32(model, keep_upcast: bool = False) -> None:
    """bf16-stored frozen weights, fp32 arithmetic: each frozen linear upcasts its weight for the call (one
    matrix at a time, freed at once); the embedding's output is upcast; the LM head, which sees only the
    few labelled positions, multiplies in bf16 rather than upcast its vocabulary-sized matrix.

    keep_upcast (with gradient checkpointing): backward uses the fp32 copy that the layer's recomputation
    made, instead of upcasting again; only the layer being recomputed holds its copies (the first forward's
    are not kept), so that costs one layer's fp32 weights and saves a third of the upcasts."""
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = causal_lm.get_output_embeddings()

    def upcast_linear(self, x):
        return _FrozenUpcastLinear.apply(x, self.weight, self.bias, keep_upcast)

    def head_in_weight_dtype(self, x):
        return F.linear(x.to(self.weight.dtype), self.weight, self.bias)

    for module in causal_lm.modules():
        if module is head:
            module.forward = types.MethodType(head_in_weight_dtype, module)
        elif isinstance(module, torch.nn.Linear) and module.weight.dtype != torch.float32 and not module.weight.requires_grad:
            module.forward = types.MethodType(upcast_linear, module)
    causal_lm.get_input_embeddings().register_forward_hook(lambda _m, _i, out: out.float())


class _FrozenUpcastLinear(torch.autograd.Function):
    """y = x·Wᵀ + b with a frozen bf16 W upcast for the call. Backward needs only W (no weight gradient), so
    the input is not kept, nor the fp32 copy (F.linear would save every layer's) unless keep_upcast."""

    @staticmethod
    def forward(ctx, x, weight, bias, keep_upcast):
        upcast = weight.to(x.dtype)
        ctx.save_for_backward(upcast if keep_upcast else weight)
        return F.linear(x, upcast, None if bias is None else bias.to(x.dtype))

    @staticmethod
    def backward(ctx, grad):
        (weight,) = ctx.saved_tensors
        return grad @ weight.to(grad.dtype), None, None, None
