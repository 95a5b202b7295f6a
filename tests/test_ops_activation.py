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


def bf16_widened(bits):
    return (bits.astype(np.uint32) << 16).view(np.float32)


@pytest.mark.parametrize("gate_name", sorted(GATES))
def test_gated_forward_writes_the_bf16_copies_in_the_same_pass(isa, gate_name):
    """The compact copies a training layer keeps: the reference's rounding of gate and up (ties,
    denormals, NaN and infinities among them) on vector bodies, tails and several threads' ranges;
    out the same bits as without them."""
    from test_ops_convert import bf16_reference
    from test_quant import float_edge_cases

    rng = np.random.default_rng(5)
    gate, up = f32(rng, 97, 1537, scale=3.0), f32(rng, 97, 1537)
    edges = float_edge_cases()[: gate.size // 2]
    gate.reshape(-1)[: edges.size] = edges
    up.reshape(-1)[-edges.size:] = edges
    forward = gate_kernels(gate_name)[0]
    plain, out = np.empty_like(gate), np.empty_like(gate)
    gate_bits, up_bits = np.zeros(gate.shape, np.uint16), np.zeros(up.shape, np.uint16)
    forward(gate, up, plain)
    forward(gate, up, out, gate_bits, up_bits)
    np.testing.assert_array_equal(out, plain)
    np.testing.assert_array_equal(gate_bits, bf16_reference(gate.reshape(-1)).reshape(gate.shape))
    np.testing.assert_array_equal(up_bits, bf16_reference(up.reshape(-1)).reshape(up.shape))


@pytest.mark.parametrize("gate_name", sorted(GATES))
def test_gated_backward_reads_bf16_bits_and_recomputes_act(isa, gate_name):
    """From bfloat16 bits, the float32 kernel's results on their exact values; act the forward's
    product, bit for bit (kept and recomputed layers must agree); dgate, dup unchanged by asking."""
    rng = np.random.default_rng(6)
    bits = [rng.integers(0, 1 << 16, (97, 1537)).astype(np.uint16) for _ in range(2)]
    for b in bits:  # finite values of a sane range: exponents of +-2^-30 .. 2^2
        b[...] = (b & 0x807F) | (((b >> 7) & 0x1F) + 97) << 7
    gate_bits, up_bits = bits
    gate, up, dout = bf16_widened(gate_bits), bf16_widened(up_bits), f32(rng, 97, 1537)
    forward, backward = gate_kernels(gate_name)
    want_act = np.empty_like(gate)
    forward(gate, up, want_act)
    want_dgate, want_dup = np.empty_like(gate), np.empty_like(gate)
    backward(dout, gate, up, want_dgate, want_dup)
    for g, u in ((gate_bits, up_bits), (gate, up)):
        dgate, dup, act = (np.full_like(gate, np.nan) for _ in range(3))
        backward(dout, g, u, dgate, dup, act)
        np.testing.assert_array_equal(dgate, want_dgate)
        np.testing.assert_array_equal(dup, want_dup)
        np.testing.assert_array_equal(act, want_act)
    dgate, dup = np.empty_like(gate), np.empty_like(gate)
    backward(dout, gate_bits, up_bits, dgate, dup)
    np.testing.assert_array_equal(dgate, want_dgate)


@pytest.mark.parametrize("call, match", [
    (lambda: _core.swiglu_backward(*[np.zeros((2, 3), np.float32)] * 1, np.zeros((2, 3), np.uint16),
                                   np.zeros((2, 3), np.float32), *[np.zeros((2, 3), np.float32)] * 2),
     "up: expected dtype uint16"),
    (lambda: _core.swiglu_backward(*[np.zeros((2, 3), np.float32)] * 5, act=np.zeros((2, 4), np.float32)),
     "act: expected shape"),
    (lambda: _core.swiglu_forward(*[np.zeros((2, 3), np.float32)] * 3, np.zeros((2, 3), np.uint16)),
     "up_bf16: expected an array when the other copy is given"),
    (lambda: _core.geglu_forward(*[np.zeros((2, 3), np.float32)] * 3, np.zeros((2, 3), np.float32),
                                 np.zeros((2, 3), np.uint16)), "gate_bf16: expected dtype uint16"),
    (lambda: _core.add(*[np.zeros(4, np.float32)] * 3, out_bf16=np.zeros(5, np.uint16)), "out_bf16: expected shape"),
])
def test_compact_copies_reject_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize("shape", [(33,), (5, 31), (3, 2, 100_003)])
def test_add_writes_the_bf16_copy_of_its_sum(isa, shape):
    from test_ops_convert import bf16_reference

    rng = np.random.default_rng(len(shape))
    a, b = f32(rng, *shape), f32(rng, *shape)
    out, bits = np.empty_like(a), np.zeros(shape, np.uint16)
    _core.add(a, b, out, bits)
    np.testing.assert_array_equal(out, a + b)
    np.testing.assert_array_equal(bits.reshape(-1), bf16_reference((a + b).reshape(-1)))
