"""Matmul with a frozen GGUF weight (both directions) and plain float32 GEMM, on every tier.

Reference: float64 `x @ dequantize(W).T`. Tolerances are bounds on the rounding error in
units of S = |x| @ |W|.T (elementwise absolute values, float64), so they hold for any data:
  f32 : K float32 roundings of the running sum, each at most 2^-24 relative:
        |err| <= (K + 2) * 2^-24 * S
  bf16: both operands rounded to bfloat16: 8 significant bits, so round-to-nearest errs by
        at most u = 2^-8 relative (2^-9 is not a bound: it is exceeded on random data),
        products exact in float32, then float32 accumulation:
        |err| <= (2 * 2^-8 + 2^-16 + (K + 2) * 2^-24) * S
"""

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as Q
from gguf import quants

from ggtune import _core
from test_ops_common import assert_same_bits_at_thread_counts

TYPES = [Q.F32, Q.F16, Q.BF16, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0,
         Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K]
# gguf.quants can quantize these; the K-quants are built from random blocks instead.
QUANTIZABLE = {Q.F32, Q.F16, Q.BF16, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0}
# Byte offsets of the float16 scales in each K-quant block (ggml-common.h).
K_QUANT_HALVES = {Q.Q2_K: [80, 82], Q.Q3_K: [108], Q.Q4_K: [0, 2], Q.Q5_K: [0, 2], Q.Q6_K: [208]}

TOKENS = [1, 31, 32, 33, 100]


def tolerance(S, K, precision):
    accumulation = (K + 2) * 2.0 ** -24
    if precision == "f32":
        return accumulation * S
    return (2 * 2.0 ** -8 + 2.0 ** -16 + accumulation) * S


def weight_bytes(rng, qtype, n, k):
    """W as GGUF bytes uint8 [n, row_bytes] and its float64 dequantization [n, k]."""
    block, size = GGML_QUANT_SIZES[qtype]
    if qtype in QUANTIZABLE:
        values = rng.standard_normal((n, k)).astype(np.float32)
        data = values.view(np.uint8) if qtype == Q.F32 else quants.quantize(values, qtype)
    else:
        data = rng.integers(0, 256, size=(n, k // block, size), dtype=np.uint8)
        for offset in K_QUANT_HALVES[qtype]:
            scales = rng.uniform(0.01, 0.1, size=(n, k // block)).astype(np.float16)
            data[:, :, offset:offset + 2] = scales.view(np.uint8).reshape(n, k // block, 2)
        data = data.reshape(n, -1)
    data = np.ascontiguousarray(data.view(np.uint8).reshape(n, -1))
    return data, quants.dequantize(data, qtype).astype(np.float64).reshape(n, k)


def shapes(qtype):
    """(K, N) pairs: K over one and several K blocks of every tier (kc is 256 on scalar, 512 on
    avx2, 800 on avx512), N off the strip widths (8, 16, 32)."""
    block = GGML_QUANT_SIZES[qtype][0]
    if block == 256:
        return [(256, 33), (768, 70), (1792, 20)]
    return [(96, 1), (96, 70), (576, 33), (1600, 20)]


@pytest.mark.parametrize("precision", ["f32", "bf16"])
@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_matmul_both_directions_match_float64(isa, qtype, precision):
    rng = np.random.default_rng(int(qtype) * 7 + len(precision))
    for K, N in shapes(qtype):
        w, wd = weight_bytes(rng, qtype, N, K)
        for T in TOKENS:
            x = rng.standard_normal((T, K)).astype(np.float32)
            out = np.full((T, N), np.nan, np.float32)
            _core.matmul(x, w, int(qtype), out, precision=precision)
            ref = x.astype(np.float64) @ wd.T
            tol = tolerance(np.abs(x.astype(np.float64)) @ np.abs(wd).T, K, precision)
            assert np.all(np.abs(out - ref) <= tol), (isa, T, K, N, np.abs(out - ref).max())

            dy = rng.standard_normal((T, N)).astype(np.float32)
            dx = np.full((T, K), np.nan, np.float32)
            _core.matmul_backward(dy, w, int(qtype), dx, precision=precision)
            ref = dy.astype(np.float64) @ wd
            tol = tolerance(np.abs(dy.astype(np.float64)) @ np.abs(wd), N, precision)
            assert np.all(np.abs(dx - ref) <= tol), (isa, T, K, N, np.abs(dx - ref).max())


@pytest.mark.parametrize("qtype", [Q.F32, Q.Q4_1, Q.Q6_K], ids=lambda t: t.name)
def test_accumulate_adds_to_the_output(isa, qtype):
    rng = np.random.default_rng(3)
    K, N, T = GGML_QUANT_SIZES[qtype][0] * 3, 40, 33
    w, wd = weight_bytes(rng, qtype, N, K)
    x = rng.standard_normal((T, K)).astype(np.float32)
    dy = rng.standard_normal((T, N)).astype(np.float32)
    out0 = rng.standard_normal((T, N)).astype(np.float32)
    dx0 = rng.standard_normal((T, K)).astype(np.float32)
    out, dx = out0.copy(), dx0.copy()
    _core.matmul(x, w, int(qtype), out, accumulate=True, precision="f32")
    _core.matmul_backward(dy, w, int(qtype), dx, accumulate=True, precision="f32")
    S = np.abs(x.astype(np.float64)) @ np.abs(wd).T + np.abs(out0)
    assert np.all(np.abs(out - (out0 + x.astype(np.float64) @ wd.T)) <= tolerance(S, K, "f32"))
    S = np.abs(dy.astype(np.float64)) @ np.abs(wd) + np.abs(dx0)
    assert np.all(np.abs(dx - (dx0 + dy.astype(np.float64) @ wd)) <= tolerance(S, N, "f32"))


@pytest.mark.parametrize("qtype", [Q.F32, Q.Q4_0, Q.Q4_K], ids=lambda t: t.name)
def test_backward_matches_central_differences_of_forward(isa, qtype):
    """dx = dy @ W is the gradient of L(x) = sum(dy * matmul(x, W)). L is linear in x, so a
    central difference with a large step has no truncation error: what is left is the float32
    rounding of the two forward passes, at most 2 * f32 bound / (2 * eps) per coordinate."""
    rng = np.random.default_rng(8)
    block = GGML_QUANT_SIZES[qtype][0]
    K, N, T, eps = (block * 2 if block > 1 else 70), 33, 3, 0.5
    w, wd = weight_bytes(rng, qtype, N, K)
    x = rng.standard_normal((T, K)).astype(np.float32)
    dy = rng.standard_normal((T, N)).astype(np.float32)

    def loss(xv):
        out = np.empty((T, N), np.float32)
        _core.matmul(xv, w, int(qtype), out, precision="f32")
        return float(np.sum(dy.astype(np.float64) * out))

    dx = np.empty((T, K), np.float32)
    _core.matmul_backward(dy, w, int(qtype), dx, precision="f32")
    S = float(np.sum(np.abs(dy.astype(np.float64)) @ np.abs(wd) * (np.abs(x) + eps)))
    tol = 2 * (K + 2) * 2.0 ** -24 * S / (2 * eps)
    for t, k in [(0, 0), (1, K // 2), (2, K - 1), (2, 5)]:
        plus, minus = x.copy(), x.copy()
        plus[t, k] += eps
        minus[t, k] -= eps
        fd = (loss(plus) - loss(minus)) / (2 * eps)
        assert abs(fd - dx[t, k]) <= tol + 2 * (K + 2) * 2.0 ** -24 * abs(dx[t, k]), (t, k, fd, dx[t, k])


def test_auto_precision_is_exact_f32_for_f32_weights():
    rng = np.random.default_rng(4)
    w = rng.standard_normal((50, 64)).astype(np.float32)
    x = rng.standard_normal((20, 64)).astype(np.float32)
    auto, f32 = np.empty((20, 50), np.float32), np.empty((20, 50), np.float32)
    _core.matmul(x, w.view(np.uint8), int(Q.F32), auto)
    _core.matmul(x, w.view(np.uint8), int(Q.F32), f32, precision="f32")
    np.testing.assert_array_equal(auto, f32)


def assert_same_at_thread_counts(x, w, ggml_type, n_out, **matmul_options):
    """_core.matmul(x, w) gives the same bits at 1, 2 and 3 threads."""
    def product():
        out = np.empty((x.shape[0], n_out), np.float32)
        _core.matmul(x, w, int(ggml_type), out, **matmul_options)
        return out

    assert_same_bits_at_thread_counts(product)


@pytest.mark.parametrize("precision", ["f32", "bf16", "int8"])
def test_results_do_not_depend_on_thread_count(precision):
    rng = np.random.default_rng(5)
    w, _ = weight_bytes(rng, Q.Q8_0, 300, 576)
    x = rng.standard_normal((100, 576)).astype(np.float32)
    assert_same_at_thread_counts(x, w, Q.Q8_0, 300, precision=precision)


# ---- int8: Q8 activations, integer codes (csrc/gemm/qgemm.h) ----

def ceil_div(a, b):
    return -(a // -b)


def panel_depth(K, align, max_panel=1024):
    """The int8 engine's K panel depth: as few panels as fit max_panel, cut equally and rounded
    up to `align`."""
    return min(K, ceil_div(ceil_div(K, ceil_div(K, max_panel)), align) * align)


def symmetric_codes(v, code_max, axis):
    """v as codes round-half-even(v * (code_max / amax)), amax = max |v| along `axis`, all in
    float32: (codes, scale = amax / code_max)."""
    amax = np.abs(v).max(axis=axis, keepdims=True)
    inv = np.where(amax > 0, np.float32(code_max) / np.where(amax > 0, amax, 1), 0).astype(np.float32)
    return np.rint(v * inv), amax / np.float32(code_max)


def q8_blocks(x):
    """x [T, K] rounded as the int8 engine rounds activations: per 32 values along K,
    d = amax / 127 and code = round-half-even(x * (127 / amax)), all in float32. Returns the
    codes [T, blocks, 32] and d [T, blocks, 1]."""
    T, K = x.shape
    padded = np.zeros((T, -(-K // 32) * 32), np.float32)
    padded[:, :K] = x
    return symmetric_codes(padded.reshape(T, -1, 32), 127, axis=2)


def q8_rows(x):
    codes, d = q8_blocks(x)
    return (codes * d).reshape(x.shape[0], -1)[:, :x.shape[1]].astype(np.float64)


# Types with offsets of their own (w = d * code + c, any c): the forward sums their offsets in
# integers (csrc/gemm/qgemm.h).
AFFINE = {Q.Q4_1, Q.Q5_1, Q.Q4_K, Q.Q5_K}


def block_offsets(data, qtype, n):
    """c [n, blocks of 32] of an affine type's GGUF bytes, as the engine unpacks them."""
    blocks = data.reshape(n, -1, GGML_QUANT_SIZES[qtype][1])
    if qtype in (Q.Q4_1, Q.Q5_1):
        return blocks[:, :, 2:4].copy().view(np.float16).astype(np.float32).reshape(n, -1)
    dmin = blocks[:, :, 2:4].copy().view(np.float16).astype(np.float32)
    _, mins = quants.Q4_K.get_scale_min(blocks[:, :, 4:16].reshape(-1, 12))
    return -(dmin * mins.reshape(n, -1, 8).astype(np.float32)).reshape(n, -1)


def forward_offsets(x, c, qtype, max_panel=1024):
    """The affine forward's offset term [T, n] and its scale (for the tolerance): per K panel
    (cut as the engine cuts it: equal panels rounded up to whole blocks and block pairs), the
    int16 codes of sa = d * sum(codes) per row of x (one scale per row) against those of c
    (one scale per column and panel)."""
    codes, d = q8_blocks(x)
    sa = (d[:, :, 0] * codes.sum(axis=2).astype(np.float32)).astype(np.float32)
    s16, s_scale = symmetric_codes(sa, 32767, axis=1)
    K, blocks = x.shape[1], c.shape[1]
    kb = panel_depth(K, int(np.lcm(GGML_QUANT_SIZES[qtype][0], 64)), max_panel) // 32
    term, scale = np.zeros((x.shape[0], c.shape[0])), np.zeros((x.shape[0], c.shape[0]))
    for b0 in range(0, blocks, kb):
        c16, c_scale = symmetric_codes(c[:, b0:b0 + kb], 2047, axis=1)
        both = s_scale.astype(np.float64) @ c_scale.T.astype(np.float64)
        term += both * (s16[:, b0:b0 + kb] @ c16.T)
        scale += both * (np.abs(s16[:, b0:b0 + kb]) @ np.abs(c16).T)
    return term, scale


def q8_columns(w, max_panel=1024):
    """W [rows, cols] rounded as the backward requantizes it: one scale per column over each
    panel of rows (the int8 engine's K panels: as few as fit max_panel rows, cut equally and
    rounded up to 32), d = amax / 127 and code = round-half-even(x * (127 / amax))."""
    kc = panel_depth(w.shape[0], 32, max_panel)
    out = np.empty(w.shape, np.float64)
    for r0 in range(0, w.shape[0], kc):
        codes, d = symmetric_codes(w[r0:r0 + kc].astype(np.float32), 127, axis=0)
        out[r0:r0 + kc] = codes * d
    return out


HAS_U8_CODES = {Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0, Q.Q4_K, Q.Q5_K}


def int8_forward_reference(x, w, wd, qtype):
    """The int8 forward Q8(x) @ W.T and its scale S for the tolerance. W's own codes (exact) or W
    requantized along K; affine types' offsets as the engine sums them."""
    xq = q8_rows(x)
    if qtype not in HAS_U8_CODES:
        w_fwd = q8_rows(wd.astype(np.float32))
        return xq @ w_fwd.T, np.abs(xq) @ np.abs(w_fwd).T
    if qtype not in AFFINE:
        return xq @ wd.T, np.abs(xq) @ np.abs(wd).T
    c = block_offsets(w, qtype, wd.shape[0])
    codes_part = wd - np.repeat(c, 32, axis=1)[:, :wd.shape[1]]
    term, term_scale = forward_offsets(x, c, qtype)
    return xq @ codes_part.T + term, np.abs(xq) @ np.abs(codes_part).T + term_scale


def int8_tolerance(S, K):
    """Integer dot products are exact; what rounds is the float32 scaling and summing of one
    block at a time (a few roundings per block of 32, offsets included): bounded generously by
    64 (K + 2) float32 units of S."""
    return 64 * (K + 2) * 2.0 ** -24 * S + 1e-30


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_int8_matmul_both_directions_match_their_rounding(isa, qtype):
    """Forward: Q8(x) @ W.T with W's own codes (or W requantized along K); backward:
    Q8(dy) @ W requantized with one scale per column and panel."""
    rng = np.random.default_rng(int(qtype) * 5 + 1)
    # N = 1100: the backward's depth over two panels, each with its own column scales
    for K, N in shapes(qtype) + [(GGML_QUANT_SIZES[qtype][0] * 2, 45), (GGML_QUANT_SIZES[qtype][0], 1100)]:
        w, wd = weight_bytes(rng, qtype, N, K)
        w_bwd = q8_columns(wd)  # [N, K], requantized down its columns
        for T in TOKENS:
            x = rng.standard_normal((T, K)).astype(np.float32)
            out = np.full((T, N), np.nan, np.float32)
            _core.matmul(x, w, int(qtype), out, precision="int8")
            ref, S = int8_forward_reference(x, w, wd, qtype)
            tol = int8_tolerance(S, K)
            assert np.all(np.abs(out - ref) <= tol), (isa, T, K, N, np.abs(out - ref).max())

            dy = rng.standard_normal((T, N)).astype(np.float32)
            dx = np.full((T, K), np.nan, np.float32)
            _core.matmul_backward(dy, w, int(qtype), dx, precision="int8")
            dyq = q8_rows(dy)
            ref = dyq @ w_bwd
            tol = int8_tolerance(np.abs(dyq) @ np.abs(w_bwd), N)
            assert np.all(np.abs(dx - ref) <= tol), (isa, T, K, N, np.abs(dx - ref).max())


def test_int8_is_close_to_exact_products():
    """What int8 rounding costs on random data: well under 1% of the output's scale."""
    rng = np.random.default_rng(9)
    w, wd = weight_bytes(rng, Q.Q4_1, 200, 576)
    x = rng.standard_normal((64, 576)).astype(np.float32)
    out = np.empty((64, 200), np.float32)
    _core.matmul(x, w, int(Q.Q4_1), out, precision="int8")
    exact = x.astype(np.float64) @ wd.T
    assert np.abs(out - exact).max() < 0.01 * np.abs(exact).max()


@pytest.mark.parametrize("K", [96, 1024])  # 1024: the quantizer's sixteen-block path and its fallback
def test_int8_accumulates_and_handles_zero_and_nonfinite_blocks(K):
    rng = np.random.default_rng(10)
    N, T = 40, 5
    w, wd = weight_bytes(rng, Q.Q8_0, N, K)
    x = rng.standard_normal((T, K)).astype(np.float32)
    x[0] = 0.0             # an all-zero row: its blocks have amax 0
    x[1, 40] = np.inf      # a block with inf: its row comes out NaN, the others do not
    out0 = rng.standard_normal((T, N)).astype(np.float32)
    out = out0.copy()
    _core.matmul(x, w, int(Q.Q8_0), out, accumulate=True, precision="int8")
    np.testing.assert_array_equal(out[0], out0[0])
    assert np.all(np.isnan(out[1]))
    xq = q8_rows(x[2:])
    ref = out0[2:] + xq @ wd.T
    S = np.abs(xq) @ np.abs(wd).T + np.abs(out0[2:])
    assert np.all(np.abs(out[2:] - ref) <= int8_tolerance(S, K))


@pytest.mark.parametrize("bad", [np.inf, np.nan])
def test_int8_forward_keeps_a_nonfinite_offset_to_its_column(isa, bad):
    """An affine weight's offset codes share one scale per column (weight row) and panel: an inf or
    NaN offset (m of a Q4_1 block) poisons that row's output, which it reaches anyway, and no other."""
    rng = np.random.default_rng(13)
    N, K, T = 40, 128, 7
    w, wd = weight_bytes(rng, Q.Q4_1, N, K)
    w = w.copy()
    w.reshape(N, -1, 20)[5, 1, 2:4] = np.array([bad], np.float16).view(np.uint8)
    x = rng.standard_normal((T, K)).astype(np.float32)
    out = np.empty((T, N), np.float32)
    _core.matmul(x, w, int(Q.Q4_1), out, precision="int8")
    assert not np.any(np.isfinite(out[:, 5]))
    rest = np.delete(np.arange(N), 5)
    ref, S = int8_forward_reference(x, np.ascontiguousarray(w[rest]), wd[rest], Q.Q4_1)
    assert np.all(np.abs(out[:, rest] - ref) <= int8_tolerance(S, K))


def test_int8_backward_keeps_a_nonfinite_weight_to_its_column(isa):
    """The backward's column scales span a whole panel: an inf weight poisons its own column of
    dx (which it reaches anyway), and no other."""
    rng = np.random.default_rng(12)
    N, K, T = 70, 96, 9
    wd = rng.standard_normal((N, K)).astype(np.float32)
    wd[5, 3] = np.inf
    dy = rng.standard_normal((T, N)).astype(np.float32)
    dx = np.empty((T, K), np.float32)
    _core.matmul_backward(dy, wd.view(np.uint8), int(Q.F32), dx, precision="int8")
    assert np.all(np.isnan(dx[:, 3]))
    rest = np.delete(np.arange(K), 3)
    dyq, w_bwd = q8_rows(dy), q8_columns(wd[:, rest])
    tol = int8_tolerance(np.abs(dyq) @ np.abs(w_bwd), N)
    assert np.all(np.abs(dx[:, rest] - dyq @ w_bwd) <= tol)


def test_auto_precision_is_int8_for_quantized_weights_on_the_avx512_tier_only(isa):
    rng = np.random.default_rng(11)
    w, _ = weight_bytes(rng, Q.Q4_1, 64, 96)
    x = rng.standard_normal((33, 96)).astype(np.float32)
    auto, want = np.empty((33, 64), np.float32), np.empty((33, 64), np.float32)
    _core.matmul(x, w, int(Q.Q4_1), auto)
    _core.matmul(x, w, int(Q.Q4_1), want, precision="int8" if isa == "avx512" else "f32")
    np.testing.assert_array_equal(auto, want)


GEMM_SHAPES = [(1, 1, 1), (31, 33, 32), (33, 70, 100), (100, 31, 300),
               (40, 50, 1700), (1024, 4, 576), (4, 576, 1024), (1024, 576, 4)]  # (M, N, K): LoRA ranks too


@pytest.mark.parametrize("trans_b", [False, True])
@pytest.mark.parametrize("trans_a", [False, True])
def test_gemm_all_transpositions(isa, trans_a, trans_b):
    rng = np.random.default_rng(6)
    for M, N, K in GEMM_SHAPES:
        a = rng.standard_normal((K, M) if trans_a else (M, K)).astype(np.float32)
        b = rng.standard_normal((N, K) if trans_b else (K, N)).astype(np.float32)
        opa = (a.T if trans_a else a).astype(np.float64)
        opb = (b.T if trans_b else b).astype(np.float64)
        out0 = rng.standard_normal((M, N)).astype(np.float32)
        for alpha, beta in [(1.0, 0.0), (0.5, 2.0)]:
            out = out0.copy() if beta else np.full((M, N), np.nan, np.float32)
            _core.gemm(a, b, out, trans_a=trans_a, trans_b=trans_b, alpha=alpha, beta=beta)
            ref = alpha * opa @ opb + beta * out0.astype(np.float64)
            S = abs(alpha) * np.abs(opa) @ np.abs(opb) + abs(beta) * np.abs(out0)
            assert np.all(np.abs(out - ref) <= tolerance(S, K, "f32") + 1e-30), (M, N, K, alpha)


def test_gemm_with_empty_reduction_scales_the_output():
    out = np.ones((3, 4), np.float32)
    _core.gemm(np.zeros((3, 0), np.float32), np.zeros((0, 4), np.float32), out, beta=0.5)
    np.testing.assert_array_equal(out, np.full((3, 4), 0.5, np.float32))


# ---- bad input: a ValueError that names the argument ----

def _valid():
    w = np.zeros((8, 34 * 2), np.uint8)  # Q8_0 (34-byte blocks of 32), K = 64
    return dict(x=np.zeros((3, 64), np.float32), w=w, w_type=int(Q.Q8_0),
                out=np.zeros((3, 8), np.float32))


@pytest.mark.parametrize("arg, bad, match", [
    ("x", np.zeros((3, 64), np.float64), "x: expected dtype float32"),
    ("x", np.zeros((64, 3), np.float32).T, "x: expected a C-contiguous"),
    ("x", np.zeros((3, 48), np.float32), "x: expected K .* block size 32"),
    ("w", np.zeros((8, 70), np.uint8), "w: expected rows of 68 bytes"),
    ("w", np.zeros((8, 68), np.int8), "w: expected dtype uint8"),
    ("w_type", 99, "w_type: unsupported GGML type 99"),
    ("out", np.zeros((3, 9), np.float32), r"out: expected shape \(3, 8\)"),
    ("out", np.zeros((3, 8), np.float16), "out: expected dtype float32"),
])
def test_matmul_rejects_bad_input(arg, bad, match):
    args = _valid()
    args[arg] = bad
    with pytest.raises(ValueError, match=match):
        _core.matmul(args["x"], args["w"], args["w_type"], args["out"])


def test_matmul_rejects_bad_precision():
    args = _valid()
    with pytest.raises(ValueError, match="precision: expected 'auto', 'f32', 'bf16' or 'int8'"):
        _core.matmul(args["x"], args["w"], args["w_type"], args["out"], precision="fp8")


def test_matmul_backward_rejects_bad_input():
    args = _valid()
    w, wt = args["w"], args["w_type"]
    dx = np.zeros((3, 64), np.float32)
    with pytest.raises(ValueError, match=r"dy: expected shape \(3, 8\)"):
        _core.matmul_backward(np.zeros((3, 7), np.float32), w, wt, dx)
    with pytest.raises(ValueError, match="dx: expected K .* block size 32"):
        _core.matmul_backward(np.zeros((3, 8), np.float32), w, wt, np.zeros((3, 40), np.float32))
    with pytest.raises(ValueError, match="dx: expected a writable array"):
        ro = dx.copy()
        ro.flags.writeable = False
        _core.matmul_backward(np.zeros((3, 8), np.float32), w, wt, ro)


def test_gemm_rejects_bad_input():
    a, b, out = np.zeros((3, 5), np.float32), np.zeros((5, 4), np.float32), np.zeros((3, 4), np.float32)
    with pytest.raises(ValueError, match="b: expected 5"):
        _core.gemm(a, np.zeros((6, 4), np.float32), out)
    with pytest.raises(ValueError, match=r"out: expected shape \(3, 4\)"):
        _core.gemm(a, b, np.zeros((4, 3), np.float32))
    with pytest.raises(ValueError, match="a: expected a C-contiguous"):
        _core.gemm(np.zeros((5, 3), np.float32).T, b, out)
    with pytest.raises(ValueError, match="a: expected 2 dimensions"):
        _core.gemm(np.zeros(15, np.float32), b, out)
