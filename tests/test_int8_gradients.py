"""LoRA gradients through the int8 engine (the default on AVX512-VNNI) against float64 finite
differences of the exact model (tests/reference_model.py), on tiny models.

Tolerance, from the Q8 rounding the int8 engine applies (csrc/gemm/qgemm.h, tests/test_matmul.py):
rounding a block of 32 values to Q8 moves each by at most half a step, amax / 254, so a product
with one rounded operand errs by at most 1/254 of its scale, and one with two (the backward dY·W,
dY rounded and W requantized) by 2/254. A LoRA gradient of an n-layer model passes through at most
4 sequential products per layer (q/k/v, o, gate/up, down) plus the head, once forward and once
backward: 3 * (4 n + 1) roundings. Attention runs on bf16 tiles under int8 (block.attention_tiles):
each of its operands is rounded to bf16, at most 2^-8 of itself (no more than a Q8 rounding, 1/254 of
the block's largest), and a layer chains two attention products forward (QK^T, PV) and two backward
(dO V^T, then dS K or dS^T Q or P^T dO), each with two rounded operands: 8 n more. R = 3 (4 n + 1) +
8 n roundings add up (to first order) to an error of at most R/254 of the gradient's scale, the largest |gradient| of its tensor (or a thousandth of the whole
model's, for tensors whose gradients vanish). An RMS norm's backward, dx = rstd (g - x̂ mean(x̂ g)),
can double an error of g (two terms, each as large as g), and the norm adapters' own gradients
are such sums: the tolerance is 2 R / 254 = 34% of the scale for the 2-layer models here. That is
loose for one element; the gradient as a whole must also point the exact way (cosine >= 0.995
against the float32 engine's gradients, which tests/test_graph.py holds to finite differences at
2e-3). Measured (seed 2): worst element 16% of its scale (a norm adapter) with float32 attention,
22% with bf16 tiles (blk.1.attn_norm on Q4_1); cosines with float32 attention 0.9987 (Q8_0), 0.9991
(Q4_1), 0.99999 (Q4_K).

This is the default training path: with any precision but f32 the layers also keep their compact
activations (bfloat16, block.COMPACT), which adds at most test_graph's BF16_ROUNDING (16 · 2^-8) of
the scale; the bound below is the sum of both.
"""

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T

from ggtune.graph import Graph, Grads
from test_graph import ALL_RANKS, BF16_ROUNDING, central_difference, make_case, reference_loss

N_LAYER = 2  # make_case's tiny models
ROUNDING = 2 * (3 * (4 * N_LAYER + 1) + 8 * N_LAYER) / 254 + BF16_ROUNDING


def gradients(weights, lora, inputs, targets, precision):
    grads = Grads.like(lora)
    loss_sum, n_kept = Graph(weights, lora, precision=precision).loss_and_grads(
        inputs, targets, grads, checkpointing=True)
    return loss_sum / n_kept, {(name, half): getattr(grads.pairs[name], half).copy()
                               for name in lora.pairs for half in ("a", "b")}


@pytest.mark.parametrize("weight_type", [T.Q4_1, T.Q8_0, T.Q4_K], ids=lambda t: t.name)
def test_int8_lora_gradients_match_finite_differences(tmp_path, weight_type):
    path, weights, lora, inputs, targets = make_case(tmp_path, weight_type, n_head_kv=2, tied=True,
                                                     ranks=ALL_RANKS, seed=2)
    loss8, g8 = gradients(weights, lora, inputs, targets, "int8")
    loss32, g32 = gradients(weights, lora, inputs, targets, "f32")
    exact = reference_loss(path, lora, inputs, targets)
    # The loss itself: one forward, 4 n + 1 products with one rounding each.
    assert loss8 == pytest.approx(exact, rel=(4 * N_LAYER + 1) / 254)

    flat8 = np.concatenate([g.ravel() for g in g8.values()])
    flat32 = np.concatenate([g.ravel() for g in g32.values()])
    cosine = flat8 @ flat32 / (np.linalg.norm(flat8) * np.linalg.norm(flat32))
    assert cosine >= 0.995, cosine

    floor = 1e-3 * np.abs(flat8).max()
    rng = np.random.default_rng(11)
    eps = 1e-3
    for (name, half), grad in g8.items():
        param = getattr(lora.pairs[name], half)
        scale = max(np.abs(grad).max(), floor)
        for flat in rng.choice(param.size, size=min(2, param.size), replace=False):
            idx = np.unravel_index(flat, param.shape)
            numeric = central_difference(path, lora, param, idx, inputs, targets, eps)
            # the rounding bound, plus test_graph's float32 tolerance for the difference itself
            assert abs(grad[idx] - numeric) <= ROUNDING * scale + 2e-3 * abs(numeric) + 2e-5, (
                name, half, idx, grad[idx], numeric, scale)
