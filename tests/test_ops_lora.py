"""LoRA product kernels (csrc/ops/lora.*) against float64 numpy, on every tier.

Tolerance: a float32 sum of K (or T) products errs by at most (K + 2) * 2^-24 * S, S the same
sum over absolute values."""

import numpy as np
import pytest

from ggtune import _core

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
    outs = []
    try:
        for threads in (1, 2, 3):
            _core.set_num_threads(threads)
            g = np.zeros((8, 500), np.float32)
            _core.lora_outer(z, x, g)
            outs.append(g)
    finally:
        _core.set_num_threads(0)
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_array_equal(outs[0], outs[2])


@pytest.mark.parametrize("call, match", [
    (lambda: _core.lora_project(np.zeros((3, 8), np.float32), np.zeros((2, 7), np.float32),
                                np.zeros((3, 2), np.float32)), "a: expected shape"),
    (lambda: _core.lora_project(np.zeros((3, 8), np.float64), np.zeros((2, 8), np.float32),
                                np.zeros((3, 2), np.float32)), "x: expected dtype float32"),
    (lambda: _core.lora_expand(np.zeros((3, 2), np.float32), np.zeros((2, 8), np.float32),
                               np.zeros((3, 9), np.float32)), "y: expected shape"),
    (lambda: _core.lora_outer(np.zeros((3, 2), np.float32), np.zeros((4, 8), np.float32),
                              np.zeros((2, 8), np.float32)), "x: expected shape"),
])
def test_bad_arguments_are_named(call, match):
    with pytest.raises(ValueError, match=match):
        call()
