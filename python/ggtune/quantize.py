"""One tensor at a time between GGUF types: float32 out of any type ggtune reads, and back into
the types gguf-py can quantize (its numpy ports of ggml's reference quantizers).

Shapes: a tensor is handled as rows of n_in elements, raw uint8 [rows, row_bytes] or float32
[rows, n_in]; a 1-D tensor of n elements is one row.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

import gguf
from gguf import GGMLQuantizationType as T

from . import _core
from .gguf_io import SUPPORTED_TYPES, row_bytes, type_name

# --outtype names -> ggml type; "same" (keep each tensor's type) is handled by the caller.
OUTTYPES = {"f32": T.F32, "f16": T.F16, "bf16": T.BF16, "q8_0": T.Q8_0, "q4_0": T.Q4_0,
            "q4_1": T.Q4_1, "q5_0": T.Q5_0, "q5_1": T.Q5_1}
# general.file_type of a model whose matrices are all of one type (llama.cpp's llama_ftype)
FILE_TYPES = {T.F32: gguf.LlamaFileType.ALL_F32, T.F16: gguf.LlamaFileType.MOSTLY_F16,
              T.BF16: gguf.LlamaFileType.MOSTLY_BF16, T.Q8_0: gguf.LlamaFileType.MOSTLY_Q8_0,
              T.Q4_0: gguf.LlamaFileType.MOSTLY_Q4_0, T.Q4_1: gguf.LlamaFileType.MOSTLY_Q4_1,
              T.Q5_0: gguf.LlamaFileType.MOSTLY_Q5_0, T.Q5_1: gguf.LlamaFileType.MOSTLY_Q5_1}


def block_size(ggml_type: int) -> int:
    return gguf.GGML_QUANT_SIZES[T(ggml_type)][0]


@functools.lru_cache(maxsize=None)
def can_quantize(ggml_type: int) -> bool:
    """Whether gguf-py can quantize float32 into ``ggml_type`` (not the K-quants, for one)."""
    try:
        gguf.quants.quantize(np.zeros((1, block_size(ggml_type)), np.float32), T(ggml_type))
    except (NotImplementedError, ValueError, KeyError):
        return False
    return True


def dequantize(raw: np.ndarray, ggml_type: int, n_in: int) -> np.ndarray:
    """raw uint8 [rows, row_bytes] of ``ggml_type`` -> float32 [rows, n_in] (a new array)."""
    rows = raw.shape[0]
    if ggml_type == T.F32:
        return raw.view(np.float32).reshape(rows, n_in).copy()
    if ggml_type == T.F16:
        return raw.view(np.float16).reshape(rows, n_in).astype(np.float32)
    if ggml_type in SUPPORTED_TYPES:  # ggtune's own kernels: the same values the model computes with
        out = np.empty((rows, n_in), np.float32)
        _core.dequantize(np.ascontiguousarray(raw), int(ggml_type), out)
        return out
    try:
        return gguf.quants.dequantize(raw, T(ggml_type)).astype(np.float32).reshape(rows, n_in)
    except NotImplementedError:
        raise ValueError(f"cannot dequantize tensors of type {type_name(ggml_type)}") from None


def quantize(values: np.ndarray, ggml_type: int) -> np.ndarray:
    """float32 [rows, n_in] -> raw uint8 [rows, row_bytes] of ``ggml_type`` (see :func:`can_quantize`)."""
    rows, n_in = values.shape
    data = gguf.quants.quantize(np.ascontiguousarray(values, np.float32), T(ggml_type))
    return np.ascontiguousarray(data).view(np.uint8).reshape(rows, row_bytes(ggml_type, n_in))


def requantize_closest(target: np.ndarray, old_raw: np.ndarray, old_values: np.ndarray, ggml_type: int) -> np.ndarray:
    """target float32 [rows, n_in] (W + ΔW) into ``ggml_type``, block by block the closer (in squared
    error to target) of a fresh quantization and the block as it was (old_raw uint8 [rows, row_bytes],
    dequantizing to old_values float32 [rows, n_in], i.e. W).

    Why: a small ΔW does not move W + ΔW onto a fresh grid any better than it was: the reference
    quantizer picks the block's scale from its new extremes and rounds every value again, which adds
    a rounding error of up to half a step to every element. Where ΔW is smaller than that noise, the
    old block is closer to W + ΔW (its error is ΔW itself)."""
    fresh = quantize(target, ggml_type)
    bs = block_size(ggml_type)
    if bs == 1:  # float types: rounding each value is already the closest
        return fresh
    fresh_values = dequantize(fresh, ggml_type, target.shape[1])

    def block_sse(values):  # [rows * n_in / bs]
        return np.square(values - target, dtype=np.float64).reshape(-1, bs).sum(axis=1)

    keep_old = block_sse(old_values) < block_sse(fresh_values)
    type_size = gguf.GGML_QUANT_SIZES[T(ggml_type)][1]
    out = fresh.reshape(-1, type_size)
    out[keep_old] = old_raw.reshape(-1, type_size)[keep_old]
    return fresh


# ---- output-preserving re-quantization (GPTQ) ----------------------------------------------------
#
# GPTQ (Frantar et al. 2022) chooses the quantized W' that keeps the layer's outputs, minimising
# ||(W' - W_target)·Xᵀ||² over calibration inputs X [T, n_in] through H = XᵀX, instead of each
# element's own error. Why merge needs it: a trained LoRA ΔW is far below half a Q4 step, so rounding
# every element of W + ΔW to its nearest grid point gives W back and loses the adapter; pushing each
# column's rounding error into the columns not yet rounded (weighted by H⁻¹) lets the small changes
# add up until they flip roundings where the outputs gain most.

@dataclass(frozen=True)
class _BlockFormat:
    """A 32-value block type: value = (q - offset)·d (+ m), q integer in [q_min, q_max]."""

    q_min: int
    q_max: int
    offset: int
    has_min: bool  # an m field after d (the _1 types)
    high_bits: bool  # a 32-bit qh field with each q's 5th bit (the Q5 types)


BLOCK_FORMATS = {T.Q4_0: _BlockFormat(0, 15, 8, False, False), T.Q4_1: _BlockFormat(0, 15, 0, True, False),
                 T.Q5_0: _BlockFormat(0, 31, 16, False, True), T.Q5_1: _BlockFormat(0, 31, 0, True, True),
                 T.Q8_0: _BlockFormat(-128, 127, 0, False, False)}
GPTQ_TYPES = frozenset(int(t) for t in BLOCK_FORMATS)
GPTQ_DAMP = 0.01  # of H's mean diagonal, added to the diagonal: keeps H invertible and the updates tame
GPTQ_LAZY_COLUMNS = 128  # columns whose updates stay local before one matrix product updates the rest


@dataclass
class BlockGrid:
    """Per-row, per-block grids of a tensor: d and m float64 [rows, n_in / 32] (m = 0 for _0 types),
    the exact values the stored float16 fields hold."""

    ggml_type: int
    d: np.ndarray
    m: np.ndarray

    @classmethod
    def of_raw(cls, raw: np.ndarray, ggml_type: int) -> "BlockGrid":
        """The grids stored in raw uint8 [rows, row_bytes] of one of GPTQ_TYPES."""
        fmt = BLOCK_FORMATS[T(ggml_type)]
        type_size = gguf.GGML_QUANT_SIZES[T(ggml_type)][1]
        blocks = np.ascontiguousarray(raw).reshape(raw.shape[0], -1, type_size)  # [rows, nb, type_size]
        d = blocks[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float64)
        m = blocks[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float64) if fmt.has_min else np.zeros_like(d)
        return cls(int(ggml_type), d, m)

    @classmethod
    def for_target(cls, target: np.ndarray, old_raw: np.ndarray, ggml_type: int) -> "BlockGrid":
        """Grids for re-quantizing target float32 [rows, n_in] (W + ΔW) whose old bytes are old_raw:
        each block keeps its old grid where that still covers the block's values (within half a
        step), so an unchanged block comes back exactly, and takes a fresh quantization's where
        ΔW pushed values out of reach (clipping them would feed ever growing errors forward)."""
        old = cls.of_raw(old_raw, ggml_type)
        fresh = cls.of_raw(quantize(target, ggml_type), ggml_type)
        fmt = BLOCK_FORMATS[T(ggml_type)]
        blocks = target.reshape(target.shape[0], -1, 32)
        low = (fmt.q_min - fmt.offset - 0.5) * old.d + old.m
        high = (fmt.q_max - fmt.offset + 0.5) * old.d + old.m
        covered = (blocks.min(axis=2) >= low) & (blocks.max(axis=2) <= high)  # [rows, nb]
        return cls(int(ggml_type), np.where(covered, old.d, fresh.d), np.where(covered, old.m, fresh.m))

    def round_column(self, w: np.ndarray, column: int) -> tuple[np.ndarray, np.ndarray]:
        """w float64 [rows], values of input column `column` -> (codes int [rows], their values [rows])."""
        fmt = BLOCK_FORMATS[T(self.ggml_type)]
        d, m = self.d[:, column // 32], self.m[:, column // 32]
        inv_d = np.divide(1.0, d, out=np.zeros_like(d), where=d != 0)  # d = 0: a constant block, q irrelevant
        codes = np.clip(np.rint((w - m) * inv_d) + fmt.offset, fmt.q_min, fmt.q_max)
        return codes, (codes - fmt.offset) * d + m


def gptq_quantize(target: np.ndarray, hessian: np.ndarray, grid: BlockGrid, act_order: bool = True) -> np.ndarray:
    """GPTQ of target float32/64 [rows, n_in] on the fixed block grids `grid`, minimising
    ||(W' - target)·Xᵀ||² for hessian = XᵀX float64 [n_in, n_in]; returns raw uint8 [rows, row_bytes].

    Columns are rounded one at a time (see act_order); column j's error, divided by U[j, j], is pushed into the later
    columns with U[j, j+1:], U the upper Cholesky factor of H⁻¹ (H⁻¹ = UᵀU)."""
    # Columns with the largest H diagonal (the most active inputs) first ("act order"): their
    # errors then spread over the most columns left to absorb them.
    order = np.argsort(-np.diagonal(hessian), kind="stable") if act_order else np.arange(hessian.shape[0])
    w = np.array(target, dtype=np.float64)[:, order]  # [rows, n_in] in `order`, updated as errors propagate
    rows, n_in = w.shape
    upper = _inverse_hessian_cholesky(hessian[np.ix_(order, order)])  # [n_in, n_in]
    codes = np.empty((rows, n_in), dtype=np.float64)  # in the tensor's own column order
    for start in range(0, n_in, GPTQ_LAZY_COLUMNS):
        end = min(start + GPTQ_LAZY_COLUMNS, n_in)
        local = w[:, start:end]  # a view: updates land in w
        errors = np.empty((rows, end - start))
        for k in range(end - start):
            column = order[start + k]
            codes[:, column], value = grid.round_column(local[:, k], column)
            errors[:, k] = (local[:, k] - value) / upper[start + k, start + k]
            local[:, k + 1:] -= np.outer(errors[:, k], upper[start + k, start + k + 1:end])
        w[:, end:] -= errors @ upper[start:end, end:]
    return pack_blocks(codes, grid)


def _inverse_hessian_cholesky(hessian: np.ndarray) -> np.ndarray:
    """Upper U with UᵀU = (H + damping)⁻¹; inputs that are always zero get a unit diagonal."""
    h = np.array(hessian, dtype=np.float64)
    diag = np.diagonal(h).copy()
    dead = diag <= 0
    h[dead, dead] = 1.0
    h[np.diag_indices_from(h)] += GPTQ_DAMP * float(np.mean(np.diagonal(h)))
    inverse = np.linalg.inv(h)
    return np.linalg.cholesky((inverse + inverse.T) / 2).T


def pack_blocks(codes: np.ndarray, grid: BlockGrid) -> np.ndarray:
    """codes [rows, n_in] (integers in the type's range) on `grid` -> raw uint8 [rows, row_bytes] in
    the GGUF block layout: d f16, [m f16], [qh u32: bit j = 5th bit of element j], then the quants
    (Q8_0: 32 int8; 4/5-bit: 16 bytes, element i in the low nibble of byte i, element i+16 high)."""
    fmt = BLOCK_FORMATS[T(grid.ggml_type)]
    rows, n_in = codes.shape
    nb = n_in // 32
    q = codes.astype(np.int64).reshape(rows, nb, 32)

    def f16_bytes(x):  # [rows, nb] -> uint8 [rows, nb, 2]
        return x.astype(np.float16).view(np.uint8).reshape(rows, nb, 2)

    fields = [f16_bytes(grid.d)] + ([f16_bytes(grid.m)] if fmt.has_min else [])
    if fmt.q_min < 0:  # Q8_0
        fields.append(q.astype(np.int8).view(np.uint8))
    else:
        if fmt.high_bits:
            qh = (((q >> 4) & 1) << np.arange(32, dtype=np.int64)).sum(axis=2).astype("<u4")
            fields.append(qh.view(np.uint8).reshape(rows, nb, 4))
        fields.append(((q[..., :16] & 15) | ((q[..., 16:] & 15) << 4)).astype(np.uint8))
    return np.concatenate(fields, axis=2).reshape(rows, -1)
