import numpy as np
import pytest

from ggtune import _core
from test_ops_common import SIZES, f32, numeric_grad, swiglu_ref


@pytest.mark.parametrize("T", [1, 3])
@pytest.mark.parametrize("F", SIZES + [1536])
def test_swiglu_forward_matches_float64(isa, T, F):
    rng = np.random.default_rng(F + T)
    gate, up = f32(rng, T, F, scale=4.0), f32(rng, T, F)
    gate[0, 0] = -100.0  # exp(-g) overflows float32: silu -> 0, not nan
    out = np.empty_like(gate)
    _core.swiglu_forward(gate, up, out)
    ref = swiglu_ref(gate.astype(np.float64), up.astype(np.float64))
    np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-7)


def test_swiglu_forward_spans_threads_and_tails(isa):
    rng = np.random.default_rng(1)
    gate, up = f32(rng, 97, 1537, scale=3.0), f32(rng, 97, 1537)
    out = np.empty_like(gate)
    _core.swiglu_forward(gate, up, out)
    np.testing.assert_allclose(out, swiglu_ref(gate.astype(np.float64), up.astype(np.float64)),
                               rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("F", SIZES)
def test_swiglu_backward_matches_finite_differences(isa, F):
    rng = np.random.default_rng(F)
    T = 2
    gate, up, dout = f32(rng, T, F, scale=3.0), f32(rng, T, F), f32(rng, T, F)
    dgate, dup = np.full_like(gate, np.nan), np.full_like(gate, np.nan)  # overwritten
    _core.swiglu_backward(dout, gate, up, dgate, dup)
    g64, u64, d64 = (a.astype(np.float64) for a in (gate, up, dout))
    loss = lambda: (swiglu_ref(g64, u64) * d64).sum()
    np.testing.assert_allclose(dgate, numeric_grad(loss, g64), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dup, numeric_grad(loss, u64), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", [(1,), (33,), (5, 31), (3, 2, 100_003)])
def test_add_and_scale_add(isa, shape):
    rng = np.random.default_rng(len(shape))
    a, b = f32(rng, *shape), f32(rng, *shape)
    out = np.empty_like(a)
    _core.add(a, b, out)
    np.testing.assert_array_equal(out, a + b)
    acc = a.copy()
    _core.scale_add(acc, b, -0.25)
    np.testing.assert_allclose(acc, a.astype(np.float64) - 0.25 * b, rtol=1e-6, atol=1e-7)
    _core.add(a, b, a)  # out may be an input
    np.testing.assert_array_equal(a, out)
