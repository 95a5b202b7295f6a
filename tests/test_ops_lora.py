"""LoRA product kernels (csrc/ops/lora.*) against float64 numpy, on every tier.

Tolerance: a float32 sum of K (or T) products errs by at most (K + 2) * 2^-24 * S, S the same
sum over absolute values."""

import numpy as np
import pytest

from ggtune import _core
from test_ops_common import assert_same_bits_at_thread_counts, numeric_grad

SHAPES = [(1, 1, 1), (31, 17, 4), (32, 70, 9), (33, 576, 16), (100, 33, 3)]  # (T, K, r)


def bound(S, n):
    return (n + 2) * 2.0 ** -24 * S + 1e-30


def f32(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("T,K,r", SHAPES)
def test_project_expand_outer_match_float64(isa, T, K, r):
    rng = np.random.default_rng(T * 1000 + K + r)
    x, a = f32(rng, T, K), f32(rng, r, K)
    z = np.full((T, r), np.nan, np.float32)
    _core.lora_project(x, a, z)
    x64, a64 = x.astype(np.float64), a.astype(np.float64)
    assert np.all(np.abs(z - x64 @ a64.T) <= bound(np.abs(x64) @ np.abs(a64).T, K))

    y0 = f32(rng, T, K)
    y = y0.copy()
    _core.lora_expand(z, a, y, 0.75)
    z64 = z.astype(np.float64)
    ref = y0 + 0.75 * z64 @ a64
    assert np.all(np.abs(y - ref) <= bound(np.abs(y0) + 0.75 * np.abs(z64) @ np.abs(a64), r))

    g0 = f32(rng, r, K)
    g = g0.copy()
    _core.lora_outer(z, x, g, -0.5)
    ref = g0 - 0.5 * z64.T @ x64
    assert np.all(np.abs(g - ref) <= bound(np.abs(g0) + 0.5 * np.abs(z64).T @ np.abs(x64), T))


def test_the_three_products_are_adjoint():
    """<project(x, a), w> = <x, expand(w, a)> = <a, outer(w, x)>: the backward of a
    down-projection is an up-projection (for x) and an outer product (for a)."""
    rng = np.random.default_rng(1)
    T, K, r = 40, 50, 4
    x, a, w = f32(rng, T, K), f32(rng, r, K), f32(rng, T, r)
    z = np.empty((T, r), np.float32)
    _core.lora_project(x, a, z)
    dx = np.zeros((T, K), np.float32)
    _core.lora_expand(w, a, dx)
    da = np.zeros((r, K), np.float32)
    _core.lora_outer(w, x, da)
    lhs = float(np.sum(z.astype(np.float64) * w))
    assert abs(lhs - float(np.sum(x.astype(np.float64) * dx))) < 1e-4 * np.sum(np.abs(z * w))
    assert abs(lhs - float(np.sum(a.astype(np.float64) * da))) < 1e-4 * np.sum(np.abs(z * w))


def test_outer_does_not_depend_on_thread_count():
    rng = np.random.default_rng(2)
    z, x = f32(rng, 300, 8), f32(rng, 300, 500)

    def outer():
        g = np.zeros((8, 500), np.float32)
        _core.lora_outer(z, x, g)
        return g

    assert_same_bits_at_thread_counts(outer)


@pytest.mark.parametrize("T,K,r", SHAPES + [(64, 1536, 4), (7, 40, 12)])
def test_outer_reads_bf16_bits_as_their_values(isa, T, K, r):
    rng = np.random.default_rng(T + K + r)
    bits = rng.integers(0, 1 << 16, (T, K)).astype(np.uint16) & 0xBFFF  # finite, |x| < 2
    x, z = (bits.astype(np.uint32) << 16).view(np.float32), f32(rng, T, r)
    g0 = f32(rng, r, K)
    want, got = g0.copy(), g0.copy()
    _core.lora_outer(z, x, want, 0.5)
    _core.lora_outer(z, bits, got, 0.5)
    np.testing.assert_array_equal(got, want)


def run_factor_backward(dy, z, bt, scale, dz_columns, column, db0):
    dz = np.full((dy.shape[0], dz_columns), np.nan, np.float32)
    db = db0.copy()
    _core.lora_factor_backward(dy, z, bt, scale, dz, column, db)
    return dz, db


@pytest.mark.parametrize("T,K,r", SHAPES + [(64, 1536, 4), (7, 40, 12)])
def test_factor_backward_matches_float64(isa, T, K, r):
    """dz = s dy B into its columns of a stacked dz (the others untouched), dB += s dy^T z."""
    rng = np.random.default_rng(T * 7 + K + r)
    dy, z, bt, db0 = f32(rng, T, K), f32(rng, T, r), f32(rng, r, K), f32(rng, K, r)
    dz, db = run_factor_backward(dy, z, bt, -0.75, r + 5, 3, db0)
    dy64, z64, b64 = dy.astype(np.float64), z.astype(np.float64), bt.astype(np.float64).T
    assert np.isnan(dz[:, :3]).all() and np.isnan(dz[:, 3 + r:]).all()
    assert np.all(np.abs(dz[:, 3:3 + r] + 0.75 * dy64 @ b64) <= 0.75 * bound(np.abs(dy64) @ np.abs(b64), K))
    ref = db0 - 0.75 * dy64.T @ z64
    assert np.all(np.abs(db - ref) <= bound(np.abs(db0) + 0.75 * np.abs(dy64).T @ np.abs(z64), T + 1))


def test_factor_backward_matches_finite_differences():
    """The backward of y = s z B^T: dL/dz and dL/dB of L = sum(dy * y), in float64."""
    rng = np.random.default_rng(3)
    T, K, r, s = 5, 19, 3, 1.5
    dy, z, bt = f32(rng, T, K), f32(rng, T, r), f32(rng, r, K)
    dz, db = run_factor_backward(dy, z, bt, s, r, 0, np.zeros((K, r), np.float32))
    z64, b64, dy64 = z.astype(np.float64), np.ascontiguousarray(bt.T, np.float64), dy.astype(np.float64)
    loss = lambda: float(np.sum(dy64 * (s * z64 @ b64.T)))
    np.testing.assert_allclose(dz, numeric_grad(loss, z64), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(db, numeric_grad(loss, b64), rtol=1e-4, atol=1e-5)


def test_projections_do_not_depend_on_thread_count():
    rng = np.random.default_rng(4)
    x, a, dy, z = f32(rng, 301, 500), f32(rng, 6, 500), f32(rng, 301, 500), f32(rng, 301, 6)

    def projections():
        zz = np.empty((301, 6), np.float32)
        _core.lora_project(x, a, zz)
        return (zz, *run_factor_backward(dy, z, a, 0.5, 6, 0, np.zeros((500, 6), np.float32)))

    assert_same_bits_at_thread_counts(projections)


@pytest.mark.parametrize("call, match", [
    (lambda: _core.lora_project(np.zeros((3, 8), np.float32), np.zeros((2, 7), np.float32),
                                np.zeros((3, 2), np.float32)), "a: expected shape"),
    (lambda: _core.lora_project(np.zeros((3, 8), np.float64), np.zeros((2, 8), np.float32),
                                np.zeros((3, 2), np.float32)), "x: expected dtype float32"),
    (lambda: _core.lora_expand(np.zeros((3, 2), np.float32), np.zeros((2, 8), np.float32),
                               np.zeros((3, 9), np.float32)), "y: expected shape"),
    (lambda: _core.lora_outer(np.zeros((3, 2), np.float32), np.zeros((4, 8), np.float32),
                              np.zeros((2, 8), np.float32)), "x: expected shape"),
    (lambda: _core.lora_factor_backward(np.zeros((3, 8), np.float32), np.zeros((3, 2), np.float32),
                                        np.zeros((2, 8), np.float32), 1.0, np.zeros((3, 4), np.float32), 3,
                                        np.zeros((8, 2), np.float32)), "column: expected 0 <= column <= 2"),
    (lambda: _core.lora_factor_backward(np.zeros((3, 8), np.float32), np.zeros((3, 2), np.float32),
                                        np.zeros((2, 8), np.float32), 1.0, np.zeros((3, 2), np.float32), 0,
                                        np.zeros((2, 8), np.float32)), "db: expected shape"),
])
def test_bad_arguments_are_named(call, match):
    with pytest.raises(ValueError, match=match):
        call()
