"""Loading a base model (+ LoRA adapter) for inference; label scoring lives in scoring.py.

```python
model, tokenizer = load_model("/home/me/.weitiao/models/tiny", adapter_dir="/…/jobs/ftjob-1/model")
```
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, BinaryIO, Callable, Optional, Sequence, Union

import torch

from .allocator import release_freed_memory
from .chat_format import end_of_turn_ids
from .protocol import EngineError


# ------------------------------------------------------------------------------------------------ loading


def set_threads(threads: Optional[int] = None) -> int:
    """Uses `threads`, else $WEITIAO_ENGINE_THREADS, else one torch thread per physical core this process may run
    on; returns the count. The node test runner sets 1: two test files' engines at once on 2 cores, each with 2
    threads, oversubscribe (the tiny model's step took 1.2-1.5x the CPU seconds on 2 threads as on 1)."""
    if threads is None and os.environ.get("WEITIAO_ENGINE_THREADS", "").isdigit():
        threads = max(1, int(os.environ["WEITIAO_ENGINE_THREADS"]))
    if threads is None:
        import psutil

        physical = psutil.cpu_count(logical=False) or os.cpu_count() or 1
        allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else physical
        threads = max(1, min(physical, allowed))
    torch.set_num_threads(threads)
    return threads


def load_model(
    model_dir: Union[str, Path],
    adapter_dir: Union[str, Path, None] = None,
    dtype: torch.dtype = torch.float32,
    threads: Optional[int] = None,
) -> tuple[Any, Any]:
    """Loads a Hugging Face model directory (plus a PEFT LoRA adapter when given) in eval mode: (model, tokenizer)."""
    from transformers import AutoModelForCausalLM

    from .tokens import auto_tokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # stderr is the engine's log; a redrawn bar only clutters it
    _require_dir(model_dir, "config.json", "model", "model directory", "模型目录")
    if adapter_dir is not None:
        _require_dir(adapter_dir, "adapter_config.json", "adapter", "adapter directory", "适配器目录")
    set_threads(threads)

    try:
        tokenizer = auto_tokenizer(model_dir)
    except Exception as e:  # transformers raises OSError, ValueError… for a broken or partial directory
        raise EngineError("invalid_file", f"{model_dir}: cannot load the tokenizer: {e} / 无法加载分词器", "model") from e
    if tokenizer.pad_token_id is None:
        # Padding positions are masked out everywhere, so any id will do; eos is always there.
        tokenizer.pad_token = tokenizer.eos_token
    if not tokenizer.chat_template:
        raise EngineError("invalid_request", f"the tokenizer in {model_dir} has no chat template / 该模型的分词器没有对话模板", "model")
    try:
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype)
    except Exception as e:
        raise EngineError("invalid_file", f"{model_dir}: cannot load the model: {e} / 无法加载模型", "model") from e
    if adapter_dir is not None:
        from peft import PeftModel

        try:
            model = PeftModel.from_pretrained(model, str(adapter_dir))
        except Exception as e:  # e.g. an adapter trained on another base: shapes do not match
            raise EngineError("invalid_file", f"{adapter_dir}: cannot load the adapter: {e} / 无法加载适配器", "adapter") from e
    model.eval()
    return model, tokenizer


# ------------------------------------------------------------------------------- streaming (training) load

# safetensors dtype names (the format's spec) -> torch dtypes
_SAFETENSORS_DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64, "I64": torch.int64,
                       "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}  # fmt: skip


def safetensors_index(path: Union[str, Path]) -> tuple[int, dict[str, Any]]:
    """(offset where the data starts, {name: {dtype, shape, data_offsets}}) from a .safetensors file's header."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    return 8 + n, header


def read_tensor(f: BinaryIO, data_start: int, info: dict[str, Any], rows: Optional[tuple[int, int]] = None) -> torch.Tensor:
    """The tensor `info` describes (or its rows [a, b)), read from the open file `f` with plain reads.

    No mmap: a mapped file's pages count as this process's resident memory for as long as the mapping
    lives, so loading through it holds the whole checkpoint beside the weights made from it.
    """
    start, end = info["data_offsets"]
    shape = list(info["shape"])
    if rows is not None:
        row_bytes = (end - start) // max(shape[0], 1)
        start, end, shape[0] = start + rows[0] * row_bytes, start + rows[1] * row_bytes, rows[1] - rows[0]
    out = torch.empty(end - start, dtype=torch.uint8)
    f.seek(data_start + start)
    if f.readinto(out.numpy()) != end - start:
        raise EngineError("invalid_file", f"{f.name}: truncated safetensors file / 文件不完整", "model")
    return out.view(_SAFETENSORS_DTYPES[info["dtype"]]).view(shape)


def load_causal_lm(
    model_dir: Union[str, Path], dtype: torch.dtype, nf4: bool = False, nf4_embeddings: bool = False, keep_dense: Sequence[str] = ()
) -> Any:
    """The causal LM in `model_dir`, frozen, built tensor by tensor so no dense copy of the checkpoint is ever resident.

    The skeleton is made on the meta device; then each tensor is read from the safetensors files, one at
    a time, and put in place in `dtype`. With `nf4`, every linear but the LM head becomes an NF4Linear as its
    weight arrives (read and quantized some rows at a time); with `nf4_embeddings` too, the input embedding
    becomes an NF4Embedding (a tied LM head shares its codes; an untied one becomes an NF4Linear). Modules
    named in `keep_dense` (a name or its last parts, as PEFT's modules_to_save) and, when tied, the
    embedding/head pair of such a module stay dense. The
    result equals `from_pretrained` (+ `quantize_model_nf4`) bit for bit. Returns None when the files do
    not hold exactly the model's tensors under its own names (sharded .bin, renamed keys): the caller then
    loads the usual way.
    """
    from accelerate import init_empty_weights
    from torch import nn
    from transformers import AutoConfig, AutoModelForCausalLM

    from .quantize import NF4Embedding, NF4Linear, default_compute_dtype, quantize_nf4_by_rows

    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        return None
    config = AutoConfig.from_pretrained(str(model_dir))
    with init_empty_weights(include_buffers=False):  # parameters on meta; buffers (rotary frequencies) computed
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    names = {id(m): n for n, m in model.named_modules()}
    head_key = f"{names[id(head)]}.weight" if head is not None else None
    indexes = [(file, *safetensors_index(file)) for file in files]
    stored = {name for _, _, header in indexes for name in header}
    expected = set(model.state_dict())
    tied = bool(getattr(config, "tie_word_embeddings", False)) and head_key not in stored
    if stored != expected - ({head_key} if tied else set()):
        return None
    compute = default_compute_dtype()
    dense = {id(m) for n, m in model.named_modules() if any(n == k or n.endswith("." + k) for k in keep_dense)}
    if tied and dense & {id(emb), id(head)}:
        dense |= {id(emb), id(head)}

    for file, data_start, header in indexes:
        with open(file, "rb") as f:
            for key, info in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):  # file order: sequential reads
                owner_name, _, attr = key.rpartition(".")
                owner = model.get_submodule(owner_name)
                read_rows = lambda a, b, info=info: read_tensor(f, data_start, info, (a, b))  # noqa: E731
                shape = info["shape"]
                frozen_weight = attr == "weight" and id(owner) not in dense
                if frozen_weight and ((nf4 and type(owner) is nn.Linear and owner is not head) or (nf4_embeddings and owner is head)):
                    new = NF4Linear(shape[1], shape[0], *quantize_nf4_by_rows(read_rows, shape), None, compute)
                    new.bias = owner.bias  # meta until its own tensor arrives (or already loaded)
                    _set_child(model, owner_name, new)
                    release_freed_memory()
                elif frozen_weight and nf4_embeddings and owner is emb and shape[1] % 64 == 0:
                    new = NF4Embedding(shape[0], shape[1], *quantize_nf4_by_rows(read_rows, shape), compute, emb.padding_idx)
                    model.set_input_embeddings(new)
                    if tied:
                        model.set_output_embeddings(new.as_linear())
                        config.tie_word_embeddings = False  # transformers would re-tie lm_head.weight to the (absent) dense table
                    release_freed_memory()
                else:
                    tensor = read_tensor(f, data_start, info)
                    if attr in owner._parameters:
                        owner._parameters[attr] = nn.Parameter(tensor.to(dtype) if tensor.is_floating_point() else tensor, requires_grad=False)
                    else:
                        owner._buffers[attr] = tensor
    if tied and model.get_output_embeddings().weight is not None and model.get_output_embeddings().weight.is_meta:
        model.get_output_embeddings().weight = model.get_input_embeddings().weight
    release_freed_memory()
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise EngineError("invalid_file", f"{model_dir}: no weights for {left[:3]} / 模型文件缺少权重", "model")
    model.eval()
    return model


def checkpoint_dtype(model_dir: Union[str, Path]) -> Optional[torch.dtype]:
    """The dtype of the floating-point weights in `model_dir`'s safetensors files, when they all share one."""
    dtypes = {info["dtype"] for file in Path(model_dir).glob("*.safetensors") for info in safetensors_index(file)[1].values()}
    floats = {_SAFETENSORS_DTYPES[d] for d in dtypes if d in _SAFETENSORS_DTYPES and _SAFETENSORS_DTYPES[d].is_floating_point}
    return floats.pop() if len(floats) == 1 else None


def resident_mib(peak: bool = False) -> float:
    """This process's resident memory now (or its peak so far, ru_maxrss), in MiB."""
    if peak:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _set_child(model: Any, name: str, module: Any) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def _require_dir(path: Union[str, Path], marker: str, param: str, what: str, what_zh: str) -> None:
    p = Path(path)
    if not p.is_dir():
        raise EngineError("not_found", f"{what} not found: {p} / 找不到{what_zh}：{p}", param)
    if not (p / marker).is_file():
        raise EngineError("not_found", f"no {marker} in {what} {p} / {what_zh}中没有 {marker}：{p}", param)


# ----------------------------------------------------------------------------------------------- stopping


def stop_token_ids(model: Any, tokenizer: Any) -> set[int]:
    """Token ids that end a generated answer: the template's end-of-turn tokens, eos, and the model's own eos list."""
    ids = set(end_of_turn_ids(tokenizer))
    # Qwen's generation_config lists both <|endoftext|> and <|im_end|>; honour whatever the model ships.
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(gen_eos, int):
        ids.add(gen_eos)
    elif isinstance(gen_eos, (list, tuple)):
        ids.update(gen_eos)
    return ids
