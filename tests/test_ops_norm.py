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


# ---- per-head q/k RMSNorm (qwen3, gemma3): q[T, H*D] viewed as [T*H, D], one weight [D] ----

def per_head(x, H):
    """The [T*H, D] view of x[T, H*D] (no copy: the kernel reads and writes the heads in place)."""
    view = x.reshape(x.shape[0] * H, -1)
    assert np.shares_memory(view, x)
    return view


@pytest.mark.parametrize("D", [64, 128, 256, 33, 97])
@pytest.mark.parametrize("T,H", [(1, 1), (5, 4), (33, 9)])
def test_rms_norm_per_head_forward_and_backward(isa, T, H, D):
    rng = np.random.default_rng(T * H + D)
    q, w, dout = f32(rng, T, H * D), f32(rng, D), f32(rng, T, H * D)
    out, rstd = np.empty_like(q), np.empty(T * H, np.float32)
    _core.rms_norm_forward(per_head(q, H), w, EPS, per_head(out, H), rstd)
    q64, w64, g64 = (a.astype(np.float64) for a in (q, w, dout))
    heads = q64.reshape(T, H, D)
    ref_rstd = 1.0 / np.sqrt((heads**2).mean(axis=2) + EPS)  # one rstd per (token, head)
    np.testing.assert_allclose(out, (heads * ref_rstd[..., None] * w64).reshape(T, H * D),
                               rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(rstd, ref_rstd.reshape(-1), rtol=2e-6)

    dx = np.full_like(q, np.nan)
    dw = np.full(D, 0.25, np.float32)  # accumulated into, over every token and head
    _core.rms_norm_backward(per_head(dout, H), per_head(q, H), w, rstd, per_head(dx, H), dw)
    # analytic float64: dw = sum over tokens and heads; dx per row
    gh = g64.reshape(T, H, D)
    r = ref_rstd[..., None]
    ref_dw = (gh * heads * r).sum(axis=(0, 1))
    ref_dx = r * w64 * gh - heads * r**3 / D * (gh * w64 * heads).sum(axis=2, keepdims=True)
    np.testing.assert_allclose(dw - 0.25, ref_dw, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dx, ref_dx.reshape(T, H * D), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("D", [64, 33])
def test_rms_norm_per_head_backward_matches_finite_differences(isa, D):
    T, H = 2, 3
    rng = np.random.default_rng(D + 1)
    q, w, dout = f32(rng, T, H * D), f32(rng, D), f32(rng, T, H * D)
    out, rstd = np.empty_like(q), np.empty(T * H, np.float32)
    _core.rms_norm_forward(per_head(q, H), w, EPS, per_head(out, H), rstd)
    dx, dw = np.empty_like(q), np.zeros(D, np.float32)
    _core.rms_norm_backward(per_head(dout, H), per_head(q, H), w, rstd, per_head(dx, H), dw)

    q64, w64, g64 = (a.astype(np.float64) for a in (q, w, dout))
    loss = lambda: (rms_norm_ref(q64.reshape(T * H, D), w64, EPS)[0] * g64.reshape(T * H, D)).sum()
    tol = dict(rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dx, numeric_grad(loss, q64), **tol)
    np.testing.assert_allclose(dw, numeric_grad(loss, w64), **tol)


@pytest.mark.parametrize("T,C", [(3, 33), (40, 576), (7, 1000)])
def test_rms_norm_reads_bf16_bits_and_adds_the_residual_gradient(isa, T, C):
    """x as bfloat16 bits (a compact kept x1): the float32 kernels' results on their values (the
    backward to an ulp or two: the compiler may fuse a scalar tail's multiply-add in one
    instantiation and not the other; kept and recomputed layers both read bits); residual: the same
    bits as adding it after the kernel; dweight unchanged by either."""
    rng = np.random.default_rng(T + C)
    bits = (f32(rng, T, C, scale=2.0).view(np.uint32) >> 16).astype(np.uint16)
    x = (bits.astype(np.uint32) << 16).view(np.float32)
    w, dout, residual = f32(rng, C), f32(rng, T, C), f32(rng, T, C)
    out, rstd = np.empty_like(x), np.empty(T, np.float32)
    _core.rms_norm_forward(x, w, 1e-5, out, rstd)
    out_b, rstd_b = np.empty_like(x), np.empty(T, np.float32)
    _core.rms_norm_forward(bits, w, 1e-5, out_b, rstd_b)
    np.testing.assert_array_equal(out_b, out)
    np.testing.assert_array_equal(rstd_b, rstd)
    dx, dw = np.empty_like(x), np.zeros(C, np.float32)
    _core.rms_norm_backward(dout, x, w, rstd, dx, dw)
    dx_r, dw_r = np.empty_like(x), np.zeros(C, np.float32)
    _core.rms_norm_backward(dout, x, w, rstd, dx_r, dw_r, residual)
    np.testing.assert_array_equal(dx_r, dx + residual)
    np.testing.assert_array_equal(dw_r, dw)
    dx_b, dw_b = np.empty_like(x), np.zeros(C, np.float32)
    _core.rms_norm_backward(dout, bits, w, rstd, dx_b, dw_b, residual)
    np.testing.assert_allclose(dx_b, dx_r, rtol=1e-6, atol=1e-6 * np.abs(dx_r).max())
    np.testing.assert_array_equal(dw_b, dw)
    with pytest.raises(ValueError, match="residual: expected shape"):
        _core.rms_norm_backward(dout, x, w, rstd, dx, residual=residual[1:])
