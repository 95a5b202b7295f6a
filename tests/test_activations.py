"""round_activations: ggml's activation rounding, against a numpy transcription of ggml's quantizers."""

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T

from ggtune import _core


def q8_32(x):
    """quantize_row_q8_0 / q8_1 on x86, then the value a dot product sees: q * fp16(d)."""
    b = x.reshape(-1, 32).astype(np.float32)
    amax = np.abs(b).max(axis=1, keepdims=True)
    d = (amax / np.float32(127)).astype(np.float16).astype(np.float32)
    inv = np.where(amax > 0, np.float32(127) / np.where(amax > 0, amax, 1), 0).astype(np.float32)
    return (np.rint(b * inv) * d).reshape(x.shape)


def q8_k(x):
    """quantize_row_q8_K: the signed extreme maps to -127; d = 1/iscale in float32."""
    out = np.zeros_like(x)
    for i, block in enumerate(x.reshape(-1, 256)):
        extreme = block[np.argmax(np.abs(block))]
        if extreme == 0:
            continue
        iscale = np.float32(-127.0) / extreme
        q = np.minimum(np.float32(127), np.rint(iscale * block))
        out.reshape(-1, 256)[i] = q * (np.float32(1.0) / iscale)
    return out


EXPECTED = {
    T.F32: lambda x: x,
    T.F16: lambda x: x.astype(np.float16).astype(np.float32),
    T.Q4_0: q8_32, T.Q4_1: q8_32, T.Q5_0: q8_32, T.Q5_1: q8_32, T.Q8_0: q8_32,
    T.Q2_K: q8_k, T.Q4_K: q8_k, T.Q6_K: q8_k,
}


@pytest.mark.parametrize("weight_type", list(EXPECTED))
@pytest.mark.parametrize("rows", [1, 31, 32, 33])
def test_matches_ggml_quantizers(weight_type, rows):
    rng = np.random.default_rng(rows)
    x = (rng.standard_normal((rows, 512)) * rng.uniform(0.01, 10, size=(rows, 1))).astype(np.float32)
    x[0, :32] = 0.0  # an all-zero block stays zero
    out = np.empty_like(x)
    _core.round_activations(x, int(weight_type), out)
    np.testing.assert_allclose(out, EXPECTED[weight_type](x), rtol=1e-6, atol=0)


def test_in_place_and_bad_row_length():
    x = np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32)
    expected = q8_32(x)
    _core.round_activations(x, int(T.Q8_0), x)
    np.testing.assert_array_equal(x, expected)
    with pytest.raises(ValueError, match="x: expected a row length that is a multiple of 256"):
        _core.round_activations(x, int(T.Q4_K), np.empty_like(x))
