import numpy as np
import pytest

from ggtune import _core
from test_ops_common import attention_backward_ref, attention_ref, f32, numeric_grad

# (B, S, Skv, Hq, Hkv, D): GQA 9/3 and MHA 4/4; S and Skv on and around the 32-query and
# 64-key tiles; Skv > S (a KV cache); odd head dims.
SHAPES = [
    (1, 1, 1, 1, 1, 1),
    (2, 31, 31, 9, 3, 64),
    (1, 32, 32, 4, 4, 32),
    (1, 33, 33, 4, 4, 33),
    (2, 33, 100, 9, 3, 17),
    (1, 1, 70, 4, 4, 64),
    (1, 130, 130, 2, 1, 64),
    (1, 65, 200, 9, 3, 5),
]


def run_forward(q, k, v, scale):
    out = np.full_like(q, np.nan)
    lse = np.full((q.shape[0], q.shape[2], q.shape[1]), np.nan, np.float32)
    _core.attention_forward(q, k, v, scale, out, lse)
    return out, lse


def run_backward(dout, q, k, v, out, lse, scale):
    dq, dk, dv = (np.full_like(a, np.nan) for a in (q, k, v))  # all overwritten
    _core.attention_backward(dout, q, k, v, out, lse, scale, dq, dk, dv)
    return dq, dk, dv


def make_inputs(shape, seed):
    B, S, Skv, Hq, Hkv, D = shape
    rng = np.random.default_rng(seed)
    q, k, v = f32(rng, B, S, Hq, D), f32(rng, B, Skv, Hkv, D), f32(rng, B, Skv, Hkv, D)
    return rng, q, k, v, 1.0 / np.sqrt(D)


@pytest.mark.parametrize("shape", SHAPES)
def test_attention_forward_matches_float64(isa, shape):
    rng, q, k, v, scale = make_inputs(shape, sum(shape))
    out, lse = run_forward(q, k, v, scale)
    ref_out, ref_lse = attention_ref(q, k, v, scale)
    np.testing.assert_allclose(out, ref_out, rtol=1e-4, atol=2e-6)
    np.testing.assert_allclose(lse, ref_lse, rtol=1e-5, atol=2e-6)


def test_attention_forward_is_causal_and_reads_its_kv_head():
    rng, q, k, v, scale = make_inputs((1, 4, 6, 4, 2, 8), 0)
    out, _ = run_forward(q, k, v, scale)
    k2, v2 = k.copy(), v.copy()
    k2[:, 5], v2[:, 5] = 9.0, 9.0  # the last key: visible only to the last query (offset 2)
    v2[:, :, 1] += 1.0  # KV head 1: read by query heads 2 and 3 only
    out2, _ = run_forward(q, k2, v2, scale)
    np.testing.assert_array_equal(out2[:, :3, :2], out[:, :3, :2])
    assert not np.allclose(out2[:, 3], out[:, 3])
    assert not np.allclose(out2[:, :3, 2:], out[:, :3, 2:])


@pytest.mark.parametrize("shape", [(1, 3, 3, 2, 2, 3), (2, 4, 6, 3, 1, 5), (1, 5, 5, 4, 2, 2)])
def test_attention_backward_matches_finite_differences(isa, shape):
    rng, q, k, v, scale = make_inputs(shape, 7)
    dout = f32(rng, *q.shape)
    out, lse = run_forward(q, k, v, scale)
    dq, dk, dv = run_backward(dout, q, k, v, out, lse, scale)

    q64, k64, v64, g64 = (a.astype(np.float64) for a in (q, k, v, dout))
    loss = lambda: (attention_ref(q64, k64, v64, scale)[0] * g64).sum()
    tol = dict(rtol=1e-4, atol=2e-5)  # float32 tiles vs float64 central differences
    np.testing.assert_allclose(dq, numeric_grad(loss, q64), **tol)
    np.testing.assert_allclose(dk, numeric_grad(loss, k64), **tol)
    np.testing.assert_allclose(dv, numeric_grad(loss, v64), **tol)
    # the analytic float64 reference used for the larger shapes below agrees too
    for mine, ref in zip((dq, dk, dv), attention_backward_ref(g64, q64, k64, v64, scale)):
        np.testing.assert_allclose(mine, ref, **tol)


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("shape", SHAPES)
def test_attention_backward_matches_float64_on_tiled_shapes(isa, shape, threads):
    _core.set_num_threads(threads)  # changes how key blocks are split into chunks
    try:
        rng, q, k, v, scale = make_inputs(shape, sum(shape) + 1)
        dout = f32(rng, *q.shape)
        out, lse = run_forward(q, k, v, scale)
        grads = run_backward(dout, q, k, v, out, lse, scale)
        again = run_backward(dout, q, k, v, out, lse, scale)
    finally:
        _core.set_num_threads(0)
    for mine, ref, rerun in zip(grads, attention_backward_ref(dout, q, k, v, scale), again):
        np.testing.assert_allclose(mine, ref, rtol=1e-3, atol=2e-5)
        np.testing.assert_array_equal(mine, rerun)  # deterministic


@pytest.mark.parametrize("S,Skv", [(0, 0), (0, 5)])
def test_attention_with_no_queries_is_a_no_op(S, Skv):
    q = np.zeros((1, S, 2, 4), np.float32)
    kv = np.ones((1, Skv, 1, 4), np.float32)
    out, lse = run_forward(q, kv, kv, 1.0)
    dq, dk, dv = run_backward(q, q, kv, kv, out, lse, 1.0)
    assert not dk.any() and not dv.any()  # keys no query sees get zero gradient
