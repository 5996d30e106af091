"""4-bit NormalFloat (NF4) base weights for QLoRA, in pure PyTorch (bitsandbytes when it can run).

```python
model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
quantize_model_nf4(model)              # every nn.Linear but lm_head -> NF4Linear (≈0.56 bytes per weight)
model = get_peft_model(model, lora)    # PEFT wraps NF4Linear like any nn.Linear
```
The `qlora` recipe does not load the dense model first: loading.load_causal_lm quantizes each linear (and
the embedding) as it reads it from the checkpoint, with the same result bit for bit.

NF4 as in the QLoRA paper (Dettmers et al. 2023, appendix E, the constants bitsandbytes ships): the 16
levels are quantiles of N(0, 1) scaled to [-1, 1], with an exact 0. A weight matrix is flattened and cut
into blocks of 64; each block is divided by its absolute maximum (kept in fp32) and each value becomes
the index of the nearest level, two 4-bit indices per byte. 4 bits + 32/64 bits of absmax = 4.5 bits
per weight. Double quantization (absmax themselves in 8 bits, 4.127 bits per weight) is not done here:
it would save 0.37 bits per weight, ~3 % of the base.

`NF4Linear` subclasses nn.Linear without a dense `weight` Parameter (`weight` is None), so PEFT 0.21's
LoRA dispatcher (`isinstance(base, nn.Linear)`, `in_features`/`out_features`) wraps it unchanged; its
forward dequantizes the whole matrix to the compute dtype for one F.linear and drops it again, and its
backward dequantizes once more rather than keep a dense copy alive for the input gradient.

With CUDA and bitsandbytes importable, `quantize_model_nf4` uses bitsandbytes' `Linear4bit` (nf4, same
block size) instead: its CUDA kernels dequantize far faster. That path cannot be tested on this CPU machine.
"""

from __future__ import annotations

import gc
import math
from typing import Callable, Iterable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

# The 16 NF4 levels (QLoRA paper; bitsandbytes' `NF4` table, functional.py), ascending.
NF4_LEVELS = torch.tensor(
    [
        -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
        -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
        0.07958029955625534, 0.16093020141124725, 0.24611230731010437, 0.33791524171829224,
        0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
    ],
    dtype=torch.float32,
)  # fmt: skip
# Midpoints between neighbouring levels: bucketize against them = nearest level (ties go to the lower one).
_MIDPOINTS = (NF4_LEVELS[1:] + NF4_LEVELS[:-1]) / 2
_PAIR_LEVELS = torch.stack((NF4_LEVELS.repeat_interleave(16), NF4_LEVELS.repeat(16)), dim=1)  # [256, 2]
BLOCK_SIZE = 64  # the paper's and bitsandbytes' block size: absmax costs 0.5 bit per weight
QUANTIZE_CHUNK = 1 << 20  # values quantized at a time: ~4 MB per fp32 temporary, so scratch stays small beside the codes
QUANTIZE_ROWS = 8192  # rows a loader reads and quantizes at a time: ~14 MB of bf16 at width 896
CHUNK_ROWS = 16384  # a big matrix (LM head) is dequantized this many rows at a time: ~57 MB in fp32 at width 896


def quantize_nf4(weight: torch.Tensor, block_size: int = BLOCK_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """(packed uint8 codes [ceil(n/2)], fp32 absmax [n_blocks]) for a tensor of n values, flattened row-major.

    The last block is zero-padded; an all-zero block keeps absmax 0 and dequantizes to zeros. Works through
    the tensor QUANTIZE_CHUNK values at a time, so even a 150k-token embedding needs ~20 MB of scratch, not GBs.
    """
    flat = weight.detach().reshape(-1)
    n = flat.numel()
    n_blocks = -(-n // block_size)
    absmax = torch.empty(n_blocks, dtype=torch.float32, device=flat.device)
    packed = torch.empty(-(-n_blocks * block_size // 2), dtype=torch.uint8, device=flat.device)
    midpoints = _MIDPOINTS.to(flat.device)
    chunk = QUANTIZE_CHUNK - QUANTIZE_CHUNK % (2 * block_size)
    for start in range(0, n, chunk):
        part = flat[start : start + chunk].float()
        pad = (-part.numel()) % block_size
        if pad:
            part = F.pad(part, (0, pad))
        blocks = part.view(-1, block_size)
        b0 = start // block_size
        amax = blocks.abs().amax(dim=1)
        absmax[b0 : b0 + blocks.shape[0]] = amax
        scaled = blocks / amax.clamp_min(torch.finfo(torch.float32).tiny).unsqueeze(1)
        codes = torch.bucketize(scaled, midpoints, out_int32=True).view(-1)
        if codes.numel() % 2:
            codes = F.pad(codes, (0, 1))
        p0 = start // 2
        packed[p0 : p0 + codes.numel() // 2] = ((codes[0::2] << 4) | codes[1::2]).to(torch.uint8)  # first value in the high nibble
    return packed, absmax


def quantize_nf4_by_rows(
    read_rows: Callable[[int, int], torch.Tensor], shape: Sequence[int], rows_at_a_time: int = QUANTIZE_ROWS, block_size: int = BLOCK_SIZE
) -> tuple[torch.Tensor, torch.Tensor]:
    """`quantize_nf4` of a matrix of `shape` that `read_rows(a, b)` hands over rows [a, b) at a time.

    A loader reads a 150k-row embedding this way without ever holding it dense. Each piece holds whole
    blocks and an even number of codes (rows_at_a_time is a multiple of 2·block_size), so its codes are a
    slice of the whole matrix's: the result equals `quantize_nf4` of the whole, bit for bit.
    """
    rows, cols = shape[0], math.prod(shape[1:])
    assert rows_at_a_time % (2 * block_size) == 0
    n_blocks = -(-rows * cols // block_size)
    packed = torch.empty(n_blocks * block_size // 2, dtype=torch.uint8)
    absmax = torch.empty(n_blocks, dtype=torch.float32)
    for a in range(0, rows, rows_at_a_time):
        b = min(a + rows_at_a_time, rows)
        p, m = quantize_nf4(read_rows(a, b), block_size)
        packed[a * cols // 2 : a * cols // 2 + p.numel()] = p
        absmax[a * cols // block_size : a * cols // block_size + m.numel()] = m
    return packed, absmax


def unpack_nf4_codes(packed: torch.Tensor, n: int) -> torch.Tensor:
    """The n level indices (int64) stored in `packed`."""
    codes = torch.stack(((packed >> 4) & 0x0F, packed & 0x0F), dim=1).view(-1)
    return codes[:n].long()


def dequantize_nf4(
    packed: torch.Tensor, absmax: torch.Tensor, shape: Iterable[int], dtype: torch.dtype = torch.float32, block_size: int = BLOCK_SIZE
) -> torch.Tensor:
    """The tensor of `shape` that `quantize_nf4` encoded, in `dtype`."""
    shape = tuple(shape)
    n = 1
    for s in shape:
        n *= s
    # One lookup per byte: byte -> (level of its high nibble, level of its low nibble).
    values = _PAIR_LEVELS.to(packed.device)[packed.long()].view(-1, block_size) * absmax.unsqueeze(1)
    return values.view(-1)[:n].view(shape).to(dtype)


def default_compute_dtype() -> torch.dtype:
    """bf16 on a GPU that supports it; fp32 on CPU, where the rest of the model trains in fp32."""
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


class NF4Linear(nn.Linear):
    """A frozen linear layer whose weight is held as NF4 codes + fp32 absmax; dequantized per forward.

    `weight` is None (no dense copy is kept); the packed codes are the buffer `qweight`, the name PEFT
    looks for on quantized layers to place the adapters on their device; `bias`, when present, stays a frozen dense Parameter.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        packed: torch.Tensor,
        absmax: torch.Tensor,
        bias: Optional[torch.Tensor] = None,
        compute_dtype: Optional[torch.dtype] = None,
        block_size: int = BLOCK_SIZE,
    ):
        nn.Module.__init__(self)  # not nn.Linear.__init__: it would allocate the dense weight we avoid
        self.in_features = in_features
        self.out_features = out_features
        self.block_size = block_size
        self.compute_dtype = compute_dtype or default_compute_dtype()
        self.register_parameter("weight", None)
        self.register_buffer("qweight", packed)
        self.register_buffer("nf4_absmax", absmax)
        if bias is None:
            self.register_parameter("bias", None)
        else:
            self.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)

    @classmethod
    def from_linear(cls, linear: nn.Linear, compute_dtype: Optional[torch.dtype] = None, block_size: int = BLOCK_SIZE) -> "NF4Linear":
        """Quantizes `linear.weight` (any float dtype) into a new NF4Linear."""
        packed, absmax = quantize_nf4(linear.weight, block_size)
        return cls(linear.in_features, linear.out_features, packed, absmax, linear.bias, compute_dtype, block_size)

    def dequantized_weight(self, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        return dequantize_nf4(self.qweight, self.nf4_absmax, (self.out_features, self.in_features), dtype or self.compute_dtype, self.block_size)

    def row_chunks(self) -> list[tuple[int, int]]:
        """Row ranges to dequantize one at a time: the whole matrix, unless it is big (a 150k-token LM head)
        and its rows hold whole blocks, so a range of rows is a contiguous range of codes."""
        if self.out_features <= CHUNK_ROWS or self.in_features % self.block_size:
            return [(0, self.out_features)]
        return [(r, min(r + CHUNK_ROWS, self.out_features)) for r in range(0, self.out_features, CHUNK_ROWS)]

    def dequantized_rows(self, start: int, end: int, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        if (start, end) == (0, self.out_features):
            return self.dequantized_weight(dtype)
        per_row = self.in_features // self.block_size
        packed = self.qweight[start * self.in_features // 2 : end * self.in_features // 2]
        absmax = self.nf4_absmax[start * per_row : end * per_row]
        return dequantize_nf4(packed, absmax, (end - start, self.in_features), dtype or self.compute_dtype, self.block_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = _NF4Matmul.apply(x.to(self.compute_dtype), self)
        if self.bias is not None:
            out = out + self.bias.to(out.dtype)
        return out.to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, nf4 block={self.block_size}, compute_dtype={self.compute_dtype}"


class _NF4Matmul(torch.autograd.Function):
    """x @ dequantized(W).T, dequantizing again in backward instead of saving the dense W.

    Plain F.linear would keep every layer's dequantized weight alive until backward (autograd saves it
    to compute the input gradient): a dense copy of the whole base, which is what QLoRA exists to avoid.
    The base is frozen, so no weight gradient is needed and x itself is not saved either.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, module: "NF4Linear") -> torch.Tensor:
        ctx.module, ctx.x_dtype = module, x.dtype
        chunks = module.row_chunks()
        if len(chunks) == 1:
            return F.linear(x, module.dequantized_weight())
        return torch.cat([F.linear(x, module.dequantized_rows(a, b)) for a, b in chunks], dim=-1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        module = ctx.module
        grad_x = None
        for a, b in module.row_chunks():
            part = grad[..., a:b].matmul(module.dequantized_rows(a, b, grad.dtype))
            grad_x = part if grad_x is None else grad_x + part
        return grad_x.to(ctx.x_dtype), None


class NF4Embedding(nn.Embedding):
    """A frozen embedding held as NF4 codes (rows of whole blocks); a lookup dequantizes only the rows it reads.

    The QLoRA paper keeps embeddings in 16 bits, but a small model with a large vocabulary (Qwen2.5-0.5B:
    28 % of its weights) keeps most of its memory there, so the `qlora` recipe quantizes it too unless
    modules_to_save trains it (loading.load_causal_lm; here `quantize_model_nf4(..., embeddings=True)`).
    An LM head tied to it becomes an NF4Linear over the same codes, dequantized CHUNK_ROWS rows at a time.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, packed: torch.Tensor, absmax: torch.Tensor,
                 compute_dtype: Optional[torch.dtype] = None, padding_idx: Optional[int] = None):  # fmt: skip
        nn.Module.__init__(self)  # not nn.Embedding.__init__: it would allocate the dense table
        if embedding_dim % BLOCK_SIZE:
            raise ValueError(f"NF4Embedding needs embedding_dim divisible by {BLOCK_SIZE}, got {embedding_dim}")
        self.num_embeddings, self.embedding_dim, self.padding_idx = num_embeddings, embedding_dim, padding_idx
        self.max_norm, self.norm_type, self.scale_grad_by_freq, self.sparse = None, 2.0, False, False
        self.compute_dtype = compute_dtype or default_compute_dtype()
        self.register_parameter("weight", None)
        self.register_buffer("qweight", packed)
        self.register_buffer("nf4_absmax", absmax)

    @classmethod
    def from_embedding(cls, embedding: nn.Embedding, compute_dtype: Optional[torch.dtype] = None) -> "NF4Embedding":
        packed, absmax = quantize_nf4(embedding.weight)
        return cls(embedding.num_embeddings, embedding.embedding_dim, packed, absmax, compute_dtype, embedding.padding_idx)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        per_row = self.embedding_dim // BLOCK_SIZE
        packed = self.qweight.view(self.num_embeddings, self.embedding_dim // 2)[ids.reshape(-1)]
        absmax = self.nf4_absmax.view(self.num_embeddings, per_row)[ids.reshape(-1)]
        rows = dequantize_nf4(packed.reshape(-1), absmax.reshape(-1), (ids.numel(), self.embedding_dim), self.compute_dtype)
        return rows.view(*ids.shape, self.embedding_dim)

    def as_linear(self) -> NF4Linear:
        """The tied LM head: an NF4Linear over the same code and absmax tensors (no copy)."""
        return NF4Linear(self.embedding_dim, self.num_embeddings, self.qweight, self.nf4_absmax, None, self.compute_dtype)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, nf4 block={BLOCK_SIZE}, compute_dtype={self.compute_dtype}"


def bitsandbytes_usable() -> bool:
    """True when bitsandbytes imports and a CUDA device is there (its 4-bit kernels need one)."""
    if not torch.cuda.is_available():
        return False
    try:
        import bitsandbytes  # noqa: F401
    except Exception:  # ImportError, or a broken CUDA setup raising at import
        return False
    return True


def _bnb_linear(linear: nn.Linear, compute_dtype: torch.dtype) -> nn.Module:
    """bitsandbytes' Linear4bit (nf4, blocksize 64) holding `linear`'s weights; quantized on .cuda()."""
    import bitsandbytes as bnb

    module = bnb.nn.Linear4bit(
        linear.in_features, linear.out_features, bias=linear.bias is not None, compute_dtype=compute_dtype, quant_type="nf4", device="meta"
    )
    module.weight = bnb.nn.Params4bit(linear.weight.data.to(torch.float16), requires_grad=False, quant_type="nf4", blocksize=BLOCK_SIZE)
    if linear.bias is not None:
        module.bias = nn.Parameter(linear.bias.data.clone(), requires_grad=False)
    return module.cuda()


def quantize_model_nf4(
    model: nn.Module,
    skip: Iterable[str] = ("lm_head",),
    compute_dtype: Optional[torch.dtype] = None,
    use_bitsandbytes: Optional[bool] = None,
    embeddings: bool = False,
) -> nn.Module:
    """Replaces every nn.Linear whose name does not end in one of `skip` by its NF4 version; frees the dense weights.

    Norms are not touched, nor (unless `embeddings`) the input embedding and LM head: QLoRA keeps them in
    16 bits. With `embeddings=True` the input embedding becomes an NF4Embedding and a head tied to it an
    NF4Linear over the same codes (pure-PyTorch path only). Returns `model` (changed in place).
    """
    compute_dtype = compute_dtype or default_compute_dtype()
    if use_bitsandbytes is None:
        use_bitsandbytes = bitsandbytes_usable()
    skip = tuple(skip)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    targets = [
        (name, module)
        for name, module in model.named_modules()
        if type(module) is nn.Linear and module is not head and not any(name == s or name.endswith("." + s) for s in skip)
    ]
    for name, linear in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        new = _bnb_linear(linear, compute_dtype) if use_bitsandbytes else NF4Linear.from_linear(linear, compute_dtype)
        setattr(parent, child, new)
        linear.weight = None  # drop the dense tensor now, not when the loop's last reference goes
    del targets
    if embeddings and not use_bitsandbytes:
        _quantize_embeddings(model, compute_dtype)
    if not use_bitsandbytes:  # Params4bit must not be cloned: it would lose its quantization state
        _own_storage(model)
    gc.collect()
    for p in model.parameters():
        p.requires_grad_(False)  # the base is frozen; PEFT turns on only the adapters
    return model


def _own_storage(model: nn.Module) -> None:
    """Gives every remaining parameter and buffer (embeddings, norms, biases) its own memory.

    from_pretrained memory-maps the safetensors file and every tensor keeps the whole mapping alive: while
    the embedding or a norm still points into it, each page quantization has read (all the linears) stays
    resident, so nothing would be saved. One copy of the non-linear weights releases the mapping.
    """
    copies: dict[int, torch.Tensor] = {}  # tied tensors (embedding = LM head) stay one tensor
    for module in model.modules():
        if isinstance(module, (NF4Linear, NF4Embedding)):
            continue  # made here, already its own
        for tensors in (module._parameters, module._buffers):
            for name, t in tensors.items():
                if t is None or isinstance(t, torch.Tensor) and t.device.type == "meta":
                    continue
                if id(t) not in copies:
                    copy = t.detach().clone()
                    copies[id(t)] = nn.Parameter(copy, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else copy
                tensors[name] = copies[id(t)]


def _quantize_embeddings(model: nn.Module, compute_dtype: torch.dtype) -> None:
    """Input embedding -> NF4Embedding; a tied LM head -> NF4Linear sharing its codes."""
    embedding = model.get_input_embeddings()
    if type(embedding) is not nn.Embedding or embedding.embedding_dim % BLOCK_SIZE:
        return
    head = model.get_output_embeddings()
    tied = head is not None and head.weight is embedding.weight
    quantized = NF4Embedding.from_embedding(embedding, compute_dtype)
    embedding.weight = None
    model.set_input_embeddings(quantized)
    if tied:
        head.weight = None
        model.set_output_embeddings(quantized.as_linear())
        # transformers would re-tie `lm_head.weight` to the (now absent) embedding weight on save/resize.
        if getattr(model.config, "tie_word_embeddings", False):
            model.config.tie_word_embeddings = False


def nf4_bytes(model: nn.Module) -> int:
    """Bytes held by NF4 codes and absmax in `model` (for logs and the estimate)."""
    seen, total = set(), 0
    for m in model.modules():
        if isinstance(m, (NF4Linear, NF4Embedding)) and m.qweight.data_ptr() not in seen:  # a tied head shares its codes
            seen.add(m.qweight.data_ptr())
            total += m.qweight.numel() + m.nf4_absmax.numel() * 4
    return total
