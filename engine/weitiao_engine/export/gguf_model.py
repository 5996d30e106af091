"""A Hugging Face causal LM's config and weights as GGUF metadata and tensors, for llama.cpp.

Tensor names come from the gguf package's tables (TensorNameMap for the architecture). One layout change is
needed: llama.cpp applies Llama's rotary embedding to interleaved pairs (GPT-J style) while transformers
rotates the two halves of each head, so Llama's q/k projection rows are reordered per head, half i of the
pair (j, j + d/2) going to rows (2j, 2j + 1). Qwen2/Qwen3 use llama.cpp's NeoX rotation, which is the
transformers layout: their weights go in as they are.
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np
import torch
from gguf import MODEL_ARCH, MODEL_ARCH_NAMES, GGUFWriter, TensorNameMap, get_tensor_name_map

from ..protocol import EngineError

# config.json model_type -> llama.cpp architecture
ARCHITECTURES = {"qwen2": MODEL_ARCH.QWEN2, "qwen3": MODEL_ARCH.QWEN3, "llama": MODEL_ARCH.LLAMA}
# Llama's q/k rows are permuted for llama.cpp's rotary layout (module docstring)
PERMUTED = {MODEL_ARCH.LLAMA}


def architecture(config: Any) -> MODEL_ARCH:
    """llama.cpp's architecture for this config, or a clear refusal."""
    model_type = getattr(config, "model_type", None)
    if model_type in ARCHITECTURES:
        return ARCHITECTURES[model_type]
    if model_type in ("glm", "glm4", "chatglm"):
        raise EngineError(
            "invalid_request",
            f"GGUF export of {model_type!r} (GLM-4) models is not supported yet: llama.cpp runs them as its 'chatglm'/'glm4' "
            "architectures with partial, interleaved rotary embeddings that this exporter does not write; export as hf "
            "/ 暂不支持将 GLM-4 模型导出为 GGUF，请导出为 hf 格式",
            "format",
        )
    raise EngineError(
        "invalid_request",
        f"GGUF export supports {', '.join(ARCHITECTURES)} models, not {model_type!r} / GGUF 导出不支持该架构：{model_type}",
        "format",
    )


def head_dim(config: Any) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def rope(config: Any) -> dict[str, Any]:
    """The rotary settings: transformers 5 keeps them in rope_parameters, older configs in rope_theta/rope_scaling."""
    params = dict(getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})
    params.setdefault("rope_theta", getattr(config, "rope_theta", None) or 10000.0)
    params.setdefault("rope_type", params.get("type", "default"))
    return params


def write_metadata(writer: GGUFWriter, config: Any, name: str) -> None:
    """The architecture's hyperparameters (`<arch>.*` keys) and general.name."""
    writer.add_name(name)
    writer.add_vocab_size(config.vocab_size)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(getattr(config, "num_key_value_heads", None) or config.num_attention_heads)
    writer.add_key_length(head_dim(config))
    writer.add_value_length(head_dim(config))
    writer.add_rope_dimension_count(head_dim(config))
    writer.add_rope_freq_base(float(rope(config)["rope_theta"]))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    if getattr(config, "hidden_act", "silu") != "silu":
        raise EngineError("invalid_request", f"activation {config.hidden_act!r} is not SiLU / 不支持的激活函数", "format")


def rope_tensors(config: Any) -> Iterator[tuple[str, np.ndarray]]:
    """Extra tensors for rotary scaling: Llama 3.1's frequency factors (`rope_freqs.weight`, divided into the
    base frequencies by llama.cpp); other scalings are refused rather than silently dropped."""
    params = rope(config)
    kind = params["rope_type"]
    if kind == "default":
        return
    if kind != "llama3":
        raise EngineError("invalid_request", f"rope scaling {kind!r} cannot be written to GGUF yet / 暂不支持该 RoPE 缩放", "format")
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    plain = 1.0 / (params["rope_theta"] ** (torch.arange(0, head_dim(config), 2, dtype=torch.float64) / head_dim(config)))
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    yield "rope_freqs.weight", (plain / scaled.double()).float().numpy()


def permute_rows(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """Rows of a q/k projection (or of a LoRA B matrix) reordered per head for llama.cpp's rotary layout."""
    rows = weight.shape[0]
    return weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:]).transpose(1, 2).reshape(weight.shape)


def name_map(config: Any, arch: MODEL_ARCH) -> TensorNameMap:
    return get_tensor_name_map(arch, config.num_hidden_layers)


def gguf_name(names: TensorNameMap, hf_name: str) -> str:
    """The GGUF name of a Hugging Face tensor name ("model.layers.0.self_attn.q_proj.weight" -> "blk.0.attn_q.weight")."""
    name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
    if name is None:
        raise EngineError("invalid_request", f"no GGUF name for the tensor {hf_name} / 无法映射张量 {hf_name}", "format")
    return name


def rows_permutation(config: Any, arch: MODEL_ARCH, gguf_tensor: str) -> int | None:
    """Heads to permute a tensor's rows by (Llama's attn_q/attn_k), else None."""
    if arch not in PERMUTED:
        return None
    if ".attn_q." in gguf_tensor:
        return config.num_attention_heads
    if ".attn_k." in gguf_tensor:
        return getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    return None


def model_tensors(model: Any, arch: MODEL_ARCH) -> Iterator[tuple[str, np.ndarray]]:
    """(GGUF name, float32 array) for every weight of the model; a tied LM head is left out (llama.cpp reuses
    token_embd when `output` is absent)."""
    config = model.config
    names = name_map(config, arch)
    head = model.get_output_embeddings()
    tied = head is not None and head.weight is model.get_input_embeddings().weight
    yield from rope_tensors(config)
    for hf_name, tensor in model.state_dict().items():
        if tied and hf_name.endswith("lm_head.weight"):
            continue
        name = gguf_name(names, hf_name)
        heads = rows_permutation(config, arch, name)
        tensor = tensor.detach().float()
        if heads is not None:
            tensor = permute_rows(tensor, heads)
        yield name, tensor.numpy()


def arch_name(arch: MODEL_ARCH) -> str:
    return MODEL_ARCH_NAMES[arch]


def parameters(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())

