"""bfloat16 conversion of kept activations (csrc/ops/convert*, _core.to_bf16 / from_bf16) against
a numpy reference, on every kernel tier the machine has."""

import numpy as np
import pytest

from ggtune import _core
from test_ops_common import SIZES
from test_quant import float_edge_cases, random_float_bits


def bf16_reference(x: np.ndarray) -> np.ndarray:
    """Round to nearest even on the float32 bits; NaN keeps its top bits, quiet bit set."""
    bits = x.view(np.uint32).astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    nan = (bits & 0x7FFFFFFF) > 0x7F800000
    rounded[nan] = ((bits[nan] >> 16) | 0x40).astype(np.uint16)
    return rounded


def to_bf16(x):
    out = np.zeros(x.size, np.uint16)
    _core.to_bf16(x, out)
    return out


@pytest.mark.parametrize("n", SIZES + [1 << 17, (1 << 18) + 7])  # tails; several threads' ranges
def test_to_bf16_rounds_like_the_reference(isa, n):
    x = random_float_bits(n)
    np.testing.assert_array_equal(to_bf16(x), bf16_reference(x))


def test_to_bf16_edge_cases(isa):
    """Ties (even and odd), denormals (kept, where vcvtneps2bf16 would flush them), infinities,
    signalling and quiet NaNs, the largest finite floats (rounding up to infinity)."""
    ties = np.array([0x3F808000, 0x3F818000, 0x00008000, 0x00018000, 0x7F7FFFFF, 0xFF7FFFFF, 0x7F800001,
                     0xFFC00001, 0x00000001], np.uint32).view(np.float32)
    x = np.concatenate([float_edge_cases(), ties])
    got = to_bf16(x)
    np.testing.assert_array_equal(got, bf16_reference(x))
    assert got[-1] == 0  # the smallest denormal rounds to +0, not flushed by a sign or NaN path
    assert (got[np.isnan(x)] & 0x7FC0 == 0x7FC0).all()


@pytest.mark.parametrize("n", SIZES + [(1 << 17) + 3])
def test_from_bf16_is_exact_and_inverts_to_bf16(isa, n):
    bits = np.random.default_rng(n).integers(0, 1 << 16, n, dtype=np.uint16)
    out = np.zeros(n, np.float32)
    _core.from_bf16(bits, out)
    want = (bits.astype(np.uint32) << 16).view(np.float32)
    np.testing.assert_array_equal(out.view(np.uint32), want.view(np.uint32))
    finite = np.isfinite(out)
    np.testing.assert_array_equal(to_bf16(out[finite]), bits[finite])


def test_rounding_error_is_at_most_half_a_bf16_step():
    x = np.random.default_rng(0).standard_normal(10_000).astype(np.float32)
    back = np.zeros_like(x)
    _core.from_bf16(to_bf16(x), back)
    assert np.abs(back - x).max() <= 2.0 ** -8 * np.abs(x).max()
    assert (np.abs(back - x) <= 2.0 ** -8 * np.abs(x)).all()


def test_conversions_reject_bad_input():
    x = np.zeros(4, np.float32)
    with pytest.raises(ValueError, match="x: expected dtype float32"):
        _core.to_bf16(x.astype(np.float64), np.zeros(4, np.uint16))
    with pytest.raises(ValueError, match="out: expected shape"):
        _core.to_bf16(x, np.zeros(3, np.uint16))
    with pytest.raises(ValueError, match="x: expected dtype uint16"):
        _core.from_bf16(x, np.zeros(4, np.float32))
    with pytest.raises(ValueError, match="out: expected dtype float32"):
        _core.from_bf16(np.zeros(4, np.uint16), np.zeros(4, np.float64))
