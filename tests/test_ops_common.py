"""Float64 numpy references for the llama ops, a central-difference gradient helper, and the
bad-input tests shared by every op (the per-family test_ops_*.py files import from here)."""

import numpy as np
import pytest

from ggtune import _core

SIZES = [1, 31, 32, 33]  # around one AVX-512 register of floats and its tails


def f32(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def assert_same_bits_at_thread_counts(run, counts=(1, 2, 3)):
    """run() returns an array or a tuple of arrays: the same bits at every thread count."""
    runs = []
    try:
        for threads in counts:
            _core.set_num_threads(threads)
            out = run()
            runs.append(out if isinstance(out, tuple) else (out,))
    finally:
        _core.set_num_threads(0)
    for other in runs[1:]:
        assert len(other) == len(runs[0])
        for mine, theirs in zip(runs[0], other):
            np.testing.assert_array_equal(mine, theirs)


def numeric_grad(loss, x, eps=1e-6):
    """Central differences of the float64 scalar loss() with respect to the float64 array x."""
    grad = np.zeros_like(x)
    flat, g = x.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        saved = flat[i]
        flat[i] = saved + eps
        up = loss()
        flat[i] = saved - eps
        down = loss()
        flat[i] = saved
        g[i] = (up - down) / (2 * eps)
    return grad


# ---- references (float64) ----

def rms_norm_ref(x, w, eps):
    rstd = 1.0 / np.sqrt((x * x).mean(axis=1) + eps)
    return x * rstd[:, None] * w, rstd


def yarn_corr_dims(n_dims, n_ctx_orig, freq_base, beta_fast, beta_slow):
    """ggml_rope_yarn_corr_dims, in float32 as ggml computes it."""
    f = np.float32

    def corr_dim(n_rot):
        return f(n_dims) * np.log(f(n_ctx_orig) / (f(n_rot) * f(2) * f(np.pi))) / (f(2) * np.log(f(freq_base)))

    lo = max(f(0), np.floor(corr_dim(beta_fast)))
    hi = min(f(n_dims - 1), np.ceil(corr_dim(beta_slow)))
    return float(lo), float(hi)


def rope_ref(x, pos, n_dims, freq_base, freq_scale, mode, sign=1.0, freq_factors=None,
             ext_factor=0.0, attn_factor=1.0, beta_fast=32.0, beta_slow=1.0, n_ctx_orig=0):
    """ggml_rope_ext of x[T,H,D] (rope_yarn and ggml_rope_cache_init transcribed, in float64);
    sign=-1 applies the transposed rotation (the backward)."""
    x = np.asarray(x, np.float64)
    out = x.copy()
    half = n_dims // 2
    i = np.arange(half)
    theta_extrap = pos.astype(np.float64)[:, None] * freq_base ** (-2.0 * i / n_dims)
    if freq_factors is not None:
        theta_extrap = theta_extrap / np.asarray(freq_factors, np.float64)
    theta_interp = freq_scale * theta_extrap
    theta, mscale = theta_interp, attn_factor
    if ext_factor != 0.0:
        lo, hi = yarn_corr_dims(n_dims, n_ctx_orig, freq_base, beta_fast, beta_slow)
        ramp = 1.0 - np.clip((i - lo) / max(0.001, hi - lo), 0.0, 1.0)
        mix = ramp * ext_factor
        theta = theta_interp * (1 - mix) + theta_extrap * mix
        mscale = attn_factor * (1.0 + 0.1 * np.log(1.0 / freq_scale))
    cos = mscale * np.cos(theta)[:, None, :]
    sin = sign * mscale * np.sin(theta)[:, None, :]
    a, b = (i, i + half) if mode == 2 else (2 * i, 2 * i + 1)
    x0, x1 = x[:, :, a], x[:, :, b]
    out[:, :, a] = x0 * cos - x1 * sin
    out[:, :, b] = x0 * sin + x1 * cos
    return out


def attention_mask(B, S, Skv, first_key):
    """[B, S, Skv] True where query i may not see key j: j > i + (Skv - S) or j < first_key."""
    j, i = np.arange(Skv)[None, None, :], np.arange(S)[None, :, None]
    lo = np.zeros((B, S), np.int64) if first_key is None else np.asarray(first_key, np.int64)
    return (j > i + (Skv - S)) | (j < lo[:, :, None])


def attention_ref(q, k, v, scale, first_key=None):
    """Causal GQA attention with per-query lower key bounds (None: 0); returns
    (out[B,S,Hq,D], lse[B,Hq,S]) in float64."""
    B, S, Hq, D = q.shape
    Skv, Hkv = k.shape[1], k.shape[2]
    group = Hq // Hkv
    kk = np.repeat(np.asarray(k, np.float64), group, axis=2)
    vv = np.repeat(np.asarray(v, np.float64), group, axis=2)
    s = np.einsum("bihd,bjhd->bhij", np.asarray(q, np.float64), kk) * scale
    s = np.where(attention_mask(B, S, Skv, first_key)[:, None], -np.inf, s)
    m = s.max(axis=-1, keepdims=True)
    p = np.exp(s - m)
    l = p.sum(axis=-1, keepdims=True)
    return np.einsum("bhij,bjhd->bihd", p / l, vv), (m + np.log(l))[..., 0]


def attention_backward_ref(dout, q, k, v, scale, first_key=None):
    """Analytic float64 gradients (dq, dk, dv); itself checked against finite differences."""
    B, S, Hq, D = q.shape
    Skv, Hkv = k.shape[1], k.shape[2]
    group = Hq // Hkv
    q, dout = np.asarray(q, np.float64), np.asarray(dout, np.float64)
    kk = np.repeat(np.asarray(k, np.float64), group, axis=2)
    vv = np.repeat(np.asarray(v, np.float64), group, axis=2)
    s = np.einsum("bihd,bjhd->bhij", q, kk) * scale
    s = np.where(attention_mask(B, S, Skv, first_key)[:, None], -np.inf, s)
    p = np.exp(s - s.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)
    dv = np.einsum("bhij,bihd->bjhd", p, dout)
    dp = np.einsum("bihd,bjhd->bhij", dout, vv)
    ds = p * (dp - (p * dp).sum(axis=-1, keepdims=True)) * scale
    dq = np.einsum("bhij,bjhd->bihd", ds, kk)
    dk = np.einsum("bhij,bihd->bjhd", ds, q)
    fold = lambda g: g.reshape(B, Skv, Hkv, group, D).sum(axis=3)  # sum over the group's heads
    return dq, fold(dk), fold(dv)


def swiglu_ref(g, u):
    with np.errstate(over="ignore"):  # exp(-g) = inf for very negative g: silu -> -0
        return g / (1.0 + np.exp(-g)) * u


def gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


def geglu_ref(g, u):
    return gelu_tanh(g) * u


def cross_entropy_ref(logits, targets):
    logits = np.asarray(logits, np.float64)
    m = logits.max(axis=1, keepdims=True)
    lse = (m + np.log(np.exp(logits - m).sum(axis=1, keepdims=True)))[:, 0]
    keep = targets >= 0
    picked = logits[np.arange(len(targets)), np.where(keep, targets, 0)]
    return np.where(keep, lse - picked, 0.0)


# ---- bad input: a clear exception naming the argument, never a crash ----

def test_wrong_dtype_shape_and_layout_name_the_argument():
    x, rstd = np.ones((4, 8), np.float32), np.ones(4, np.float32)
    with pytest.raises(ValueError, match="weight"):
        _core.rms_norm_forward(x, np.ones(7, np.float32), 1e-5, np.empty_like(x), rstd)
    with pytest.raises(ValueError, match="x: expected dtype"):
        _core.rms_norm_forward(x.astype(np.float64), np.ones(8, np.float32), 1e-5, np.empty_like(x),
                               rstd)
    with pytest.raises(ValueError, match="out: expected a C-contiguous"):
        _core.swiglu_forward(x, x, np.empty((8, 4), np.float32).T)
    with pytest.raises(ValueError, match="rstd"):
        _core.rms_norm_forward(x, np.ones(8, np.float32), 1e-5, np.empty_like(x), rstd[:3])
    with pytest.raises(ValueError, match="dweight"):
        _core.rms_norm_backward(x, x, np.ones(8, np.float32), rstd, np.empty_like(x),
                                np.zeros(9, np.float32))
    with pytest.raises(ValueError, match="out: expected a writable"):
        ro = np.empty_like(x)
        ro.flags.writeable = False
        _core.add(x, x, ro)
    with pytest.raises(ValueError, match="b: expected shape"):
        _core.add(x, np.ones((4, 9), np.float32), np.empty_like(x))
    with pytest.raises(ValueError, match="x: expected shape"):
        _core.scale_add(x.copy(), np.ones(32, np.float32), 2.0)


def test_attention_shape_relations_are_checked():
    q = np.zeros((2, 8, 6, 4), np.float32)
    kv = np.zeros((2, 8, 4, 4), np.float32)
    out, lse = np.empty_like(q), np.empty((2, 6, 8), np.float32)
    with pytest.raises(ValueError, match="k: expected a head count dividing"):
        _core.attention_forward(q, kv, kv, 1.0, out, lse)
    short = np.zeros((2, 7, 3, 4), np.float32)
    with pytest.raises(ValueError, match="k: expected at least as many positions"):
        _core.attention_forward(q, short, short, 1.0, out, lse)
    kv = np.zeros((2, 8, 3, 4), np.float32)
    with pytest.raises(ValueError, match="v: expected shape"):
        _core.attention_forward(q, kv, np.zeros((2, 9, 3, 4), np.float32), 1.0, out, lse)
    with pytest.raises(ValueError, match="k: expected shape"):
        _core.attention_forward(q, np.zeros((2, 8, 3, 5), np.float32), kv, 1.0, out, lse)
    with pytest.raises(ValueError, match="lse"):
        _core.attention_forward(q, kv, kv, 1.0, out, np.empty((2, 8, 6), np.float32))
    with pytest.raises(ValueError, match="dk"):
        _core.attention_backward(q, q, kv, kv, out, lse, 1.0, np.empty_like(q),
                                 np.empty_like(q), np.empty_like(kv))


def test_ids_and_targets_out_of_range_are_index_errors():
    dout = np.ones((3, 4), np.float32)
    table = np.zeros((5, 4), np.float32)
    with pytest.raises(IndexError, match="ids: entry 1 is 5"):
        _core.embedding_backward(dout, np.array([0, 5, 1], np.int32), table)
    with pytest.raises(IndexError, match="ids: entry 2 is -1"):
        _core.embedding_backward(dout, np.array([0, 1, -1], np.int32), table)
    with pytest.raises(ValueError, match="ids: expected dtype int32"):
        _core.embedding_backward(dout, np.array([0, 1, 2], np.int64), table)
    logits = np.zeros((3, 4), np.float32)
    with pytest.raises(IndexError, match="targets: entry 0 is 4"):
        _core.cross_entropy_forward(logits, np.array([4, 0, 0], np.int32), np.empty(3, np.float32))
    with pytest.raises(IndexError, match="targets"):
        _core.cross_entropy_backward(logits, np.array([0, 9, 0], np.int32), 1.0,
                                     np.empty_like(logits))


def test_rope_parameters_are_checked():
    x = np.zeros((2, 3, 8), np.float32)
    pos = np.zeros(2, np.int32)
    with pytest.raises(ValueError, match="n_dims"):
        _core.rope_forward(x, pos, 7, 10000.0, 1.0, 0, np.empty_like(x))
    with pytest.raises(ValueError, match="n_dims"):
        _core.rope_forward(x, pos, 10, 10000.0, 1.0, 0, np.empty_like(x))
    with pytest.raises(ValueError, match="mode"):
        _core.rope_forward(x, pos, 8, 10000.0, 1.0, 1, np.empty_like(x))
    with pytest.raises(ValueError, match="pos"):
        _core.rope_forward(x, np.zeros(3, np.int32), 8, 10000.0, 1.0, 0, np.empty_like(x))


def test_rope_extension_arguments_are_checked():
    x = np.zeros((2, 3, 8), np.float32)
    pos = np.zeros(2, np.int32)
    rope = lambda **kw: _core.rope_forward(x, pos, 8, 10000.0, 0.5, 0, np.empty_like(x), **kw)
    with pytest.raises(ValueError, match="freq_factors: expected shape"):
        rope(freq_factors=np.ones(8, np.float32))  # one per pair: n_dims / 2
    with pytest.raises(ValueError, match="freq_factors: expected dtype float32"):
        rope(freq_factors=np.ones(4, np.float64))
    with pytest.raises(ValueError, match="freq_factors: entry 2 is 0"):
        rope(freq_factors=np.array([1, 1, 0, 1], np.float32))
    with pytest.raises(ValueError, match="freq_factors: expected a numpy array"):
        rope(freq_factors=[1.0, 1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="n_ctx_orig: expected > 0"):
        rope(ext_factor=1.0)
    with pytest.raises(ValueError, match="freq_scale: expected > 0"):
        _core.rope_backward(x, pos, 8, 10000.0, 0.0, 0, np.empty_like(x), ext_factor=1.0,
                            n_ctx_orig=4096)
    with pytest.raises(ValueError, match="beta_fast"):
        rope(ext_factor=1.0, n_ctx_orig=4096, beta_fast=0.0)
    with pytest.raises(ValueError, match="attn_factor"):
        rope(attn_factor=float("nan"))


def test_attention_first_key_is_checked():
    q = np.zeros((2, 4, 2, 8), np.float32)
    kv = np.zeros((2, 6, 1, 8), np.float32)  # Skv - S = 2: query i's own key is i + 2
    out, lse = np.empty_like(q), np.empty((2, 2, 4), np.float32)
    grads = (np.empty_like(q), np.empty_like(kv), np.empty_like(kv))
    ok = np.tile(np.arange(4, dtype=np.int32) + 2, (2, 1))
    _core.attention_forward(q, kv, kv, 1.0, out, lse, first_key=ok)  # each sees only itself
    bad = ok.copy()
    bad[1, 3] = 6
    with pytest.raises(ValueError, match=r"first_key: entry \[1, 3\] is 6, expected in \[0, 5\]"):
        _core.attention_forward(q, kv, kv, 1.0, out, lse, first_key=bad)
    bad[1, 3] = -1
    with pytest.raises(ValueError, match=r"first_key: entry \[1, 3\] is -1"):
        _core.attention_backward(q, q, kv, kv, out, lse, 1.0, *grads, first_key=bad)
    with pytest.raises(ValueError, match="first_key: expected dtype int32"):
        _core.attention_forward(q, kv, kv, 1.0, out, lse, first_key=ok.astype(np.int64))
    with pytest.raises(ValueError, match="first_key: expected shape"):
        _core.attention_backward(q, q, kv, kv, out, lse, 1.0, *grads, first_key=ok[:, :3].copy())
    with pytest.raises(ValueError, match="first_key: expected a numpy array or None"):
        _core.attention_forward(q, kv, kv, 1.0, out, lse, first_key=0)


def test_geglu_and_bias_shapes_are_checked():
    x = np.ones((4, 8), np.float32)
    with pytest.raises(ValueError, match="up: expected shape"):
        _core.geglu_forward(x, np.ones((4, 7), np.float32), np.empty_like(x))
    with pytest.raises(ValueError, match="dup"):
        _core.geglu_backward(x, x, x, np.empty_like(x), np.empty((8, 4), np.float32))
    with pytest.raises(ValueError, match="bias: expected shape"):
        _core.add_bias(x, np.ones(4, np.float32))
    with pytest.raises(ValueError, match="y: expected a writable"):
        ro = x.copy()
        ro.flags.writeable = False
        _core.add_bias(ro, np.ones(8, np.float32))
    with pytest.raises(ValueError, match="dbias: expected shape"):
        _core.bias_backward(x, np.zeros(4, np.float32))
    with pytest.raises(ValueError, match="dy: expected dtype float32"):
        _core.bias_backward(x.astype(np.float64), np.zeros(8, np.float32), accumulate=True)
