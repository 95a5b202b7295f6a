"""One tensor at a time between GGUF types: float32 out of any type ggtune reads, and back into
the types gguf-py can quantize (its numpy ports of ggml's reference quantizers).

Shapes: a tensor is handled as rows of n_in elements, raw uint8 [rows, row_bytes] or float32
[rows, n_in]; a 1-D tensor of n elements is one row.
"""

from __future__ import annotations

import functools

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
