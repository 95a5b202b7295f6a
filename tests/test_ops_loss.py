import numpy as np
import pytest

from ggtune import _core
from test_ops_common import SIZES, cross_entropy_ref, f32, numeric_grad


def targets_with_ignored(rng, T, V):
    t = rng.integers(0, V, T).astype(np.int32)
    t[::3] = -100  # ignored rows (every third, including row 0)
    return t


@pytest.mark.parametrize("T", [1, 7])
@pytest.mark.parametrize("V", SIZES + [49152])
def test_cross_entropy_forward_matches_float64(isa, T, V):
    rng = np.random.default_rng(V + T)
    logits = f32(rng, T, V, scale=5.0)
    targets = targets_with_ignored(rng, T, V)
    if T > 1:
        targets[1] = V - 1
    loss = np.full(T, np.nan, np.float32)
    _core.cross_entropy_forward(logits, targets, loss)
    ref = cross_entropy_ref(logits, targets)
    np.testing.assert_allclose(loss, ref, rtol=1e-5, atol=2e-6)
    assert (loss[targets < 0] == 0).all()


def test_cross_entropy_is_stable_for_large_logits(isa):
    logits = np.array([[1000.0, 0.0, -1000.0], [-5e4, 5e4, 3.0]], np.float32)
    targets = np.array([1, 1], np.int32)
    loss = np.empty(2, np.float32)
    _core.cross_entropy_forward(logits, targets, loss)
    np.testing.assert_allclose(loss, [1000.0, 0.0], atol=1e-4)


@pytest.mark.parametrize("V", SIZES + [100])
def test_cross_entropy_backward_matches_finite_differences(isa, V):
    rng = np.random.default_rng(V)
    T = 4
    logits = f32(rng, T, V, scale=2.0)
    targets = targets_with_ignored(rng, T, V)
    scale = 1.0 / max(1, int((targets >= 0).sum()))
    dlogits = np.full_like(logits, np.nan)  # overwritten, ignored rows included
    _core.cross_entropy_backward(logits, targets, scale, dlogits)

    x64 = logits.astype(np.float64)
    loss = lambda: scale * cross_entropy_ref(x64, targets).sum()
    np.testing.assert_allclose(dlogits, numeric_grad(loss, x64), rtol=1e-4, atol=1e-6)
    assert (dlogits[targets < 0] == 0).all()

    inplace = logits.copy()  # dlogits may be the logits buffer: chunked loss without a copy
    _core.cross_entropy_backward(inplace, targets, scale, inplace)
    np.testing.assert_array_equal(inplace, dlogits)


@pytest.mark.parametrize("V", SIZES + [1000])
def test_cross_entropy_backward_gives_the_forwards_loss(isa, V):
    """Training takes the loss from the backward's pass: the forward's bits, ignored rows 0, also
    when the gradient overwrites the logits."""
    rng = np.random.default_rng(V + 1)
    logits = f32(rng, 9, V, scale=3.0)
    targets = targets_with_ignored(rng, 9, V)
    want = np.empty(9, np.float32)
    _core.cross_entropy_forward(logits, targets, want)
    grad, got = np.empty_like(logits), np.full(9, np.nan, np.float32)
    _core.cross_entropy_backward(logits, targets, 0.25, grad, got)
    np.testing.assert_array_equal(got, want)
    inplace, got_inplace = logits.copy(), np.full(9, np.nan, np.float32)
    _core.cross_entropy_backward(inplace, targets, 0.25, inplace, loss=got_inplace)
    np.testing.assert_array_equal(got_inplace, want)
    np.testing.assert_array_equal(inplace, grad)
    with pytest.raises(ValueError, match="loss: expected shape"):
        _core.cross_entropy_backward(logits, targets, 0.25, grad, np.empty(8, np.float32))


def test_cross_entropy_chunked_over_rows_matches_whole(isa):
    rng = np.random.default_rng(5)
    logits = f32(rng, 64, 1000)
    targets = targets_with_ignored(rng, 64, 1000)
    whole = np.empty_like(logits)
    _core.cross_entropy_backward(logits, targets, 0.5, whole)
    chunked = logits.copy()
    for r in range(0, 64, 10):
        rows = chunked[r:r + 10]
        _core.cross_entropy_backward(rows, targets[r:r + 10], 0.5, rows)
    np.testing.assert_array_equal(chunked, whole)
