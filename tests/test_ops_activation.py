import numpy as np
import pytest

from ggtune import _core
from test_ops_common import SIZES, f32, geglu_ref, numeric_grad, swiglu_ref


# name -> (float64 reference, forward rtol)
GATES = {"swiglu": (swiglu_ref, 1e-6), "geglu": (geglu_ref, 2e-6)}


def gate_kernels(name):
    return getattr(_core, f"{name}_forward"), getattr(_core, f"{name}_backward")


@pytest.mark.parametrize("gate_name", sorted(GATES))
@pytest.mark.parametrize("T", [1, 3])
@pytest.mark.parametrize("F", SIZES + [1536])
def test_gated_forward_matches_float64(isa, gate_name, T, F):
    ref_fn, rtol = GATES[gate_name]
    rng = np.random.default_rng(F + T)
    gate, up = f32(rng, T, F, scale=4.0), f32(rng, T, F)
    # saturation (exp(-g) overflows float32: silu -> 0, not nan) and overflow of g^3 (gelu)
    extremes = [-100.0, 100.0, -10.0, 10.0, 1e-30, -3e4, 0.0]
    gate.reshape(-1)[: len(extremes)] = extremes[: gate.size]
    out = np.empty_like(gate)
    gate_kernels(gate_name)[0](gate, up, out)
    ref = ref_fn(gate.astype(np.float64), up.astype(np.float64))
    np.testing.assert_allclose(out, ref, rtol=rtol, atol=1e-7)
    assert np.isfinite(out).all()


@pytest.mark.parametrize("gate_name", sorted(GATES))
def test_gated_forward_spans_threads_and_tails(isa, gate_name):
    ref_fn, rtol = GATES[gate_name]
    rng = np.random.default_rng(1)
    gate, up = f32(rng, 97, 1537, scale=3.0), f32(rng, 97, 1537)
    out = np.empty_like(gate)
    gate_kernels(gate_name)[0](gate, up, out)
    np.testing.assert_allclose(out, ref_fn(gate.astype(np.float64), up.astype(np.float64)),
                               rtol=rtol, atol=1e-7)


@pytest.mark.parametrize("gate_name", sorted(GATES))
@pytest.mark.parametrize("F", SIZES)
def test_gated_backward_matches_finite_differences(isa, gate_name, F):
    ref_fn = GATES[gate_name][0]
    rng = np.random.default_rng(F)
    T = 2
    gate, up, dout = f32(rng, T, F, scale=3.0), f32(rng, T, F), f32(rng, T, F)
    dgate, dup = np.full_like(gate, np.nan), np.full_like(gate, np.nan)  # overwritten
    gate_kernels(gate_name)[1](dout, gate, up, dgate, dup)
    g64, u64, d64 = (a.astype(np.float64) for a in (gate, up, dout))
    loss = lambda: (ref_fn(g64, u64) * d64).sum()
    np.testing.assert_allclose(dgate, numeric_grad(loss, g64), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dup, numeric_grad(loss, u64), rtol=1e-5, atol=1e-6)


def test_geglu_ggml_forward_reads_ggmls_float16_table(isa):
    """Every finite float16 gate (the whole table), random gates rounded on the way in, both sides of
    the +-10 cut where ggml skips the table; bit for bit the numpy recipe of ggml-cpu's kernel (which
    reproduces llama.cpp's ffn_geglu of Gemma 3 270M bit for bit, 2026-12-01)."""
    from reference_model import gelu_ggml_table

    rng = np.random.default_rng(3)
    halves = np.arange(1 << 16, dtype=np.uint16).view(np.float16)
    edges = np.array([-10.0, 10.0, np.nextafter(np.float32(-10), 0), np.nextafter(np.float32(10), 0),
                      np.nextafter(np.float32(10), 11), -1e30, 1e30], np.float32)
    gate = np.concatenate([halves[np.isfinite(halves)].astype(np.float32), edges,
                           rng.uniform(-12, 12, 4096).astype(np.float32)])
    gate = gate[: len(gate) // 61 * 61].reshape(-1, 61)  # rows of 61: vector bodies and scalar tails
    up = f32(rng, *gate.shape, scale=2.0)
    out = np.full_like(gate, np.nan)
    _core.geglu_ggml_forward(gate, up, out)
    expected = (gelu_ggml_table(gate.astype(np.float64)) * up).astype(np.float32)  # exact product, one rounding
    np.testing.assert_array_equal(out, expected)
    exact = np.empty_like(gate)
    _core.geglu_forward(gate, up, exact)
    assert np.mean(out != exact) > 0.5  # the table, not the exact GELU


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


def test_geglu_backward_saturates_without_nan(isa):
    gate = np.array([[-100.0, -30.0, 30.0, 100.0, -3e4, 3e4]], np.float32)
    up, dout = np.ones_like(gate), np.ones_like(gate)
    dgate, dup = np.empty_like(gate), np.empty_like(gate)
    _core.geglu_backward(dout, gate, up, dgate, dup)
    np.testing.assert_allclose(dgate, [[0, 0, 1, 1, 0, 1]], atol=1e-30)
    np.testing.assert_allclose(dup, geglu_ref(gate.astype(np.float64), 1.0), atol=1e-30)


@pytest.mark.parametrize("T,N", [(1, 1), (3, 31), (5, 33), (40, 896), (2, 70000)])
def test_add_bias_and_its_backward(isa, T, N):
    rng = np.random.default_rng(T * N)
    y, bias, dy = f32(rng, T, N), f32(rng, N), f32(rng, T, N)
    biased = y.copy()
    _core.add_bias(biased, bias)
    np.testing.assert_array_equal(biased, y + bias[None, :])

    dbias = np.full(N, np.nan, np.float32)
    _core.bias_backward(dy, dbias)  # overwritten
    np.testing.assert_allclose(dbias, dy.astype(np.float64).sum(axis=0), rtol=1e-5, atol=1e-5)
    acc = np.full(N, 0.5, np.float32)
    _core.bias_backward(dy, acc, accumulate=True)
    np.testing.assert_allclose(acc - 0.5, dbias, rtol=1e-5, atol=1e-5)


def test_bias_backward_matches_finite_differences(isa):
    rng = np.random.default_rng(4)
    y, bias, dy = f32(rng, 3, 33), f32(rng, 33), f32(rng, 3, 33)
    dbias = np.empty(33, np.float32)
    _core.bias_backward(dy, dbias)
    b64, y64, g64 = bias.astype(np.float64), y.astype(np.float64), dy.astype(np.float64)
    loss = lambda: ((y64 + b64[None, :]) * g64).sum()
    np.testing.assert_allclose(dbias, numeric_grad(loss, b64), rtol=1e-5, atol=1e-6)
