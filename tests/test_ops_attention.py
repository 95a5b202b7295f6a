import numpy as np
import pytest

from ggtune import _core
from test_ops_common import (assert_same_bits_at_thread_counts, attention_backward_ref, attention_mask,
                             attention_ref, f32, numeric_grad)

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


def run_forward(q, k, v, scale, first_key=None, tiles="f32"):
    out = np.full_like(q, np.nan)
    lse = np.full((q.shape[0], q.shape[2], q.shape[1]), np.nan, np.float32)
    _core.attention_forward(q, k, v, scale, out, lse, first_key=first_key, tiles=tiles)
    return out, lse


def run_backward(dout, q, k, v, out, lse, scale, first_key=None, tiles="f32"):
    dq, dk, dv = (np.full_like(a, np.nan) for a in (q, k, v))  # all overwritten
    _core.attention_backward(dout, q, k, v, out, lse, scale, dq, dk, dv, first_key=first_key, tiles=tiles)
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
    _core.set_num_threads(threads)
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


@pytest.mark.parametrize("tiles", ["f32", "bf16"])
@pytest.mark.parametrize("shape", [(1, 130, 130, 4, 1, 32), (2, 65, 200, 9, 3, 16), (8, 128, 128, 4, 1, 64)])
def test_attention_bits_do_not_depend_on_the_thread_count(isa, shape, tiles):
    """The backward's split of key blocks (and with it dq's summation order) depends on the shape
    alone; the forward's tasks are independent rows."""
    rng, q, k, v, scale = make_inputs(shape, 3)
    dout = f32(rng, *q.shape)

    def forward_and_backward():
        out, lse = run_forward(q, k, v, scale, tiles=tiles)
        return (out, lse) + run_backward(dout, q, k, v, out, lse, scale, tiles=tiles)

    assert_same_bits_at_thread_counts(forward_and_backward, counts=(1, 2, 3, 5))


@pytest.mark.parametrize("S,Skv", [(0, 0), (0, 5)])
def test_attention_with_no_queries_is_a_no_op(S, Skv):
    q = np.zeros((1, S, 2, 4), np.float32)
    kv = np.ones((1, Skv, 1, 4), np.float32)
    out, lse = run_forward(q, kv, kv, 1.0)
    dq, dk, dv = run_backward(q, q, kv, kv, out, lse, 1.0)
    assert not dk.any() and not dv.any()  # keys no query sees get zero gradient


# ---- per-query lower key bounds (first_key): sliding windows, packed samples ----

def own_positions(B, S, Skv):
    """[B, S] the key index of each query's own position."""
    return np.tile(np.arange(S) + (Skv - S), (B, 1))


def random_bounds(rng, B, S, Skv):
    return rng.integers(0, own_positions(B, S, Skv) + 1).astype(np.int32)


def window_bounds(B, S, Skv, window):
    """Gemma 3's sliding window: a query sees its `window` latest keys, itself included."""
    return np.maximum(own_positions(B, S, Skv) - window + 1, 0).astype(np.int32)


def segment_bounds(rng, B, S, Skv):
    """Packed samples: each row is cut at random into samples; a query sees its own sample."""
    bounds = np.zeros((B, S), np.int32)
    for b in range(B):
        cuts = np.sort(rng.choice(np.arange(1, Skv), size=min(3, Skv - 1), replace=False))
        starts = np.concatenate([[0], cuts])
        own = own_positions(B, S, Skv)[b]
        bounds[b] = starts[np.searchsorted(starts, own, side="right") - 1]
    return bounds


BOUNDS = {
    "random": random_bounds,
    "window5": lambda rng, B, S, Skv: window_bounds(B, S, Skv, 5),
    "window70": lambda rng, B, S, Skv: window_bounds(B, S, Skv, 70),
    "segments": segment_bounds,
    "own_key_only": lambda rng, B, S, Skv: own_positions(B, S, Skv).astype(np.int32),
}

# (B, S, Skv, Hq, Hkv, D): some of SHAPES, more tiles behind a cache, and decode (S = 1..3
# over a long cache).
BOUNDED_SHAPES = [SHAPES[0], SHAPES[4], SHAPES[6]] + [
    (2, 65, 200, 4, 2, 8), (1, 1, 300, 4, 1, 64), (2, 3, 257, 9, 3, 16)]


@pytest.mark.parametrize("kind", sorted(BOUNDS))
@pytest.mark.parametrize("shape", BOUNDED_SHAPES)
def test_attention_with_first_key_matches_float64(isa, shape, kind):
    rng, q, k, v, scale = make_inputs(shape, sum(shape) + 3)
    B, S, Skv = shape[:3]
    first_key = BOUNDS[kind](rng, B, S, Skv)
    out, lse = run_forward(q, k, v, scale, first_key)
    ref_out, ref_lse = attention_ref(q, k, v, scale, first_key)
    np.testing.assert_allclose(out, ref_out, rtol=1e-4, atol=2e-6)
    np.testing.assert_allclose(lse, ref_lse, rtol=1e-5, atol=2e-6)

    dout = f32(rng, *q.shape)
    grads = run_backward(dout, q, k, v, out, lse, scale, first_key)
    for mine, ref in zip(grads, attention_backward_ref(dout, q, k, v, scale, first_key)):
        np.testing.assert_allclose(mine, ref, rtol=1e-3, atol=2e-5)


@pytest.mark.parametrize("shape", [(1, 4, 4, 2, 1, 3), (2, 3, 6, 2, 2, 4)])
@pytest.mark.parametrize("kind", ["random", "segments"])
def test_attention_with_first_key_backward_matches_finite_differences(isa, shape, kind):
    rng, q, k, v, scale = make_inputs(shape, 11)
    first_key = BOUNDS[kind](rng, *shape[:3])
    dout = f32(rng, *q.shape)
    out, lse = run_forward(q, k, v, scale, first_key)
    dq, dk, dv = run_backward(dout, q, k, v, out, lse, scale, first_key)

    q64, k64, v64, g64 = (a.astype(np.float64) for a in (q, k, v, dout))
    loss = lambda: (attention_ref(q64, k64, v64, scale, first_key)[0] * g64).sum()
    tol = dict(rtol=1e-4, atol=2e-5)
    np.testing.assert_allclose(dq, numeric_grad(loss, q64), **tol)
    np.testing.assert_allclose(dk, numeric_grad(loss, k64), **tol)
    np.testing.assert_allclose(dv, numeric_grad(loss, v64), **tol)


@pytest.mark.parametrize("shape", [(2, 130, 130, 9, 3, 64), (1, 3, 200, 4, 2, 32)])
def test_attention_first_key_none_and_zero_are_bit_identical(isa, shape):
    rng, q, k, v, scale = make_inputs(shape, 5)
    dout = f32(rng, *q.shape)
    zero = np.zeros(shape[:2], np.int32)
    plain = run_forward(q, k, v, scale)
    bounded = run_forward(q, k, v, scale, zero)
    for a, b in zip(plain, bounded):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(run_backward(dout, q, k, v, *plain, scale),
                    run_backward(dout, q, k, v, *plain, scale, zero)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("threads", [1, 3])
def test_keys_below_first_key_are_invisible(isa, threads):
    """Changing a key or value no query may see changes no output, and it gets zero gradient;
    the result does not depend on the thread count."""
    _core.set_num_threads(threads)
    try:
        shape = (2, 100, 180, 4, 2, 16)
        rng, q, k, v, scale = make_inputs(shape, 2)
        first_key = window_bounds(2, 100, 180, 40)  # keys < 80 + 1 - 40 = 41 are unseen
        out, lse = run_forward(q, k, v, scale, first_key)
        k2, v2 = k.copy(), v.copy()
        k2[:, :41], v2[:, :41] = 50.0, -50.0
        out2, lse2 = run_forward(q, k2, v2, scale, first_key)
        np.testing.assert_array_equal(out2, out)
        np.testing.assert_array_equal(lse2, lse)
        dq, dk, dv = run_backward(f32(rng, *q.shape), q, k, v, out, lse, scale, first_key)
        assert not dk[:, :41].any() and not dv[:, :41].any()
        assert dk[:, 41:].any(axis=(0, 2, 3)).all() and dv[:, 41:].any(axis=(0, 2, 3)).all()
    finally:
        _core.set_num_threads(0)


SCRATCH_PROBE = """
import numpy as np
from ggtune import _core
from ggtune.memory import peak_rss
_core.set_num_threads({threads})
B, S, Hq, Hkv, D = {shape}
rng = np.random.default_rng(0)
q, dout, out = (rng.standard_normal((B, S, Hq, D), dtype=np.float32) for _ in range(3))
k, v = (rng.standard_normal((B, S, Hkv, D), dtype=np.float32) for _ in range(2))
lse = np.zeros((B, Hq, S), np.float32)
dq, dk, dv = np.empty_like(q), np.empty_like(k), np.empty_like(v)
for a in (dq, dk, dv, lse):
    a.fill(0.0)  # touch every page before the baseline
before = peak_rss()
_core.attention_backward(dout, q, k, v, out, lse, 0.125, dq, dk, dv, tiles="{tiles}")
print(peak_rss() - before, _core.attention_backward_scratch_bytes(B, S, S, Hq, Hkv, D, tiles="{tiles}"))
"""


@pytest.mark.parametrize("tiles", ["f32", "bf16"])
@pytest.mark.parametrize("threads", [1, 2])
def test_backward_scratch_bytes_is_what_the_backward_allocates(threads, tiles):
    """The memory plan sizes the attention backward with attention_backward_scratch_bytes: the
    peak RSS the backward adds (a fresh process, inputs already resident) must match it."""
    import subprocess
    import sys

    code = SCRATCH_PROBE.format(threads=threads, shape=(8, 512, 8, 2, 64), tiles=tiles)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    grown, planned = (int(n) for n in done.stdout.split())
    assert planned > 0
    assert 0.85 * planned <= grown <= 1.15 * planned + (1 << 20), (grown, planned)


# ---- bf16 tiles: operands rounded to bfloat16, float32 accumulation (avx512; f32 tiles elsewhere) ----

def bf16_round(x):
    """x rounded to the nearest bfloat16 (ties to even), by gguf-py's converter, as float32."""
    from gguf import GGMLQuantizationType, quants

    bits = quants.quantize(np.ascontiguousarray(x, np.float32), GGMLQuantizationType.BF16).view(np.uint16)
    return (bits.astype(np.uint32) << 16).view(np.float32).reshape(np.shape(x))


def bf16_inputs(shape, seed):
    """make_inputs with q, k, v and a dout already bfloat16 values (the tiles' rounding of them is exact)."""
    rng, q, k, v, scale = make_inputs(shape, seed)
    return rng, bf16_round(q), bf16_round(k), bf16_round(v), bf16_round(f32(rng, *q.shape)), scale


U_BF16 = 2.0 ** -8  # bfloat16's unit roundoff: 8 significant bits, ties to even


def bf16_error_bounds(dout, q, k, v, out, scale, first_key=None):
    """Per-element bounds on what bf16 tiles may differ from the float64 attention of bf16-valued inputs,
    each rounding's contribution summed in absolute value (u = 2^-8):
      out: P rounded:                           u sum_j P_ij |v_j|
      dS:  dS^T rounded, and delta = dO.out from the forward's out:  u |dS_ij| + u P_ij c_i,
           c_i = sum_d |dO_id| (|out_id| + max|v|)
      dV:  P^T rounded:                         u sum_i P_ij |dO_i|
      dK:  scale sum_i (u |dS_ij| + dS error) |q_i|,  dQ: scale sum_j (...) |k_j|
    Returns (out, dq, dk, dv) bounds in the arrays' shapes."""
    B, S, Hq, D = q.shape
    group = Hq // k.shape[2]
    q64, g64 = np.asarray(q, np.float64), np.asarray(dout, np.float64)
    kk, vv = (np.repeat(np.asarray(a, np.float64), group, axis=2) for a in (k, v))
    s = np.einsum("bihd,bjhd->bhij", q64, kk) * scale
    s = np.where(attention_mask(B, S, k.shape[1], first_key)[:, None], -np.inf, s)
    p = np.exp(s - s.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)
    dp = np.einsum("bihd,bjhd->bhij", g64, vv)
    ds = p * (dp - (p * dp).sum(axis=-1, keepdims=True))
    c = np.einsum("bihd->bhi", np.abs(g64) * (np.abs(out) + np.abs(v).max()))
    ds_err = U_BF16 * (2 * np.abs(ds) + p * c[..., None])
    fold = lambda a: a.reshape(a.shape[0], a.shape[1], -1, group, D).sum(axis=3)  # query heads -> KV head
    return (U_BF16 * np.einsum("bhij,bjhd->bihd", p, np.abs(vv)),
            scale * np.einsum("bhij,bjhd->bihd", ds_err, np.abs(kk)),
            fold(scale * np.einsum("bhij,bihd->bjhd", ds_err, np.abs(q64))),
            fold(U_BF16 * np.einsum("bhij,bihd->bjhd", p, np.abs(g64))))


def assert_within(mine, ref, bound, name):
    """|mine - ref| <= 2 bound + float32 noise (1e-5 of the largest |ref|)."""
    excess = np.abs(mine - ref) - (2 * bound + 1e-5 * np.abs(ref).max())
    assert excess.max() <= 0, f"{name}: exceeds its bf16 bound by {excess.max():.2e}"


def native_bf16():
    return _core.active_isa() == "avx512"


@pytest.mark.parametrize("shape", SHAPES)
def test_bf16_tiles_round_the_operands_and_nothing_else_of_the_inputs(isa, shape):
    """The tiles see q, k, v (and dout in its products) only rounded to bf16: inputs rounded beforehand
    give the same bits. Elsewhere than avx512 a bf16 request runs the float32 tiles, bit for bit."""
    rng, q, k, v, scale = make_inputs(shape, sum(shape) + 5)
    dout = bf16_round(f32(rng, *q.shape))
    out, lse = run_forward(q, k, v, scale, tiles="bf16")
    grads = run_backward(dout, q, k, v, out, lse, scale, tiles="bf16")
    if native_bf16():
        rq, rk, rv = bf16_round(q), bf16_round(k), bf16_round(v)
        for a, b in zip((out, lse), run_forward(rq, rk, rv, scale, tiles="bf16")):
            np.testing.assert_array_equal(a, b)
        for a, b in zip(grads, run_backward(dout, rq, rk, rv, out, lse, scale, tiles="bf16")):
            np.testing.assert_array_equal(a, b)
    else:
        for a, b in zip((out, lse), run_forward(q, k, v, scale)):
            np.testing.assert_array_equal(a, b)
        for a, b in zip(grads, run_backward(dout, q, k, v, out, lse, scale)):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("shape", SHAPES + [(8, 128, 128, 9, 3, 64), (1, 130, 130, 4, 1, 256)])
def test_bf16_tiles_within_their_rounding_bounds(isa, shape, threads):
    """bf16 tiles against float64 attention of the same (bf16-valued) inputs, within the bounds
    bf16_error_bounds derives from the roundings; the same bits at any thread count."""
    _core.set_num_threads(threads)
    try:
        rng, q, k, v, dout, scale = bf16_inputs(shape, sum(shape) + 7)
        out, lse = run_forward(q, k, v, scale, tiles="bf16")
        grads = run_backward(dout, q, k, v, out, lse, scale, tiles="bf16")
        again = run_backward(dout, q, k, v, out, lse, scale, tiles="bf16")
    finally:
        _core.set_num_threads(0)
    ref_out, ref_lse = attention_ref(q, k, v, scale)
    bounds = bf16_error_bounds(dout, q, k, v, out, scale)
    assert_within(out, ref_out, bounds[0], "out")
    np.testing.assert_allclose(lse, ref_lse, rtol=1e-5, atol=2e-6)  # bf16 q, k: exact products
    for name, mine, ref, bound, rerun in zip(("dq", "dk", "dv"), grads,
                                             attention_backward_ref(dout, q, k, v, scale), bounds[1:], again):
        assert_within(mine, ref, bound, name)
        np.testing.assert_array_equal(mine, rerun)
    if native_bf16() and shape[-1] > 1:  # the bounds are not loose enough to pass float32-sized errors off
        assert np.abs(out - ref_out).max() > 1e-5 * np.abs(ref_out).max()


@pytest.mark.parametrize("kind", sorted(BOUNDS))
@pytest.mark.parametrize("shape", BOUNDED_SHAPES)
def test_bf16_tiles_with_first_key_within_their_rounding_bounds(isa, shape, kind):
    rng, q, k, v, dout, scale = bf16_inputs(shape, sum(shape) + 9)
    first_key = BOUNDS[kind](rng, *shape[:3])
    out, lse = run_forward(q, k, v, scale, first_key, tiles="bf16")
    grads = run_backward(dout, q, k, v, out, lse, scale, first_key, tiles="bf16")
    bounds = bf16_error_bounds(dout, q, k, v, out, scale, first_key)
    ref_out, ref_lse = attention_ref(q, k, v, scale, first_key)
    assert_within(out, ref_out, bounds[0], "out")
    np.testing.assert_allclose(lse, ref_lse, rtol=1e-5, atol=2e-6)
    for name, mine, ref, bound in zip(("dq", "dk", "dv"), grads,
                                      attention_backward_ref(dout, q, k, v, scale, first_key), bounds[1:]):
        assert_within(mine, ref, bound, name)


@pytest.mark.parametrize("shape, kind", [((1, 3, 3, 2, 2, 3), None), ((2, 4, 6, 3, 1, 5), None),
                                         ((1, 5, 5, 4, 2, 2), None), ((2, 3, 6, 2, 2, 4), "segments"),
                                         ((1, 4, 4, 2, 1, 3), "random")])
def test_bf16_tiles_backward_matches_finite_differences(isa, shape, kind):
    """The gradient bf16 tiles compute is the float64 function's, checked by central differences,
    within the bf16 bounds (plus the differences' own 2e-5)."""
    rng, q, k, v, dout, scale = bf16_inputs(shape, 13)
    first_key = BOUNDS[kind](rng, *shape[:3]) if kind else None
    out, lse = run_forward(q, k, v, scale, first_key, tiles="bf16")
    grads = run_backward(dout, q, k, v, out, lse, scale, first_key, tiles="bf16")
    q64, k64, v64, g64 = (a.astype(np.float64) for a in (q, k, v, dout))
    loss = lambda: (attention_ref(q64, k64, v64, scale, first_key)[0] * g64).sum()
    bounds = bf16_error_bounds(dout, q, k, v, out, scale, first_key)[1:]
    for name, mine, x, bound in zip(("dq", "dk", "dv"), grads, (q64, k64, v64), bounds):
        assert_within(mine, numeric_grad(loss, x), bound + 1e-5, name)


@pytest.mark.parametrize("shape", [(8, 128, 128, 9, 3, 64), (8, 128, 128, 4, 1, 256), (1, 33, 100, 2, 1, 16)])
def test_bf16_scratch_is_within_the_f32_plan(shape):
    """memory.py plans the float32 figure: for even head dims it bounds the bf16 tiles' scratch."""
    f32_bytes, bf16_bytes = (_core.attention_backward_scratch_bytes(*shape, tiles=t) for t in ("f32", "bf16"))
    assert 0 < bf16_bytes <= f32_bytes
    if native_bf16():
        assert bf16_bytes != f32_bytes  # the bf16 layout is the one sized


def test_attention_rejects_unknown_tiles():
    q = np.zeros((1, 2, 1, 4), np.float32)
    with pytest.raises(ValueError, match="tiles: expected 'f32' or 'bf16', got 'f16'"):
        run_forward(q, q, q, 1.0, tiles="f16")
    with pytest.raises(ValueError, match="tiles: expected 'f32' or 'bf16'"):
        _core.attention_backward_scratch_bytes(1, 2, 2, 1, 1, 4, tiles="int8")


def test_precisions_pick_bf16_tiles_only_where_the_qkv_products_round():
    from types import SimpleNamespace

    from ggtune.block import attention_tiles

    def model(*types):  # one layer per ggml type of its q/k/v weights
        weight = lambda t: SimpleNamespace(ggml_type=t)
        return SimpleNamespace(layers=[SimpleNamespace(matrices={k: weight(t) for k in ("attn_q", "attn_k", "attn_v")})
                                       for t in types])

    q4_1, q8_0, f32_, f16_ = 3, 8, 0, 1
    assert attention_tiles("auto", model(q4_1, q8_0)) == "bf16"  # auto multiplies these in int8
    assert attention_tiles("auto", model(f32_)) == "f32"  # ... and float weights exactly
    assert attention_tiles("auto", model(q4_1, f16_)) == "f32"
    for precision in ("int8", "bf16"):
        assert attention_tiles(precision, model(f32_)) == "bf16"
    for precision in ("f32", "ggml"):
        assert attention_tiles(precision, model(q4_1)) == "f32"


@pytest.mark.parametrize("tiles", ["f32", "bf16"])
@pytest.mark.parametrize("shape", [(2, 33, 100, 9, 3, 17), (1, 130, 130, 2, 1, 64)])
def test_compact_out_is_written_by_the_forward_and_read_by_the_backward(isa, shape, tiles):
    """out_bf16: the reference rounding of out, from the same pass; the backward reading those bits
    gives the float32 backward's results on their values, bit for bit."""
    from test_ops_convert import bf16_reference

    rng, q, k, v, scale = make_inputs(shape, 11)
    out, lse = run_forward(q, k, v, scale, tiles=tiles)
    bits = np.zeros(out.shape, np.uint16)
    again, lse_again = np.empty_like(out), np.empty_like(lse)
    _core.attention_forward(q, k, v, scale, again, lse_again, tiles=tiles, out_bf16=bits)
    np.testing.assert_array_equal(again, out)
    np.testing.assert_array_equal(bits.reshape(-1), bf16_reference(out.reshape(-1)))
    dout = f32(rng, *out.shape)
    widened = (bits.astype(np.uint32) << 16).view(np.float32)
    for mine, want in zip(run_backward(dout, q, k, v, bits, lse, scale, tiles=tiles),
                          run_backward(dout, q, k, v, widened, lse, scale, tiles=tiles)):
        np.testing.assert_array_equal(mine, want)
    with pytest.raises(ValueError, match="out_bf16: expected shape"):
        _core.attention_forward(q, k, v, scale, again, lse_again, out_bf16=bits[:, :1].copy())
