"""A PEFT LoRA adapter as a llama.cpp adapter GGUF (`--lora`, node-llama-cpp's `lora`).

llama.cpp adds scale * B @ A to a base weight, scale = adapter.lora.alpha / rank, with tensors named
`<base tensor>.lora_a` / `.lora_b`. ggml's shapes are PyTorch's reversed, so PEFT's lora_A.weight (r, in) and
lora_B.weight (out, r) go in as they are. Where the base's rows are permuted for llama.cpp (Llama's q/k,
gguf_model), B's rows are permuted the same way: (P W) = (P B) A.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from gguf import MODEL_ARCH

from ..protocol import EngineError
from . import gguf_model

PREFIX = "base_model.model."


def adapter_settings(adapter_dir: str) -> dict[str, Any]:
    """adapter_config.json, refused when llama.cpp's LoRA cannot express it."""
    config = json.loads((Path(adapter_dir) / "adapter_config.json").read_text(encoding="utf-8"))
    if config.get("modules_to_save"):
        raise EngineError(
            "invalid_request",
            f"the adapter trains whole modules ({', '.join(config['modules_to_save'])}, PEFT's modules_to_save), which a "
            "LoRA GGUF cannot hold: export the merged model instead (adapter_only: false) "
            "/ 该适配器完整训练了部分模块（modules_to_save），无法写成 LoRA GGUF，请导出合并后的模型",
            "adapter_only",
        )
    unsupported = [k for k in ("use_dora", "rank_pattern", "alpha_pattern") if config.get(k)]
    if unsupported:
        raise EngineError("invalid_request", f"LoRA GGUF cannot express {', '.join(unsupported)} / LoRA GGUF 不支持 {', '.join(unsupported)}", "adapter_only")
    return config


def alpha(config: dict[str, Any]) -> float:
    """adapter.lora.alpha such that llama.cpp's alpha / r equals PEFT's scaling (alpha / sqrt(r) under rsLoRA)."""
    r, lora_alpha = config["r"], config["lora_alpha"]
    return float(lora_alpha * math.sqrt(r)) if config.get("use_rslora") else float(lora_alpha)


def lora_tensors(adapter_dir: str, model_config: Any, arch: MODEL_ARCH) -> Iterator[tuple[str, np.ndarray]]:
    """(GGUF name, float32 array) for every lora_A/lora_B matrix of the adapter."""
    from safetensors.torch import load_file

    names = gguf_model.name_map(model_config, arch)
    weights = load_file(str(Path(adapter_dir) / "adapter_model.safetensors"))
    for key in sorted(weights):
        if "lora_embedding" in key or key.endswith(".lora_magnitude_vector"):
            raise EngineError("invalid_request", f"LoRA GGUF cannot hold {key} (LoRA on an embedding / DoRA) / LoRA GGUF 不支持 {key}", "adapter_only")
        module, _, kind = key.removeprefix(PREFIX).rpartition(".lora_")
        if kind not in ("A.weight", "B.weight"):
            raise EngineError("invalid_request", f"unexpected adapter tensor {key} / 适配器中有无法识别的张量 {key}", "adapter")
        base = gguf_model.gguf_name(names, module + ".weight")
        tensor = weights[key].float()
        heads = gguf_model.rows_permutation(model_config, arch, base)
        if kind == "B.weight" and heads is not None:
            tensor = gguf_model.permute_rows(tensor, heads)
        yield f"{base}.lora_{kind[0].lower()}", tensor.numpy()
