"""The LoRA up-projection fused into the matmul (`_core.matmul` / `matmul_backward` with
lora=(z, b, scale)): the product the engine computes anyway, plus scale * z @ b added to each
output tile, on every tier, at both engines (f32; int8 in registers), at odd shapes: T off the
6-row tile and at the matrix-vector sizes (T <= 4), N off the 32-column strip, K over one and two
K panels, ranks 1..64.

Reference: the same call without lora (the engine's product, whose rounding test_matmul.py bounds)
plus float64 scale * z @ b. What is left is the float32 rounding of r multiply-adds into each
output: at most (r + 2) * 2^-24 * S, S = |product| + |scale| |z| @ |b|."""

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q

from ggtune import _core
from test_matmul import assert_same_at_thread_counts, weight_bytes

SHAPES = [(96, 70), (576, 33), (1600, 20)]  # (K, N)
TOKENS = [1, 4, 7, 33, 100]
RANKS = [1, 4, 17, 64]


def check_update(out, product, z, b, scale, r):
    z64, b64 = z.astype(np.float64), b.astype(np.float64)
    ref = product + scale * z64 @ b64
    S = np.abs(product) + abs(scale) * np.abs(z64) @ np.abs(b64)
    assert np.all(np.abs(out - ref) <= (r + 2) * 2.0 ** -24 * S + 1e-30), np.abs(out - ref).max()


@pytest.mark.parametrize("precision", ["f32", "int8"])
@pytest.mark.parametrize("qtype", [Q.Q4_1, Q.Q8_0, Q.F32], ids=lambda t: t.name)
def test_lora_adds_its_up_projection_to_both_directions(isa, qtype, precision):
    rng = np.random.default_rng(int(qtype) * 3 + len(precision))
    for K, N in SHAPES:
        w, _ = weight_bytes(rng, qtype, N, K)
        for T, r in zip(TOKENS, RANKS + RANKS[:1]):
            x = rng.standard_normal((T, K)).astype(np.float32)
            z = rng.standard_normal((T, r)).astype(np.float32)
            b_out, b_in = (rng.standard_normal((r, n)).astype(np.float32) for n in (N, K))
            for accumulate in (False, True):
                start = rng.standard_normal((T, N)).astype(np.float32)
                product, out = start.copy(), start.copy()
                _core.matmul(x, w, int(qtype), product, accumulate=accumulate, precision=precision)
                _core.matmul(x, w, int(qtype), out, accumulate=accumulate, precision=precision,
                             lora=(z, b_out, 0.75))
                check_update(out, product, z, b_out, 0.75, r)

                dy = rng.standard_normal((T, N)).astype(np.float32)
                start = rng.standard_normal((T, K)).astype(np.float32)
                product, dx = start.copy(), start.copy()
                _core.matmul_backward(dy, w, int(qtype), product, accumulate=accumulate, precision=precision)
                _core.matmul_backward(dy, w, int(qtype), dx, accumulate=accumulate, precision=precision,
                                      lora=(z, b_in, -1.5))
                check_update(dx, product, z, b_in, -1.5, r)


@pytest.mark.parametrize("precision", ["f32", "int8"])
def test_fused_equals_the_product_then_lora_expand(isa, precision):
    """The fused term and lora_expand after the product: the same sum, rank by rank."""
    rng = np.random.default_rng(5)
    T, K, N, r = 61, 576, 200, 8
    w, _ = weight_bytes(rng, Q.Q4_1, N, K)
    x = rng.standard_normal((T, K)).astype(np.float32)
    z, b = rng.standard_normal((T, r)).astype(np.float32), rng.standard_normal((r, N)).astype(np.float32)
    separate, fused = np.empty((T, N), np.float32), np.empty((T, N), np.float32)
    _core.matmul(x, w, int(Q.Q4_1), separate, precision=precision)
    _core.lora_expand(z, b, separate, 0.5)
    _core.matmul(x, w, int(Q.Q4_1), fused, precision=precision, lora=(z, b, 0.5))
    np.testing.assert_allclose(fused, separate, rtol=0, atol=(r + 2) * 2.0 ** -24 * np.abs(separate).max())


@pytest.mark.parametrize("precision", ["f32", "int8"])
def test_fused_results_do_not_depend_on_thread_count(precision):
    rng = np.random.default_rng(6)
    T, K, N, r = 100, 1600, 70, 4
    w, _ = weight_bytes(rng, Q.Q4_1, N, K)
    x = rng.standard_normal((T, K)).astype(np.float32)
    z, b = rng.standard_normal((T, r)).astype(np.float32), rng.standard_normal((r, N)).astype(np.float32)
    assert_same_at_thread_counts(x, w, Q.Q4_1, N, precision=precision, lora=(z, b, 1.0))


def _bad_lora(lora, out=None):
    rng = np.random.default_rng(7)
    w, _ = weight_bytes(rng, Q.Q4_1, 40, 64)
    x = rng.standard_normal((5, 64)).astype(np.float32)
    _core.matmul(x, w, int(Q.Q4_1), out if out is not None else np.empty((5, 40), np.float32), lora=lora)


Z, B = np.zeros((5, 4), np.float32), np.zeros((4, 40), np.float32)
OUT = np.zeros((5, 40), np.float32)


@pytest.mark.parametrize("lora, out, match", [
    ((Z, B), None, "lora: expected a tuple"),
    ([Z, B, 1.0], None, "lora: expected a tuple"),
    ((np.zeros((6, 4), np.float32), B, 1.0), None, "lora z: expected shape"),
    ((Z, np.zeros((4, 41), np.float32), 1.0), None, "lora b: expected shape"),
    ((Z, np.zeros((3, 40), np.float32), 1.0), None, "lora b: expected shape"),
    ((Z.astype(np.float64), B, 1.0), None, "lora z"),
    ((Z, B.T.copy().T, 1.0), None, "lora b"),
    ((Z, OUT[:4], 1.0), OUT, "lora: z or b overlaps the output"),
    ((Z, B, "half"), None, "lora: expected \\(z, b, scale\\)"),
])
def test_matmul_rejects_bad_lora(lora, out, match):
    with pytest.raises(ValueError, match=match):
        _bad_lora(lora, out)


@pytest.mark.parametrize("rank", [1, 3])
def test_lora_linears_forward_adds_the_scaled_adapter_and_leaves_b_alone(rank):
    """graph.LoraLinears folds s into Bᵀ for the fused term: y = x·Wᵀ + s·(x·Aᵀ)·Bᵀ, and B itself
    is not scaled (at rank 1 B.T is contiguous, the same memory as B)."""
    from types import SimpleNamespace

    from ggtune.graph import LoraLinears
    from ggtune.lora import LoraSet

    rng = np.random.default_rng(8 + rank)
    T, K, N = 37, 96, 70
    w, wd = weight_bytes(rng, Q.Q8_0, N, K)
    lora = LoraSet(alpha=2.5)
    lora.add("w", rng.standard_normal((rank, K)), rng.standard_normal((N, rank)))
    b0 = lora.pairs["w"].b.copy()
    weight = SimpleNamespace(data=w, ggml_type=int(Q.Q8_0), n_out=N)
    x = rng.standard_normal((T, K)).astype(np.float32)
    (y, z), = LoraLinears(lora, _core, "f32").forward(x, [(weight, "w")])
    np.testing.assert_array_equal(lora.pairs["w"].b, b0)
    x64, a64, b64 = x.astype(np.float64), lora.pairs["w"].a.astype(np.float64), b0.astype(np.float64)
    s = lora.scale("w")
    ref = x64 @ wd.T + s * (x64 @ a64.T) @ b64.T
    S = np.abs(x64) @ np.abs(wd).T + s * (np.abs(x64) @ np.abs(a64).T) @ np.abs(b64).T
    assert np.all(np.abs(y - ref) <= (K + rank + 4) * 2.0 ** -23 * S)
