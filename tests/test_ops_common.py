"""Float64 numpy references for the llama ops, a central-difference gradient helper, and the
bad-input tests shared by every op (the per-family test_ops_*.py files import from here)."""

import numpy as np
import pytest

from ggtune import _core

SIZES = [1, 31, 32, 33]  # around one AVX-512 register of floats and its tails


def f32(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


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


def rope_ref(x, pos, n_dims, freq_base, freq_scale, mode, sign=1.0):
    """llama.cpp rotary embedding of x[T,H,D]; sign=-1 rotates back (the backward)."""
    x = np.asarray(x, np.float64)
    out = x.copy()
    half = n_dims // 2
    i = np.arange(half)
    theta = pos.astype(np.float64)[:, None] * freq_scale * freq_base ** (-2.0 * i / n_dims)
    cos, sin = np.cos(theta)[:, None, :], sign * np.sin(theta)[:, None, :]
    a, b = (i, i + half) if mode == 2 else (2 * i, 2 * i + 1)
    x0, x1 = x[:, :, a], x[:, :, b]
    out[:, :, a] = x0 * cos - x1 * sin
    out[:, :, b] = x0 * sin + x1 * cos
    return out


def attention_ref(q, k, v, scale):
    """Causal GQA attention; returns (out[B,S,Hq,D], lse[B,Hq,S]) in float64."""
    B, S, Hq, D = q.shape
    Skv, Hkv = k.shape[1], k.shape[2]
    group, off = Hq // Hkv, Skv - S
    kk = np.repeat(np.asarray(k, np.float64), group, axis=2)
    vv = np.repeat(np.asarray(v, np.float64), group, axis=2)
    s = np.einsum("bihd,bjhd->bhij", np.asarray(q, np.float64), kk) * scale
    masked = np.arange(Skv)[None, :] > np.arange(S)[:, None] + off
    s = np.where(masked, -np.inf, s)
    m = s.max(axis=-1, keepdims=True)
    p = np.exp(s - m)
    l = p.sum(axis=-1, keepdims=True)
    return np.einsum("bhij,bjhd->bihd", p / l, vv), (m + np.log(l))[..., 0]


def attention_backward_ref(dout, q, k, v, scale):
    """Analytic float64 gradients (dq, dk, dv); itself checked against finite differences."""
    B, S, Hq, D = q.shape
    Skv, Hkv = k.shape[1], k.shape[2]
    group, off = Hq // Hkv, Skv - S
    q, dout = np.asarray(q, np.float64), np.asarray(dout, np.float64)
    kk = np.repeat(np.asarray(k, np.float64), group, axis=2)
    vv = np.repeat(np.asarray(v, np.float64), group, axis=2)
    s = np.einsum("bihd,bjhd->bhij", q, kk) * scale
    s = np.where(np.arange(Skv)[None, :] > np.arange(S)[:, None] + off, -np.inf, s)
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
    return g / (1.0 + np.exp(-g)) * u


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
