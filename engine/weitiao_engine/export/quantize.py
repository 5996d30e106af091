"""GGUF tensor types: the gguf package's quantizers, and llama.cpp's own quantizer (libllama) for the k-quants.

The gguf package writes f32/f16/bf16 and the legacy block types (q8_0, q4_0, q4_1, q5_0, q5_1) itself. The
k-quants (q4_k_m…) mix types per tensor by llama.cpp's rules, so only llama.cpp's `llama_model_quantize` makes
them: the engine writes an f16 GGUF and hands it to that function in the libllama the control plane names
(node-llama-cpp ships one), through ctypes.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path
from typing import Optional

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, LlamaFileType
from gguf import quants

from ..protocol import EngineError, log

Q = GGMLQuantizationType
# quantize -> (tensor type of the 2-D weights, general.file_type)
WRITTEN_HERE: dict[str, tuple[GGMLQuantizationType, LlamaFileType]] = {
    "f32": (Q.F32, LlamaFileType.ALL_F32),
    "f16": (Q.F16, LlamaFileType.MOSTLY_F16),
    "bf16": (Q.BF16, LlamaFileType.MOSTLY_BF16),
    "q8_0": (Q.Q8_0, LlamaFileType.MOSTLY_Q8_0),
    "q4_0": (Q.Q4_0, LlamaFileType.MOSTLY_Q4_0),
    "q4_1": (Q.Q4_1, LlamaFileType.MOSTLY_Q4_1),
    "q5_0": (Q.Q5_0, LlamaFileType.MOSTLY_Q5_0),
    "q5_1": (Q.Q5_1, LlamaFileType.MOSTLY_Q5_1),
}
# quantize -> llama_ftype (llama.h; the same numbers as gguf's LlamaFileType)
BY_LLAMA_CPP: dict[str, LlamaFileType] = {
    "q2_k": LlamaFileType.MOSTLY_Q2_K,
    "q3_k_s": LlamaFileType.MOSTLY_Q3_K_S,
    "q3_k_m": LlamaFileType.MOSTLY_Q3_K_M,
    "q3_k_l": LlamaFileType.MOSTLY_Q3_K_L,
    "q4_k_s": LlamaFileType.MOSTLY_Q4_K_S,
    "q4_k_m": LlamaFileType.MOSTLY_Q4_K_M,
    "q5_k_s": LlamaFileType.MOSTLY_Q5_K_S,
    "q5_k_m": LlamaFileType.MOSTLY_Q5_K_M,
    "q6_k": LlamaFileType.MOSTLY_Q6_K,
}


def encode(name: str, data: np.ndarray, qtype: GGMLQuantizationType) -> tuple[np.ndarray, GGMLQuantizationType]:
    """`data` (float32) in `qtype`, as llama.cpp's converter stores it: 1-D tensors (norms, biases) stay f32, and a
    tensor whose rows do not split into whole blocks falls back to f16. Returns (array for GGUFWriter, its type)."""
    if data.ndim <= 1 or qtype == Q.F32:
        return data.astype(np.float32, copy=False), Q.F32
    block = GGML_QUANT_SIZES[qtype][0]
    if data.shape[-1] % block:
        log(f"{name}: rows of {data.shape[-1]} are not a multiple of {qtype.name}'s block of {block}: written as f16")
        qtype = Q.F16
    return quants.quantize(np.ascontiguousarray(data, dtype=np.float32), qtype), qtype


# llama.h's `struct llama_model_quantize_params`: int32 nthread, enum llama_ftype ftype, two ggml_type overrides,
# then bools (allow_requantize, quantize_output_tensor, only_copy, pure, keep_split, dry_run in recent releases)
# and pointers (imatrix, kv_overrides, tensor_types, prune_layers). Only the two leading fields, stable since
# 2023, are set here; the rest comes from `llama_model_quantize_default_params()`, so whatever a release adds
# keeps its default. `_tail` makes this buffer larger than any release's struct: a struct this size is returned
# through memory the caller provides, so the library writes its own layout into it.
class QuantizeParams(ctypes.Structure):
    _fields_ = [
        ("nthread", ctypes.c_int32),
        ("ftype", ctypes.c_int32),  # enum llama_ftype
        ("output_tensor_type", ctypes.c_int32),  # enum ggml_type
        ("token_embedding_type", ctypes.c_int32),
        ("allow_requantize", ctypes.c_bool),
        ("quantize_output_tensor", ctypes.c_bool),
        ("only_copy", ctypes.c_bool),
        ("pure", ctypes.c_bool),
        ("keep_split", ctypes.c_bool),
        ("_tail", ctypes.c_uint8 * 256),
    ]


def llama_quantize(library: Optional[str], source: Path, target: Path, quantize: str, threads: Optional[int] = None) -> None:
    """Quantizes the GGUF `source` into `target` with libllama's `llama_model_quantize` (the k-quants)."""
    if not library:
        raise EngineError(
            "invalid_request",
            f"quantize {quantize!r} needs llama.cpp's quantizer (libllama's llama_model_quantize) and none was given; "
            f"the gguf package writes only {', '.join(WRITTEN_HERE)} / {quantize} 量化需要 llama.cpp 的量化器（libllama），但未提供",
            "quantize",
        )
    if not Path(library).is_file():
        raise EngineError("not_found", f"libllama not found: {library} / 找不到 libllama：{library}", "llama_library")
    try:
        lib = ctypes.CDLL(library)
        lib.llama_model_quantize_default_params.restype = QuantizeParams
        lib.llama_model_quantize_default_params.argtypes = []
        lib.llama_model_quantize.restype = ctypes.c_uint32
        lib.llama_model_quantize.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.POINTER(QuantizeParams)]
    except (OSError, AttributeError) as e:
        raise EngineError("invalid_request", f"{library} is not a usable libllama: {e} / 无法使用该 libllama", "llama_library") from e
    if hasattr(lib, "llama_backend_init"):
        lib.llama_backend_init()
    params = lib.llama_model_quantize_default_params()
    params.nthread = threads or 0  # 0: llama.cpp uses every hardware thread
    params.ftype = int(BY_LLAMA_CPP[quantize])
    status = lib.llama_model_quantize(os.fsencode(source), os.fsencode(target), ctypes.byref(params))
    if status != 0 or not target.is_file():
        raise EngineError("engine_error", f"llama_model_quantize failed ({status}) for {quantize} / llama.cpp 量化失败", "quantize")
