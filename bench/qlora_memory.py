"""Resident memory of the base weights: bf16 LoRA vs QLoRA (NF4), on the Qwen2.5-0.5B shape with random weights.

    .venv/bin/python bench/qlora_memory.py [--config bench/configs/qwen2.5-0.5b.json]

Each setup runs in its own subprocess (a fresh allocator, so one cannot reuse the other's freed pages).
The subprocess imports torch/transformers/peft, notes its RSS, builds the model skeleton on the meta
device and materializes it one module at a time with random weights (std 0.02, as from_pretrained would
fill them): in bf16 for LoRA; for QLoRA every decoder linear is quantized to NF4 as soon as it exists
(engine/weitiao_engine/quantize.py), so a dense copy of the whole model never lives. Then PEFT's LoRA
(r=8, all linears) is put on top, one forward pass checks the model runs, and it reports the RSS growth
after building (the base weights: what stays resident during training) and the peak growth (ru_maxrss).

Three setups: bf16 LoRA; QLoRA as in the paper (decoder linears NF4, embeddings and norms bf16), which
the engine's `qlora` method trains with; and QLoRA with the embedding in NF4 too (`quantize_model_nf4(...,
embeddings=True)`, opt-in). For Qwen2.5-0.5B the tied 151936×896 embedding is 28 % of the parameters, so
with linears alone the whole-base ratio cannot fall below ~0.45; the linears' own ratio is printed too.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "bench" / "configs" / "qwen2.5-0.5b.json"
MB = 1024 * 1024


def rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def child(mode: str, config_path: str) -> dict:
    """Builds the model in `mode` (bf16 | qlora) in this process; returns the memory figures."""
    import torch
    from peft import LoraConfig, get_peft_model
    from torch import nn
    from transformers import AutoConfig, AutoModelForCausalLM

    sys.path.insert(0, str(REPO / "engine"))
    from weitiao_engine.quantize import NF4Embedding, NF4Linear, nf4_bytes, quantize_nf4

    torch.set_num_threads(1)
    config = AutoConfig.from_pretrained(config_path)
    gc.collect()
    rss0, peak0 = rss(), peak_rss()

    torch.manual_seed(0)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    head = model.get_output_embeddings()
    linear_params = 0
    for name, module in list(model.named_modules()):
        if type(module) is nn.Linear and module is not head:
            linear_params += module.in_features * module.out_features
            bias = None if module.bias is None else torch.zeros(module.out_features, dtype=torch.bfloat16)
            weight = torch.empty(module.out_features, module.in_features, dtype=torch.bfloat16).normal_(0, 0.02)
            if mode != "bf16":
                packed, absmax = quantize_nf4(weight)
                del weight
                new: nn.Module = NF4Linear(module.in_features, module.out_features, packed, absmax, bias, compute_dtype=torch.bfloat16)
            else:
                new = nn.Linear(module.in_features, module.out_features, bias=bias is not None, device="meta", dtype=torch.bfloat16)
                new.weight = nn.Parameter(weight, requires_grad=False)
                if bias is not None:
                    new.bias = nn.Parameter(bias, requires_grad=False)
            parent, _, child_name = name.rpartition(".")
            setattr(model.get_submodule(parent), child_name, new)
    if mode == "qlora-emb":  # the opt-in: the (tied) embedding in NF4 too, quantized 8192 rows at a time as they are made
        emb = model.get_input_embeddings()
        rows, dim = emb.num_embeddings, emb.embedding_dim
        packed, absmax = torch.empty(rows * dim // 2, dtype=torch.uint8), torch.empty(rows * dim // 64)
        for r in range(0, rows, 8192):  # rows of whole blocks: each chunk's codes are a slice of the whole's
            n = min(8192, rows - r)
            p, a = quantize_nf4(torch.empty(n, dim, dtype=torch.bfloat16).normal_(0, 0.02))
            packed[r * dim // 2 : (r + n) * dim // 2], absmax[r * dim // 64 : (r + n) * dim // 64] = p, a
        quantized = NF4Embedding(rows, dim, packed, absmax, torch.bfloat16)
        model.set_input_embeddings(quantized)
        if config.tie_word_embeddings:
            model.set_output_embeddings(quantized.as_linear())
    # Everything else (embeddings, norms; the tied head shares the embedding) in bf16.
    made: dict[int, nn.Parameter] = {}  # meta parameter -> its real one, so tied modules keep sharing one tensor
    for module in model.modules():
        for pname, p in list(module._parameters.items()):
            if p is not None and p.is_meta:
                if id(p) not in made:
                    data = torch.ones(p.shape, dtype=torch.bfloat16) if p.ndim == 1 else torch.empty(p.shape, dtype=torch.bfloat16).normal_(0, 0.02)
                    made[id(p)] = nn.Parameter(data, requires_grad=False)
                module._parameters[pname] = made[id(p)]
        if any(b.is_meta for b in module.buffers(recurse=False)):  # rotary inv_freq: recompute on CPU
            fresh = type(module)(config=config)
            for bname, b in fresh.named_buffers(recurse=False):
                setattr(module, bname, b)
    del made
    head, emb = model.get_output_embeddings(), model.get_input_embeddings()
    assert not config.tie_word_embeddings or (head.qweight is emb.qweight if mode == "qlora-emb" else head.weight is emb.weight)
    gc.collect()
    base_rss = rss() - rss0
    base_peak = peak_rss() - peak0

    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM"))
    with torch.no_grad():
        logits = model(input_ids=torch.randint(0, config.vocab_size, (1, 16))).logits
    assert torch.isfinite(logits).all()
    base_params = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    return {
        "mode": mode,
        "base_rss_mb": base_rss / MB,
        "base_peak_mb": base_peak / MB,
        "linear_params": linear_params,
        "other_base_params": base_params,  # embeddings, norms, biases (the NF4 codes are buffers)
        "linear_bytes_mb": sum(m.qweight.numel() + m.nf4_absmax.numel() * 4 for n, m in model.named_modules() if isinstance(m, NF4Linear) and "lm_head" not in n) / MB
        if mode != "bf16"
        else linear_params * 2 / MB,
        "nf4_bytes_mb": nf4_bytes(model) / MB,
        "with_lora_rss_mb": (rss() - rss0) / MB,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(CONFIG))
    parser.add_argument("--child", choices=["bf16", "qlora", "qlora-emb"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.config)))
        return 0

    results = {}
    for mode in ("bf16", "qlora", "qlora-emb"):
        # A fixed mmap threshold: glibc otherwise raises it after the first large free and keeps later
        # freed temporaries (quantization scratch) in the heap, where they count as resident for good.
        env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "MALLOC_MMAP_THRESHOLD_": "1048576"}
        out = subprocess.run([sys.executable, __file__, "--child", mode, "--config", args.config], capture_output=True, text=True, env=env)
        if out.returncode != 0:
            print(out.stderr[-3000:], file=sys.stderr)
            return 1
        results[mode] = json.loads(out.stdout.strip().splitlines()[-1])

    b, q, e = results["bf16"], results["qlora"], results["qlora-emb"]
    print(f"config: {args.config}")
    print(f"{'':28}{'bf16 LoRA':>11}{'QLoRA':>9}{'ratio':>7}{'QLoRA+NF4 emb':>15}{'ratio':>7}")
    for key, label in [
        ("base_rss_mb", "base weights, resident MB"),
        ("base_peak_mb", "base weights, peak MB"),
        ("linear_bytes_mb", "decoder linears, MB"),
        ("with_lora_rss_mb", "+ LoRA r=8, resident MB"),
    ]:
        print(f"{label:28}{b[key]:11.1f}{q[key]:9.1f}{q[key] / b[key]:7.3f}{e[key]:15.1f}{e[key] / b[key]:7.3f}")
    print(f"decoder linear parameters: {b['linear_params']:,}; embedding, norms, biases: {b['other_base_params'] - b['linear_params']:,}")
    print("QLoRA keeps the embedding (and the tied head) in bf16, as the paper does; QLoRA+NF4 emb quantizes it too (opt-in).")
    ratios = {k: results[k]["base_rss_mb"] / b["base_rss_mb"] for k in ("qlora", "qlora-emb")}
    print(json.dumps({**results, "ratio_base_rss": ratios}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
