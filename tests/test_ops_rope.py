import numpy as np
import pytest

from ggtune import _core
from test_ops_common import f32, numeric_grad, rope_ref, yarn_corr_dims

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


# ---- ggml_rope_ext's extensions: frequency factors (llama 3.1 rope_freqs) and YaRN ----

def llama31_freq_factors(n_dims, freq_base, factor=8.0, low=1.0, high=4.0, n_ctx_orig=8192):
    """The factors llama.cpp's converter writes as rope_freqs.weight for llama 3.1."""
    freqs = freq_base ** (-np.arange(0, n_dims, 2) / n_dims)
    wavelen = 2 * np.pi / freqs
    low_wavelen, high_wavelen = n_ctx_orig / low, n_ctx_orig / high
    smooth = (n_ctx_orig / wavelen - low) / (high - low)
    mid = 1 / ((1 - smooth) / factor + smooth)
    return np.where(wavelen < high_wavelen, 1.0,
                    np.where(wavelen > low_wavelen, factor, mid)).astype(np.float32)


YARN = dict(ext_factor=1.0, attn_factor=1.0, beta_fast=32.0, beta_slow=1.0, n_ctx_orig=4096)
EXTENSIONS = {
    "freq_factors": lambda n_dims: dict(freq_factors=llama31_freq_factors(n_dims, 500000.0)),
    "yarn": lambda n_dims: YARN,
    "yarn_partial": lambda n_dims: dict(YARN, ext_factor=0.5, attn_factor=0.8, beta_fast=16.0,
                                        beta_slow=2.0, n_ctx_orig=2048),
    "attn_factor_only": lambda n_dims: dict(attn_factor=1.25),
    "both": lambda n_dims: dict(YARN, freq_factors=llama31_freq_factors(n_dims, 500000.0)),
}


@pytest.mark.parametrize("mode", [0, 2])
@pytest.mark.parametrize("ext", sorted(EXTENSIONS))
@pytest.mark.parametrize("D,n_dims", [(64, 64), (34, 32), (128, 96)])
def test_rope_extensions_match_ggml_formulas(isa, mode, ext, D, n_dims):
    rng = np.random.default_rng(D + n_dims + mode)
    T, H = 33, 2
    x = f32(rng, T, H, D)
    pos = rng.integers(0, 32768, T).astype(np.int32)
    kw = EXTENSIONS[ext](n_dims)
    out = np.empty_like(x)
    _core.rope_forward(x, pos, n_dims, 500000.0, 0.25, mode, out, **kw)
    ref = rope_ref(x, pos, n_dims, 500000.0, 0.25, mode, **kw)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=4e-6)
    np.testing.assert_array_equal(out[..., n_dims:], x[..., n_dims:])
    assert not np.allclose(out, rope_ref(x, pos, n_dims, 500000.0, 0.25, mode), atol=1e-3)


def test_yarn_ramp_extrapolates_fast_pairs_and_interpolates_slow_ones():
    """Read from the formulas, not the transcription: with ext_factor 1 the pairs below the
    correction range keep the unscaled angle, those above get freq_scale's, and every pair is
    scaled by 1 + 0.1 ln(1/freq_scale)."""
    n_dims, base, scale = 64, 10000.0, 0.25
    lo, hi = yarn_corr_dims(n_dims, 4096, base, 32.0, 1.0)
    assert 0 < lo < hi < n_dims / 2 - 1
    x = np.zeros((1, 1, n_dims), np.float32)
    x[0, 0, 0::2] = 1.0  # every pair (2i, 2i+1) starts at (1, 0): out = mscale (cos, sin)
    pos = np.array([3], np.int32)
    out = np.empty_like(x)
    _core.rope_forward(x, pos, n_dims, base, scale, 0, out, **YARN)
    angle = np.arctan2(out[0, 0, 1::2], out[0, 0, 0::2])
    radius = np.hypot(out[0, 0, 1::2], out[0, 0, 0::2])
    freq = base ** (-np.arange(n_dims // 2) * 2.0 / n_dims)
    fast, slow = np.arange(n_dims // 2) <= lo, np.arange(n_dims // 2) >= hi
    np.testing.assert_allclose(angle[fast], np.angle(np.exp(3j * freq[fast])), atol=1e-5)
    np.testing.assert_allclose(angle[slow], 3 * scale * freq[slow], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(radius, 1 + 0.1 * np.log(1 / scale), rtol=1e-6)


def test_rope_extension_defaults_are_todays_rope(isa):
    """Default arguments and factors of exactly 1 give bit for bit the plain rotation."""
    rng = np.random.default_rng(3)
    x = f32(rng, 33, 2, 64)
    pos = rng.integers(0, 100000, 33).astype(np.int32)
    plain, explicit, ones = (np.empty_like(x) for _ in range(3))
    _core.rope_forward(x, pos, 64, 10000.0, 0.5, 2, plain)
    _core.rope_forward(x, pos, 64, 10000.0, 0.5, 2, explicit, freq_factors=None, ext_factor=0.0,
                       attn_factor=1.0, beta_fast=32.0, beta_slow=1.0, n_ctx_orig=0)
    _core.rope_forward(x, pos, 64, 10000.0, 0.5, 2, ones, freq_factors=np.ones(32, np.float32))
    np.testing.assert_array_equal(explicit, plain)
    np.testing.assert_array_equal(ones, plain)


@pytest.mark.parametrize("mode", [0, 2])
@pytest.mark.parametrize("ext", ["freq_factors", "yarn_partial", "both"])
def test_rope_extensions_backward_matches_finite_differences(isa, mode, ext):
    rng = np.random.default_rng(mode)
    T, H, D, n_dims = 5, 2, 10, 8
    x, dout = f32(rng, T, H, D), f32(rng, T, H, D)
    pos = np.array([0, 1, 7, 100, 20000], np.int32)
    kw = dict(EXTENSIONS[ext](n_dims), n_ctx_orig=256)
    dx = np.empty_like(x)
    _core.rope_backward(dout, pos, n_dims, 10000.0, 0.5, mode, dx, **kw)

    x64, g64 = x.astype(np.float64), dout.astype(np.float64)
    loss = lambda: (rope_ref(x64, pos, n_dims, 10000.0, 0.5, mode, **kw) * g64).sum()
    np.testing.assert_allclose(dx, numeric_grad(loss, x64), rtol=1e-5, atol=1e-6)
