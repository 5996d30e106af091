"""`estimate`: peak memory and time per epoch of a `train` run, before starting it.

    echo '{"base_model": "…/qwen2.5-0.5b", "training_file": "train.jsonl", "method": "qlora",
           "batch_size": 8, "max_seq_length": 512}' | python -m weitiao_engine estimate

Peak resident memory = the process's runtime (measured here: this process has imported the same
libraries and loaded the same tokenizer and data as `train` does) + the larger of two phases:

  load   the recipe reads the checkpoint one tensor at a time (loading.load_causal_lm), so: the base
         weights plus the largest tensor as stored in the file (QLoRA: one chunk of rows being quantized);
  train  base weights (fp32 or bf16 as the recipe's precision stores them; NF4 codes + fp32 absmax under
         QLoRA for the linears and, unless modules_to_save trains it, the embedding) + LoRA weights,
         gradients and AdamW's two moments (4 + 4 + 8 bytes per trainable parameter) + activations of the
         largest micro-batch (with gradient checkpointing: each layer's input, plus under selective
         checkpointing its matmul outputs, plus one layer recomputed) + the LM head's logits on trained
         positions (logits, log-softmax, gradient).

Activations are not guessed: a one-layer copy of the model (same widths, LoRA on, QLoRA-quantized when
asked) runs one training forward pass at two sequence lengths while `saved_tensors_hooks` add up every
tensor autograd keeps; that gives bytes per token and per token² (attention) per layer, scaled to the
layers and the largest micro-batch (the recipe packs it: its longest examples' tokens, no padding).

Time per epoch = FLOPs / (this machine's matmul rate in the run's precision × EFFICIENCY: on a CPU the precision
probe's figures for the model's own linear shapes, training/precision_probe.py, shared with `train` through its cache), where FLOPs per
token = 2 × (forward) for the frozen base (its weights need no gradient, only the input's; 3 × with full
gradient checkpointing, which runs the forward again; selective checkpointing keeps the matmul outputs) + 6 × LoRA's parameters, + 4 × vocab × hidden per
trained token for the LM head; QLoRA adds a dequantization of every NF4 matrix per pass, timed here as well.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from .protocol import EngineError, EstimateRequest, log, progress

# Measured/achieved matmul rate in whole training steps on this CPU (tiny and 0.5B shapes): attention,
# norms, activations and Python overhead between the matmuls take the rest.
EFFICIENCY = 0.35
PROBE_LENGTHS = (32, 64)  # two sequence lengths give the per-token and per-token² activation terms
ADAMW_BYTES = 8  # two fp32 moments per trainable parameter
MB = 1024 * 1024


def run(request: EstimateRequest) -> dict[str, Any]:
    """Predicts `train`'s peak memory (bytes, with a breakdown) and seconds per epoch for this request."""
    import psutil
    from transformers import AutoConfig

    from .tokens import auto_tokenizer

    from .chat_format import tokenize_examples
    from .loading import checkpoint_dtype, set_threads
    from .quantize import QUANTIZE_ROWS
    from .training import activation_checkpointing as ac
    from .training.activation_checkpointing import GRADIENT_CHECKPOINTING_MIN_PARAMETERS
    from .training.data import load_examples
    from .training import precision_probe

    threads = set_threads(request.threads)
    base = Path(request.base_model)
    if not (base / "config.json").is_file():
        raise EngineError("not_found", f"base model directory {base} has no config.json / 基础模型目录不存在或不完整", "base_model")

    progress("estimate", 0, 4, "reading data / 读取数据")
    examples = load_examples(request.training_file, "training_file")
    config = AutoConfig.from_pretrained(str(base))
    tokenizer = auto_tokenizer(base)
    data, n_truncated = tokenize_examples(tokenizer, examples, request.max_seq_length)
    lengths = [len(e.input_ids) for e in data]
    trained = [e.n_trained for e in data]
    import peft  # noqa: F401 - `train` imports it too: part of the runtime it carries
    import transformers  # noqa: F401

    runtime = psutil.Process().memory_info().rss

    progress("estimate", 1, 4, "counting parameters / 统计参数")
    counts = parameter_counts(config, request)
    batch = min(request.batch_size, len(data))
    rows = math.ceil(batch / request.gradient_accumulation_steps)  # one forward/backward holds a micro-batch
    widest = sum(sorted(lengths, reverse=True)[:rows])  # packed (training/batching.pack): the longest examples' tokens
    head_positions = rows * max(trained)
    qlora = request.method == "qlora"
    # As the recipe: bf16 on/off, or auto by the probe of this model's linear shapes (cached per machine; its figures
    # also give the matmul rate below); a bf16 checkpoint keeps bf16 frozen weights where compute is fp32; QLoRA's
    # dense rest stays fp32.
    # The same cache entry as the run's (training/precision.choose_for_run): its LoRA rank (none under QLoRA) at
    # about its tokens per micro-batch, here from the real tokenized lengths.
    micro_tokens = round(rows * sum(lengths) / len(lengths)) if lengths else None
    choice = precision_probe.choose(
        request.bf16, config, checkpoint_dtype(base) == torch.bfloat16, tokens=micro_tokens, lora_rank=None if qlora else request.lora.r
    )
    precision = choice["precision"]
    if qlora and precision == "bf16-weights":
        precision = "fp32"
    checkpointing = request.gradient_checkpointing
    if checkpointing == "auto":  # as training/activation_checkpointing.use_gradient_checkpointing
        checkpointing = counts["total"] >= GRADIENT_CHECKPOINTING_MIN_PARAMETERS

    file_bytes, file_fp32 = weight_file_bytes(base)
    stored_bytes = 4 if file_fp32 else 2  # per weight in the checkpoint (bf16/fp16 or fp32)
    if qlora:
        # 4.5 bits per NF4 weight: every linear and, unless modules_to_save trains them, the embedding (a tied head shares it).
        nf4 = counts["linear"] + (0 if counts["embedding_trained"] else counts["embedding"])
        base_weights = nf4 * 9 // 16 + (counts["total"] - nf4) * 4
        # The loader reads and quantizes QUANTIZE_ROWS rows at a time: that chunk and its fp32 scratch.
        load = base_weights + QUANTIZE_ROWS * config.hidden_size * (stored_bytes + 4 * 4)
    else:
        base_weights = counts["total"] * (4 if precision == "fp32" else 2)
        # Tensor by tensor (loading.load_causal_lm): the weights so far plus the largest tensor as read from the file.
        load = base_weights + counts["largest_tensor"] * stored_bytes

    progress("estimate", 2, 4, "measuring activations / 测量激活")
    per_token, per_token2, layer = activation_coefficients(config, request)
    layers = config.num_hidden_layers
    one_layer = per_token * widest + per_token2 * widest**2  # one packed row: its block-diagonal mask is widest²
    value_bytes = 2 if precision == "bf16" else 4
    # "off", "selective" or "full", decided as the recipe decides (training/activation_checkpointing.mode_for).
    checkpointing = ac.mode_for(request.gradient_checkpointing, config, layer, widest, value_bytes, base_weights) if checkpointing else "off"
    if checkpointing != "off":
        # Each layer's input (fp32) is kept (selective: and its matmul outputs); backward recomputes one layer at a
        # time, holding its activations and their gradients.
        kept = config.hidden_size * 4 + (ac.kept_values_per_token(config, layer) * value_bytes if checkpointing == "selective" else 0)
        activations = layers * widest * kept + 2 * one_layer
    else:
        # All layers' saved tensors, plus one layer's worth of gradients in flight during backward.
        activations = (layers + 1) * one_layer
    if qlora:
        activations += counts["largest_linear"] * (4 + 4 + 4)  # one layer's dequantization scratch: byte indices, values, scaled
    elif precision == "bf16-weights":  # with checkpointing, the recomputed layer's upcasts are kept for its backward
        activations += (counts["linear"] // layers if checkpointing != "off" else counts["largest_linear"] * 2) * 4
    lm_head = head_positions * config.vocab_size * 4 * 3
    trainable = counts["lora"] + counts["modules_to_save"]
    train = base_weights + counts["modules_to_save"] * 4 + trainable * (4 + 4 + ADAMW_BYTES) + activations + lm_head
    peak = runtime + max(load, train)

    progress("estimate", 3, 4, "timing matmuls / 测量矩阵乘法速度")
    figures = choice.get("figures")
    # The probe's rate for the products the run will compute (fp32, bf16, or fp32 from upcast bf16 weights); a GPU: timed here.
    rate = figures["gflops"][precision] * 1e9 if figures else matmul_rate(config.hidden_size, min(widest, 512))
    steps = math.ceil(len(data) / batch)
    padded = padded_tokens(lengths, rows)
    mean_len = sum(lengths) / len(lengths)
    forward_per_token = 2 * (counts["linear"] + counts["lora"]) + 4 * layers * mean_len * config.hidden_size
    passes = 3 if checkpointing == "full" else 2  # forward + backward to the inputs; full checkpointing runs the forward twice
    flops = sum(lengths) * (passes * forward_per_token + 4 * counts["lora"]) + sum(trained) * 4 * config.vocab_size * config.hidden_size
    seconds = flops / (rate * EFFICIENCY)
    if request.method == "qlora":  # every NF4 matrix is dequantized once per pass
        seconds += steps * passes * (counts["linear"] + counts["embedding"] * (not counts["embedding_trained"])) * dequantize_seconds_per_weight()
    progress("estimate", 4, 4)
    log(
        f"estimate: peak {peak / MB:.0f} MB (runtime {runtime / MB:.0f}, load {load / MB:.0f}, train {train / MB:.0f}),"
        f" {seconds:.0f} s per epoch at {rate / 1e9:.1f} GFLOP/s × {EFFICIENCY} on {threads} threads; {precision_probe.describe(choice)}"
    )
    return {
        "method": request.method,
        "peak_memory_bytes": int(peak),
        "memory": {
            "runtime_bytes": int(runtime),
            "load_bytes": int(load),
            "base_weights_bytes": int(base_weights),
            "trainable_bytes": int(trainable * 4),
            "gradient_bytes": int(trainable * 4),
            "optimizer_bytes": int(trainable * ADAMW_BYTES),
            "activation_bytes": int(activations),
            "lm_head_bytes": int(lm_head),
        },
        "time_per_epoch_seconds": seconds,
        "steps_per_epoch": steps,
        "n_examples": len(data),
        "n_truncated": n_truncated,
        "tokens_per_epoch": sum(lengths),
        "padded_tokens_per_epoch": padded,
        "max_tokens": max(lengths),
        "mean_tokens": mean_len,
        "base_parameters": counts["total"],
        "trainable_parameters": trainable,
        "flops_per_epoch": flops,
        "matmul_flops_per_second": rate,
        "efficiency": EFFICIENCY,
        "threads": threads,
        "precision": precision,
        "precision_choice": choice,
        "gradient_checkpointing": checkpointing,
    }


def target_linears(model, request: EstimateRequest) -> list[tuple[str, torch.nn.Linear]]:
    """The linears LoRA wraps: every one but the LM head for `all-linear`, else those whose last name part matches."""
    head = model.get_output_embeddings()
    target = request.lora.target_modules
    return [
        (n, m)
        for n, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and m is not head and (target == "all-linear" or n.rsplit(".", 1)[-1] in target)
    ]


def parameter_counts(config, request: EstimateRequest) -> dict[str, int]:
    """Parameters of the base (total, decoder linears, largest linear), of LoRA and of modules_to_save, on the meta device."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    head = model.get_output_embeddings()
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not head]
    r = request.lora.r
    lora = sum(r * (m.in_features + m.out_features) for _, m in target_linears(model, request))
    to_save = 0
    keep = request.lora.modules_to_save or []
    for name in keep:
        to_save += sum(p.numel() for n, m in model.named_modules() if n.endswith(name) for p in m.parameters())
    embedding = model.get_input_embeddings()
    names = {id(m): n for n, m in model.named_modules()}
    tied = head is not None and head.weight is embedding.weight
    return {
        "total": sum(p.numel() for p in model.parameters()),  # tied weights counted once
        "linear": sum(m.weight.numel() for m in linears),
        "largest_linear": max(m.weight.numel() for m in linears),
        "largest_tensor": max(p.numel() for p in model.parameters()),
        # the embedding plus an untied head: what QLoRA also quantizes unless modules_to_save trains them
        "embedding": embedding.weight.numel() + (0 if tied or head is None else head.weight.numel()),
        "embedding_trained": any(names[id(m)].endswith(k) for m in (embedding, head) if m is not None for k in keep),
        "lora": lora,
        "modules_to_save": to_save,
    }


def activation_coefficients(config, request: EstimateRequest) -> tuple[float, float, torch.nn.Module]:
    """Bytes autograd saves per token and per token² in one decoder layer under this method (measured), and that layer."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from .training.lora_dropout import use_lora_dropout

    fields = {**config.to_dict(), "num_hidden_layers": 1, "vocab_size": 256, "tie_word_embeddings": False}
    if isinstance(fields.get("layer_types"), list):  # per-layer attention kinds (sliding/full): keep the first
        fields["layer_types"] = fields["layer_types"][:1]
    small = config.__class__.from_dict(fields)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(small, dtype=torch.float32)
    if request.method == "qlora":
        from .quantize import quantize_model_nf4

        quantize_model_nf4(model)
    names = sorted({n.rsplit(".", 1)[-1] for n, _ in target_linears(model, request)})
    lora = LoraConfig(r=request.lora.r, lora_alpha=request.lora.alpha, lora_dropout=request.lora.dropout, target_modules=names)
    model = get_peft_model(model, lora)
    use_lora_dropout(model)  # as the recipe: it keeps the dropped positions (int64), not a mask
    model.train()
    decoder = model.get_base_model().get_decoder()
    fixed = {t.data_ptr() for t in list(model.parameters()) + list(model.buffers())}

    def saved_bytes(length: int) -> float:
        storages: dict[int, int] = {}

        def pack(t: torch.Tensor):
            if t.data_ptr() not in fixed and t.device.type != "meta":
                storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        ids = torch.randint(0, 256, (2, length))
        mask = torch.ones(2, length, dtype=torch.long)
        mask[1, -length // 4 :] = 0  # padding, as in a real batch: attention takes its masked path
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            hidden = decoder(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        del hidden
        return sum(storages.values()) / 2  # per sequence

    s1, s2 = PROBE_LENGTHS
    b1, b2 = saved_bytes(s1), saved_bytes(s2)
    # b(s) = a·s + c·s², solved from the two lengths.
    quad = max(0.0, (b2 / s2 - b1 / s1) / (s2 - s1))
    linear = max(0.0, b1 / s1 - quad * s1)
    return linear, quad, decoder.layers[0]


def weight_file_bytes(base: Path) -> tuple[int, bool]:
    """(bytes of the safetensors weight files, whether they are all fp32 — then loading maps nothing extra)."""
    files = sorted(base.glob("*.safetensors"))
    total = sum(f.stat().st_size for f in files)
    fp32 = True
    for f in files:
        with f.open("rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(n))
        fp32 = fp32 and all(v.get("dtype") == "F32" for k, v in header.items() if k != "__metadata__")
    return total, fp32


def matmul_rate(hidden: int, rows: int) -> float:
    """fp32 matmul FLOP/s of this process's threads on a training-shaped product (≤ ~1 s of timing)."""
    a = torch.randn(max(rows, 64), hidden)
    b = torch.randn(hidden, hidden * 4)
    flops_each = 2 * a.shape[0] * hidden * hidden * 4
    torch.matmul(a, b)  # warm up (thread pool, caches)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < 0.3 or n < 3:
        torch.matmul(a, b)
        n += 1
        if time.perf_counter() - start > 1.0:
            break
    return n * flops_each / (time.perf_counter() - start)


def dequantize_seconds_per_weight() -> float:
    """Seconds to dequantize one NF4 weight (timed on 1M weights)."""
    from .quantize import dequantize_nf4, quantize_nf4

    w = torch.randn(1024, 1024)
    packed, absmax = quantize_nf4(w)
    dequantize_nf4(packed, absmax, w.shape)
    start = time.perf_counter()
    for _ in range(3):
        dequantize_nf4(packed, absmax, w.shape)
    return (time.perf_counter() - start) / 3 / w.numel()


def padded_tokens(lengths: list[int], batch: int) -> int:
    """Tokens including padding over one epoch of shuffled batches (a fixed seed: the estimate is repeatable)."""
    order = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(0)).tolist()
    return sum(len(order[i : i + batch]) * max(lengths[j] for j in order[i : i + batch]) for i in range(0, len(order), batch))
