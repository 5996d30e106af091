"""Writing GGUF files with the gguf package's GGUFWriter: a whole model, or a LoRA adapter."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import numpy as np
from gguf import GGML_QUANT_VERSION, GGUFWriter, GGMLQuantizationType

from ..protocol import ExportRequest, log, progress
from . import gguf_lora, gguf_model, gguf_vocab, quantize
from .special import SpecialTokens


def write_model(request: ExportRequest, model: Any, tokenizer: Any, special: SpecialTokens, folder: Path) -> int:
    """`folder/model.gguf` in `request.quantize`; returns the model's parameter count."""
    config = model.config
    arch = gguf_model.architecture(config)
    by_llama_cpp = request.quantize in quantize.BY_LLAMA_CPP
    if by_llama_cpp and not request.llama_library:
        quantize.llama_quantize(None, Path(), Path(), request.quantize)  # raises: says which quantizer is needed
    qtype, file_type = quantize.WRITTEN_HERE["f16" if by_llama_cpp else request.quantize]
    target = folder / ("model-f16.gguf" if by_llama_cpp else "model.gguf")

    writer = GGUFWriter(target, gguf_model.arch_name(arch))
    gguf_model.write_metadata(writer, config, request.name or Path(request.model).name)
    writer.add_file_type(int(file_type))
    writer.add_quantization_version(GGML_QUANT_VERSION)
    gguf_vocab.write_vocab(writer, tokenizer, request.model, config.vocab_size, special)
    _add_tensors(writer, gguf_model.model_tensors(model, arch), qtype, len(model.state_dict()))
    _write(writer)
    if by_llama_cpp:
        progress("quantize", 0, 1, f"llama.cpp quantizing to {request.quantize} / llama.cpp 量化中")
        quantize.llama_quantize(request.llama_library, target, folder / "model.gguf", request.quantize)
        target.unlink()
        progress("quantize", 1, 1)
    return gguf_model.parameters(model)


def write_lora(request: ExportRequest, config: Any, path: Path) -> int:
    """A llama.cpp LoRA adapter GGUF of `request.adapter`; returns the adapter's parameter count."""
    arch = gguf_model.architecture(config)
    settings = gguf_lora.adapter_settings(request.adapter)
    writer = GGUFWriter(path, gguf_model.arch_name(arch))
    writer.add_type("adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", gguf_lora.alpha(settings))
    writer.add_name(request.name or Path(request.adapter).name)
    qtype = quantize.WRITTEN_HERE[request.quantize][0]
    tensors = list(gguf_lora.lora_tensors(request.adapter, config, arch))
    _add_tensors(writer, tensors, qtype, len(tensors))
    _write(writer)
    return sum(int(a.size) for _, a in tensors)


def _add_tensors(writer: GGUFWriter, tensors: Iterable[tuple[str, np.ndarray]], qtype: GGMLQuantizationType, total: int) -> None:
    counts: dict[str, int] = {}
    done = 0
    for name, data in tensors:
        array, written = quantize.encode(name, data, qtype)
        counts[written.name] = counts.get(written.name, 0) + 1
        # f32/f16 arrays carry their type; block-quantized ones are bytes GGUFWriter must be told the type of
        raw = None if written in (GGMLQuantizationType.F32, GGMLQuantizationType.F16) else written
        writer.add_tensor(name, array, raw_dtype=raw)
        done += 1
        progress("convert", done, max(total, done))
    if done != total:  # fewer than estimated (a tied head left out): say the phase is complete
        progress("convert", done, done)
    log("tensors by type: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))


def _write(writer: GGUFWriter) -> None:
    progress("write", 0, 1, "writing the GGUF / 写入 GGUF")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file(progress=False)
    writer.close()
    progress("write", 1, 1)

