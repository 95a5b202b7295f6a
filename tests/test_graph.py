"""The LoRA training graph against float64 finite differences of the numpy reference model."""

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T

from ggtune.block import BF16
from ggtune.gguf_io import read_model_gguf
from ggtune.graph import Graph, Grads
from ggtune.lora import init_lora
from ggtune.names import ALL_KINDS
from reference_model import ReferenceModel
from tiny_models import write_tiny_llama

BATCH, SEQ = 2, 9


def reference_loss(path, lora, inputs, targets) -> float:
    """Mean CE over unmasked targets of the float64 model with W + s·B·A for every pair (a norm's
    (1, C) delta broadcasts over its vector; a tied head shares token_embd's delta)."""
    ref = ReferenceModel(path, lora=[({name: (pair.a, pair.b)}, pair.scale) for name, pair in lora.pairs.items()])
    total, count = 0.0, 0
    for row in range(inputs.shape[0]):
        logits = ref.logits(inputs[row])
        m = logits.max(axis=-1, keepdims=True)
        lse = (m + np.log(np.exp(logits - m).sum(axis=-1, keepdims=True)))[:, 0]
        for i, t in enumerate(targets[row]):
            if t >= 0:
                total += lse[i] - logits[i, t]
                count += 1
    return total / count


def central_difference(path, lora, param, idx, inputs, targets, eps: float) -> float:
    """d(reference loss)/d param[idx] by a float64 central difference (param is restored)."""
    saved = param[idx]
    param[idx] = saved + eps
    up = reference_loss(path, lora, inputs, targets)
    param[idx] = saved - eps
    down = reference_loss(path, lora, inputs, targets)
    param[idx] = saved
    return (up - down) / (2 * eps)


def make_case(tmp_path, weight_type, n_head_kv, tied, ranks, seed=0):
    width = 256 if weight_type >= T.Q2_K and weight_type <= T.Q6_K else 64  # K-quant rows: 256-blocks
    path = write_tiny_llama(tmp_path / "m.gguf", weight_type=weight_type, n_head_kv=n_head_kv, tied=tied,
                            n_embd=width, n_ff=max(96, width), n_head=4, n_layer=2, seed=seed)
    weights = read_model_gguf(path)
    lora = init_lora(weights, ranks, alpha=3.0, seed=seed)
    rng = np.random.default_rng(seed + 1)
    for pair in lora.pairs.values():  # B = 0 would make every dA zero: use a trained-looking B
        pair.b[:] = 0.2 * rng.standard_normal(pair.b.shape)
    V = weights.hparams.n_vocab
    inputs = rng.integers(0, V, size=(BATCH, SEQ)).astype(np.int32)
    targets = rng.integers(0, V, size=(BATCH, SEQ)).astype(np.int32)
    targets[0, 2] = targets[1, 5] = -1  # masked positions carry no loss
    return path, weights, lora, inputs, targets


def finite_difference_check(path, weights, lora, inputs, targets, *, checkpointing, samples=3, eps=1e-3):
    graph = Graph(weights, lora, precision="f32")
    grads = Grads.like(lora)
    loss_sum, n_kept = graph.loss_and_grads(inputs, targets, grads, checkpointing=checkpointing)
    assert loss_sum / n_kept == pytest.approx(reference_loss(path, lora, inputs, targets), rel=1e-4)
    rng = np.random.default_rng(7)
    for name, pair in lora.pairs.items():
        for half in ("a", "b"):
            param, grad = getattr(pair, half), getattr(grads.pairs[name], half)
            for flat in rng.choice(param.size, size=min(samples, param.size), replace=False):
                idx = np.unravel_index(flat, param.shape)
                numeric = central_difference(path, lora, param, idx, inputs, targets, eps)
                # float32 kernels against a float64 central difference: 2e-3 relative, with an
                # absolute floor for gradients that are nearly zero.
                assert grad[idx] == pytest.approx(numeric, rel=2e-3, abs=2e-5), (name, half, idx)


ALL_RANKS = dict.fromkeys(ALL_KINDS, 2)


@pytest.mark.parametrize("weight_type", [T.F32, T.F16, T.Q4_0, T.Q4_1, T.Q8_0, T.Q4_K])
def test_every_lora_kind_gradient_untied_gqa(tmp_path, weight_type):
    case = make_case(tmp_path, weight_type, n_head_kv=2, tied=False, ranks=ALL_RANKS)
    finite_difference_check(*case, checkpointing=True)


@pytest.mark.parametrize("tied,n_head_kv", [(True, 4), (True, 2), (False, 4)])
def test_every_lora_kind_gradient_tied_and_plain_attention(tmp_path, tied, n_head_kv):
    case = make_case(tmp_path, T.Q8_0, n_head_kv=n_head_kv, tied=tied, ranks=ALL_RANKS, seed=3)
    finite_difference_check(*case, checkpointing=False)


def test_mixed_ranks_within_shared_input_groups(tmp_path):
    """q/k/v and gate/up stack their adapters into one product over the shared input: different
    ranks, and members without an adapter, must come apart again in the gradients."""
    ranks = {"attn_q": 3, "attn_v": 1, "ffn_up": 4, "ffn_down": 2}
    case = make_case(tmp_path, T.Q4_1, n_head_kv=2, tied=True, ranks=ranks, seed=5)
    finite_difference_check(*case, checkpointing=True)


@pytest.mark.parametrize("kept", [np.float32, BF16], ids=["f32", "bf16"])
def test_checkpointing_gives_the_same_gradients(tmp_path, kept):
    """A recomputed layer rounds its compact arrays as a kept one stores them: equal, bit for bit."""
    path, weights, lora, inputs, targets = make_case(tmp_path, T.Q4_1, 2, False, ALL_RANKS)
    results = []
    # full recompute, none, and the last layer kept (make_case has 2 layers)
    for checkpointing, keep in ((True, 0), (False, 0), (True, 1)):
        grads = Grads.like(lora)
        loss, _ = Graph(weights, lora, precision="f32", kept=np.dtype(kept)).loss_and_grads(
            inputs, targets, grads, checkpointing=checkpointing, keep_layers=keep)
        results.append((loss, grads.arrays()))
    for loss, arrays in results[1:]:
        assert loss == results[0][0]
        for name, g in results[0][1].items():
            np.testing.assert_array_equal(g, arrays[name])


# Compact kept activations (block.COMPACT as bfloat16, the default but with --precision f32): each
# stored element moves by at most u = 2^-8 of itself. A LoRA gradient of a 2-layer model reads the
# rounded arrays through at most 4 sequential steps per layer (gate/up, x1 into h2 and the ffn norm,
# att, v), 8 in all, and an RMS norm's backward can double an error (two terms, each as large as
# its input): to first order at most 16 u = 6.3% of the gradient's scale, its tensor's largest
# |gradient|. Measured (these cases): worst element 1.2-1.7% of its scale, the whole gradient
# 0.4-0.5% from the float32-kept one.
BF16_ROUNDING = 16 * 2.0 ** -8


def compact_and_f32_gradients(weights, lora, inputs, targets):
    out = []
    for kept, keep in ((BF16, 2), (np.float32, 0)):  # every layer kept compact; every one recomputed in f32
        grads = Grads.like(lora)
        Graph(weights, lora, precision="f32", kept=np.dtype(kept)).loss_and_grads(inputs, targets, grads,
                                                                                  keep_layers=keep)
        out.append(grads)
    return out


@pytest.mark.parametrize("weight_type", [T.Q4_1, T.Q8_0], ids=lambda t: t.name)
def test_compact_kept_gradients_match_finite_differences(tmp_path, weight_type):
    path, weights, lora, inputs, targets = make_case(tmp_path, weight_type, n_head_kv=2, tied=False,
                                                     ranks=ALL_RANKS, seed=3)
    compact, _ = compact_and_f32_gradients(weights, lora, inputs, targets)
    rng = np.random.default_rng(13)
    for name, pair in lora.pairs.items():
        for half in ("a", "b"):
            param, grad = getattr(pair, half), getattr(compact.pairs[name], half)
            scale = np.abs(grad).max()
            for flat in rng.choice(param.size, size=min(2, param.size), replace=False):
                idx = np.unravel_index(flat, param.shape)
                numeric = central_difference(path, lora, param, idx, inputs, targets, 1e-3)
                # the bf16 bound plus test_graph's float32 tolerance (2e-3 relative, 2e-5 absolute)
                assert abs(grad[idx] - numeric) <= BF16_ROUNDING * scale + 2e-3 * abs(numeric) + 2e-5, \
                    (name, half, idx, grad[idx], numeric, scale)


def test_compact_kept_gradients_equal_float32_recomputed_ones(tmp_path):
    path, weights, lora, inputs, targets = make_case(tmp_path, T.Q4_1, n_head_kv=2, tied=False, ranks=ALL_RANKS,
                                                     seed=2)
    compact, exact = compact_and_f32_gradients(weights, lora, inputs, targets)
    got, want = compact.arrays(), exact.arrays()
    for name, g in want.items():
        assert np.abs(got[name] - g).max() <= BF16_ROUNDING * np.abs(g).max(), name
    flat_got = np.concatenate([g.ravel() for g in got.values()])
    flat_want = np.concatenate([g.ravel() for g in want.values()])
    assert 0 < np.linalg.norm(flat_got - flat_want) <= BF16_ROUNDING / 4 * np.linalg.norm(flat_want)


def test_untrained_adapter_changes_nothing(tmp_path):
    path, weights, _, inputs, targets = make_case(tmp_path, T.Q8_0, 2, True, ALL_RANKS)
    fresh = init_lora(weights, ALL_RANKS, alpha=3.0, seed=5)
    assert all(not p.b.any() for p in fresh.pairs.values())
    empty = init_lora(weights, {}, alpha=3.0, seed=5)
    with_lora, _ = Graph(weights, fresh, precision="f32").loss_and_grads(inputs, targets, None)
    without, _ = Graph(weights, empty, precision="f32").loss_and_grads(inputs, targets, None)
    assert with_lora == without


def test_loss_without_grads_matches_the_model_cross_entropy(tmp_path):
    from ggtune.model import load_model

    path, weights, _, _, _ = make_case(tmp_path, T.Q8_0, 2, False, {})
    model = load_model(path, precision="f32")
    tokens = np.arange(1, 12, dtype=np.int32) % weights.hparams.n_vocab
    empty = init_lora(weights, {}, alpha=1.0, seed=0)
    loss_sum, n = Graph(weights, empty, precision="f32").loss_and_grads(tokens[None, :-1], tokens[None, 1:], None)
    assert loss_sum / n == pytest.approx(model.cross_entropy(tokens), rel=1e-5)
