import numpy as np
import pytest

from ggtune import _core
from test_ops_common import SIZES, f32, numeric_grad, rms_norm_ref

EPS = 1e-5


@pytest.mark.parametrize("T", [1, 3, 33])
@pytest.mark.parametrize("C", SIZES + [576, 1000])
def test_rms_norm_forward_matches_float64(isa, T, C):
    rng = np.random.default_rng(C * 7 + T)
    x, w = f32(rng, T, C), f32(rng, C)
    out, rstd = np.empty_like(x), np.empty(T, np.float32)
    _core.rms_norm_forward(x, w, EPS, out, rstd)
    ref_out, ref_rstd = rms_norm_ref(x.astype(np.float64), w.astype(np.float64), EPS)
    np.testing.assert_allclose(out, ref_out, rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(rstd, ref_rstd, rtol=2e-6)


@pytest.mark.parametrize("C", SIZES + [70])
def test_rms_norm_backward_matches_finite_differences(isa, C):
    T = 3
    rng = np.random.default_rng(C)
    x, w, dout = f32(rng, T, C), f32(rng, C), f32(rng, T, C)
    out, rstd = np.empty_like(x), np.empty(T, np.float32)
    _core.rms_norm_forward(x, w, EPS, out, rstd)
    dx = np.full_like(x, np.nan)  # overwritten
    dw = np.full(C, 0.5, np.float32)  # accumulated into
    _core.rms_norm_backward(dout, x, w, rstd, dx, dw)

    x64, w64, g64 = x.astype(np.float64), w.astype(np.float64), dout.astype(np.float64)
    loss = lambda: (rms_norm_ref(x64, w64, EPS)[0] * g64).sum()
    tol = dict(rtol=1e-4, atol=1e-4)  # float32 kernel vs float64 central differences
    np.testing.assert_allclose(dx, numeric_grad(loss, x64), **tol)
    np.testing.assert_allclose(dw - 0.5, numeric_grad(loss, w64), **tol)

    dx_only = np.empty_like(x)
    _core.rms_norm_backward(dout, x, w, rstd, dx_only)  # dweight is optional
    np.testing.assert_array_equal(dx_only, dx)
