"""LoRA: the frozen base (read tensor by tensor; QLoRA's NF4 as it arrives) and the adapter on top of it
(shared by the LoRA/QLoRA recipe and DPO's policy)."""

from __future__ import annotations

from typing import Any

import torch

from ..protocol import EngineError, TrainRequest, log
from .fused_projections import use_fused_projections
from .lora_forward import use_lean_lora_forward
from .precision import trainable_in_fp32
from .rng import seed_everything

# LoRA's dropout mask drawn as geometric gaps (lora_dropout.py): on unless the benchmark's ablation turns it off.
FAST_LORA_DROPOUT = True


def load_base(request: TrainRequest, precision: str) -> Any:
    """The frozen base model, read tensor by tensor (loading.load_causal_lm: never a dense copy beside it).

    Frozen weights are stored in fp32, or in bf16 when `precision` is not "fp32". QLoRA quantizes every
    linear to NF4 as it is read, and the input embedding (with the LM head tied to it) too, unless
    modules_to_save trains it: a trained module needs its dense weights, so it stays fp32.
    """
    from ..allocator import release_freed_memory
    from ..loading import load_causal_lm, resident_mib

    base, keep = request.base_model, tuple(request.lora.modules_to_save or ())
    nf4 = request.method == "qlora"
    dtype = torch.float32 if precision == "fp32" else torch.bfloat16
    try:
        model = load_causal_lm(base, dtype, nf4=nf4, nf4_embeddings=nf4, keep_dense=keep)
        if model is None:  # not plain safetensors under the model's own names: the usual loader, then quantize
            from transformers import AutoModelForCausalLM

            model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype)
            if nf4:
                from ..quantize import quantize_model_nf4

                head_name = next(n for n, m in model.named_modules() if m is model.get_output_embeddings())
                emb_name = next(n for n, m in model.named_modules() if m is model.get_input_embeddings())
                embeddings = not any(n == k or n.endswith("." + k) for n in (head_name, emb_name) for k in keep)
                model = quantize_model_nf4(model, skip=("lm_head", *keep), embeddings=embeddings)
            release_freed_memory()
    except EngineError:
        raise
    except Exception as e:  # transformers/safetensors raise OSError, ValueError… for broken directories
        raise EngineError("invalid_file", f"{base}: cannot load the model: {e} / 无法加载模型", "base_model") from e
    if nf4:
        from ..quantize import NF4Embedding

        if not isinstance(model.get_input_embeddings(), NF4Embedding):
            log(f"QLoRA: the embedding and LM head stay dense (fp32): modules_to_save {list(keep)} trains them, or their width is not a"
                " multiple of 64 / QLoRA：嵌入层与输出层保持全精度（需训练或宽度不是 64 的倍数）")  # fmt: skip
    log(f"base model loaded: {resident_mib():.0f} MiB resident (peak so far {resident_mib(peak=True):.0f} MiB) / 基础模型已加载")
    return model


def linear_module_names(model) -> list[str]:
    """`all-linear`: the names of every nn.Linear but the LM head (which is tied to the embedding)."""
    head = model.get_output_embeddings()
    names = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, torch.nn.Linear) and m is not head}
    return sorted(names)


def add_lora(model, request: TrainRequest) -> tuple[Any, Any]:
    """(PEFT model, its LoraConfig): request.lora's adapter on the base, initialised from (seed), trained weights fp32."""
    from peft import LoraConfig, get_peft_model

    missing = [m for m in request.lora.modules_to_save or [] if not any(n.endswith(m) for n, _ in model.named_modules())]
    if missing:
        raise EngineError("invalid_request", f"LoRA: modules_to_save {missing} not found in the model / 模型中没有这些模块", "lora.modules_to_save")
    seed_everything(request.hyperparameters.seed)  # LoRA's A matrices are initialised from the global RNG
    target = request.lora.target_modules
    lora = LoraConfig(
        r=request.lora.r,
        lora_alpha=request.lora.alpha,
        lora_dropout=request.lora.dropout,
        target_modules=linear_module_names(model) if target == "all-linear" else list(target),
        modules_to_save=request.lora.modules_to_save,
        # A trained embedding must stay the LM head too when the base ties them (Qwen2.5's small models).
        ensure_weight_tying=bool(request.lora.modules_to_save and model.config.tie_word_embeddings),
        task_type="CAUSAL_LM",
    )
    try:
        model = get_peft_model(model, lora)
    except ValueError as e:  # PEFT: target modules not found in the base model
        raise EngineError("invalid_request", f"LoRA: {e} / LoRA 配置无效", "lora.target_modules") from e
    trainable_in_fp32(model)
    use_lean_lora_forward(model)  # plain LoRA as one addmm over the base layer's output (lora_forward.py)
    use_fused_projections(model)  # q/k/v and gate/up as one matmul each (fused_projections.py)
    return model, lora


def describe(lora, model) -> str:
    """"LoRA r=8 on ['down_proj', …]: 123,456 trainable parameters", for the recipes' setup log."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return f"LoRA r={lora.r} on {sorted(lora.target_modules)}: {trainable:,} trainable parameters"


def use_fast_lora_dropout(model) -> None:
    """LoRA's dropout with the geometric-gap mask (lora_dropout.py), unless the benchmark's ablation turned it off."""
    if FAST_LORA_DROPOUT:
        from .lora_dropout import use_lora_dropout

        use_lora_dropout(model)


def lora_input_in_compute_dtype(model) -> int:
    """Under bf16 autocast: LoRA's input stays bf16. PEFT casts each LoRA layer's input to the adapter's dtype (fp32,
    trainable_in_fp32) before its dropout, and autocast casts it straight back to bf16 for lora_A: two copies of
    the layer's whole input per LoRA linear (seven per decoder layer), each way in backward too, and the dropout
    on fp32. lora_A multiplies in bf16 either way; only its (r-wide) weights are cast. Returns how many layers."""
    from peft.tuners.lora import LoraLayer

    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    for layer in layers:
        layer.cast_input_dtype_enabled = False
    return len(layers)
