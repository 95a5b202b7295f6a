"""The int8 matrix-vector path (csrc/gemm/qgemv.h) that matmul takes at T <= 4, and matmul_many.

Reference: as in test_matmul.py, Q8(x) @ W.T in float64 with W's own codes; the tolerance is the
int8 engine's (exact integer dots, a few float32 roundings per block of 32). The matrix-vector path
and the GEMM engine multiply the same codes, so they also agree with each other within it.
"""

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q

from ggtune import _core
from test_matmul import assert_same_at_thread_counts, int8_tolerance, q8_rows, weight_bytes

CODE_TYPES = [Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0, Q.Q4_K, Q.Q5_K]


def shapes(qtype):
    """(K, N): one and many blocks; N off the 4-row passes and below one thread's share."""
    if qtype in (Q.Q4_K, Q.Q5_K):
        return [(256, 5), (768, 67)]
    return [(32, 1), (96, 7), (576, 67), (1536, 130)]


@pytest.mark.parametrize("qtype", CODE_TYPES, ids=lambda t: t.name)
def test_decode_rows_match_their_rounding_and_the_engine(isa, qtype):
    rng = np.random.default_rng(int(qtype) + 40)
    for K, N in shapes(qtype):
        w, wd = weight_bytes(rng, qtype, N, K)
        x = rng.standard_normal((8, K)).astype(np.float32)
        batch = np.empty((8, N), np.float32)  # T = 8: the GEMM engine
        _core.matmul(x, w, int(qtype), batch, precision="int8")
        xq = q8_rows(x)
        tol = int8_tolerance(np.abs(xq) @ np.abs(wd).T, K)
        for T in (1, 2, 3, 4, 5):
            out = np.full((T, N), np.nan, np.float32)
            _core.matmul(x[:T], w, int(qtype), out, precision="int8")
            assert np.all(np.abs(out - xq[:T] @ wd.T) <= tol[:T]), (isa, K, N, T)
            assert np.all(np.abs(out - batch[:T]) <= 2 * tol[:T]), (isa, K, N, T)


def test_decode_accumulates_and_propagates_nonfinite_blocks(isa):
    rng = np.random.default_rng(41)
    K, N = 96, 21
    w, wd = weight_bytes(rng, Q.Q4_1, N, K)
    x = rng.standard_normal((3, K)).astype(np.float32)
    x[0] = 0.0
    x[1, 50] = np.nan
    out0 = rng.standard_normal((3, N)).astype(np.float32)
    out = out0.copy()
    _core.matmul(x, w, int(Q.Q4_1), out, accumulate=True, precision="int8")
    np.testing.assert_array_equal(out[0], out0[0])
    assert np.all(np.isnan(out[1]))
    xq = q8_rows(x[2:])
    S = np.abs(xq) @ np.abs(wd).T + np.abs(out0[2:])
    assert np.all(np.abs(out[2:] - (out0[2:] + xq @ wd.T)) <= int8_tolerance(S, K))


def test_decode_does_not_depend_on_thread_count():
    rng = np.random.default_rng(42)
    w, _ = weight_bytes(rng, Q.Q4_1, 1000, 576)
    x = rng.standard_normal((2, 576)).astype(np.float32)
    assert_same_at_thread_counts(x, w, Q.Q4_1, 1000, precision="int8")


@pytest.mark.parametrize("T", [1, 4, 9])
def test_matmul_many_equals_one_matmul_per_weight(isa, T):
    """Same weights as q/k/v (and a float and a requantized type mixed in): the same bits as
    separate calls, at decode sizes (one region) and beyond (one GEMM each)."""
    rng = np.random.default_rng(43 + T)
    K = 768  # a multiple of Q6_K's 256
    weights = [weight_bytes(rng, qt, n, K)[0] for qt, n in ((Q.Q4_1, 576), (Q.Q4_1, 192), (Q.Q8_0, 192))]
    types = [int(Q.Q4_1), int(Q.Q4_1), int(Q.Q8_0)]
    x = rng.standard_normal((T, K)).astype(np.float32)
    for extra in ([], [(Q.F32, 33), (Q.Q6_K, 40)]):
        ws, ts = list(weights), list(types)
        for qt, n in extra:
            ws.append(weight_bytes(rng, qt, n, K)[0])
            ts.append(int(qt))
        for accumulate in (False, True):
            start = [rng.standard_normal((T, w.shape[0])).astype(np.float32) for w in ws]
            many = [s.copy() for s in start]
            _core.matmul_many(x, ws, ts, many, accumulate=accumulate)
            for w, t, s, got in zip(ws, ts, start, many):
                want = s.copy()
                _core.matmul(x, w, t, want, accumulate=accumulate)
                np.testing.assert_array_equal(got, want)


def test_matmul_many_rejects_bad_input():
    rng = np.random.default_rng(44)
    w, _ = weight_bytes(rng, Q.Q4_1, 64, 96)
    x = rng.standard_normal((1, 96)).astype(np.float32)
    out = np.empty((1, 64), np.float32)
    with pytest.raises(ValueError, match="ws: expected as many"):
        _core.matmul_many(x, [w, w], [int(Q.Q4_1)], [out, out])
    with pytest.raises(ValueError, match="outs"):
        _core.matmul_many(x, [w], [int(Q.Q4_1)], [np.empty((1, 63), np.float32)])
    with pytest.raises(ValueError, match="outs: two outputs overlap"):
        _core.matmul_many(x, [w, w], [int(Q.Q4_1)] * 2, [out, out])
    with pytest.raises(ValueError, match="outs: an output overlaps x"):
        both = np.empty((1, 160), np.float32)
        _core.matmul_many(both[:, :96], [w], [int(Q.Q4_1)], [both[:, 32:96]])
    with pytest.raises(ValueError, match="x"):
        _core.matmul_many(np.empty((1, 95), np.float32), [w], [int(Q.Q4_1)], [out])
    with pytest.raises(ValueError, match="w_type"):
        _core.matmul_many(x, [w], [999], [out])
