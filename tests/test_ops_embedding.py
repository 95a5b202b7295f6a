import numpy as np
import pytest

from ggtune import _core
from test_ops_common import SIZES, f32, numeric_grad


@pytest.mark.parametrize("C", SIZES + [576])
@pytest.mark.parametrize("T", [1, 33, 300])
def test_embedding_backward_scatter_adds(isa, C, T):
    rng = np.random.default_rng(C + T)
    V = 17  # few rows: many repeated ids
    dout, ids = f32(rng, T, C), rng.integers(0, V, T).astype(np.int32)
    table = f32(rng, V, C)
    expected = table.astype(np.float64)
    np.add.at(expected, ids, dout.astype(np.float64))
    _core.embedding_backward(dout, ids, table)  # accumulates
    np.testing.assert_allclose(table, expected, rtol=1e-5, atol=1e-5)


def test_embedding_backward_matches_finite_differences():
    rng = np.random.default_rng(3)
    V, C, T = 6, 5, 9
    table, dout = rng.standard_normal((V, C)), f32(rng, T, C)
    ids = rng.integers(0, V, T).astype(np.int32)
    loss = lambda: (table[ids] * dout).sum()  # forward = row gather
    dtable = np.zeros((V, C), np.float32)
    _core.embedding_backward(dout, ids, dtable)
    np.testing.assert_allclose(dtable, numeric_grad(loss, table), rtol=1e-6, atol=1e-6)


def test_embedding_backward_is_deterministic_across_thread_counts():
    rng = np.random.default_rng(4)
    dout, ids = f32(rng, 2000, 576), rng.integers(0, 50, 2000).astype(np.int32)
    results = []
    for n in (1, 2, 3):
        _core.set_num_threads(n)
        table = np.zeros((50, 576), np.float32)
        _core.embedding_backward(dout, ids, table)
        results.append(table)
    _core.set_num_threads(0)
    np.testing.assert_array_equal(results[0], results[1])
    np.testing.assert_array_equal(results[0], results[2])
