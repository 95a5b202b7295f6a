import numpy as np
import pytest

from ggtune import _core
from test_ops_common import f32, numeric_grad, rope_ref

# (head dim D, rotated dims n_dims): full rotation, partial rotation, odd head dim.
DIMS = [(2, 2), (32, 32), (64, 64), (34, 32), (33, 16), (31, 30)]


@pytest.mark.parametrize("mode", [0, 2])
@pytest.mark.parametrize("D,n_dims", DIMS)
@pytest.mark.parametrize("T", [1, 33])
def test_rope_forward_matches_float64(isa, mode, D, n_dims, T):
    rng = np.random.default_rng(D * 100 + n_dims + T)
    H = 3
    x = f32(rng, T, H, D)
    pos = rng.integers(0, 4096, T).astype(np.int32)
    out = np.empty_like(x)
    _core.rope_forward(x, pos, n_dims, 10000.0, 0.5, mode, out)
    ref = rope_ref(x, pos, n_dims, 10000.0, 0.5, mode)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=2e-6)
    np.testing.assert_array_equal(out[..., n_dims:], x[..., n_dims:])  # passes through exactly

    inplace = x.copy()
    _core.rope_forward(inplace, pos, n_dims, 10000.0, 0.5, mode, inplace)
    np.testing.assert_array_equal(inplace, out)


@pytest.mark.parametrize("mode", [0, 2])
def test_rope_batch_positions_use_the_table_and_match(isa, mode):
    """A batch's repeated positions (each row counts from its offset) take the path that computes
    each position's angles once; scattered ones compute them per token. Both match float64, and
    the two paths give identical rows for equal positions."""
    rng = np.random.default_rng(7)
    B, S, H, D = 4, 9, 2, 16
    pos = np.tile(np.arange(S, dtype=np.int32) + 1000, B)
    x = f32(rng, B * S, H, D)
    out = np.empty_like(x)
    _core.rope_forward(x, pos, D, 10000.0, 1.0, mode, out)
    np.testing.assert_allclose(out, rope_ref(x, pos, D, 10000.0, 1.0, mode), rtol=1e-5, atol=2e-6)
    scattered = np.array([1003, 5000], np.int32)  # span > T: angles per token
    one = np.empty_like(x[:2])
    _core.rope_forward(x[[3, 3]], scattered, D, 10000.0, 1.0, mode, one)
    np.testing.assert_array_equal(one[0], out[3])


def test_rope_modes_pair_different_dims():
    x = np.zeros((1, 1, 4), np.float32)
    x[0, 0, 0] = 1.0
    pos = np.array([1], np.int32)
    normal, neox = np.empty_like(x), np.empty_like(x)
    _core.rope_forward(x, pos, 4, 1.0, 1.0, 0, normal)  # theta = 1 for every pair
    _core.rope_forward(x, pos, 4, 1.0, 1.0, 2, neox)
    np.testing.assert_allclose(normal[0, 0], [np.cos(1), np.sin(1), 0, 0], rtol=1e-6)
    np.testing.assert_allclose(neox[0, 0], [np.cos(1), 0, np.sin(1), 0], rtol=1e-6)


@pytest.mark.parametrize("mode", [0, 2])
@pytest.mark.parametrize("D,n_dims", [(8, 8), (9, 6)])
def test_rope_backward_matches_finite_differences(isa, mode, D, n_dims):
    rng = np.random.default_rng(D + mode)
    T, H = 5, 2
    x, dout = f32(rng, T, H, D), f32(rng, T, H, D)
    pos = np.array([0, 1, 7, 100, 2047], np.int32)
    dx = np.empty_like(x)
    _core.rope_backward(dout, pos, n_dims, 10000.0, 1.0, mode, dx)

    x64, g64 = x.astype(np.float64), dout.astype(np.float64)
    loss = lambda: (rope_ref(x64, pos, n_dims, 10000.0, 1.0, mode) * g64).sum()
    np.testing.assert_allclose(dx, numeric_grad(loss, x64), rtol=1e-5, atol=1e-6)

    inplace = dout.copy()
    _core.rope_backward(inplace, pos, n_dims, 10000.0, 1.0, mode, inplace)
    np.testing.assert_array_equal(inplace, dx)
