"""The LoRA training graph against float64 finite differences of the numpy reference model."""

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T

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


def test_checkpointing_gives_the_same_gradients(tmp_path):
    path, weights, lora, inputs, targets = make_case(tmp_path, T.Q4_1, 2, False, ALL_RANKS)
    results = []
    # full recompute, none, and the last layer kept (make_case has 2 layers)
    for checkpointing, keep in ((True, 0), (False, 0), (True, 1)):
        grads = Grads.like(lora)
        loss, _ = Graph(weights, lora, precision="f32").loss_and_grads(
            inputs, targets, grads, checkpointing=checkpointing, keep_layers=keep)
        results.append((loss, grads.arrays()))
    for loss, arrays in results[1:]:
        assert loss == results[0][0]
        for name, g in results[0][1].items():
            np.testing.assert_array_equal(g, arrays[name])


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
