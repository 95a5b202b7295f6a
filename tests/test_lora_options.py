"""LoRA options: --lora-dropout (gradients, determinism, resume), --rslora (scale in training, the
adapter, llama.cpp's reading of it and merge), --lora-targets."""

import math

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T

import ggtune
from ggtune.adapters import read_gguf_adapter
from ggtune.checkpoint import load_checkpoint
from ggtune.dropout import LoraDropout
from ggtune.gguf_io import read_model_gguf
from ggtune.graph import Graph, Grads
from ggtune.lora import init_lora
from ggtune.lora_options import adapter_alpha_and_factors, lora_scale, parse_targets
from ggtune.merge import read_adapter_source
from ggtune.model import load_model
from test_watch import COMMON, TEXT, model_path, text_path  # noqa: F401  (the last two: pytest fixtures)
from tiny_models import write_tiny_llama

RANKS = {"attn_q": 2, "attn_k": 3, "attn_v": 2, "attn_output": 2, "ffn_gate": 2, "ffn_up": 1, "ffn_down": 2}


def graph_case(model_path, seed=0):
    weights = read_model_gguf(model_path)
    lora = init_lora(weights, RANKS, alpha=3.0, seed=seed)
    rng = np.random.default_rng(seed + 1)
    for pair in lora.pairs.values():
        pair.b[:] = 0.2 * rng.standard_normal(pair.b.shape)
    V = weights.hparams.n_vocab
    inputs = rng.integers(0, V, size=(2, 9)).astype(np.int32)
    targets = rng.integers(0, V, size=(2, 9)).astype(np.int32)
    return weights, lora, inputs, targets


def test_dropout_masks_are_keyed_not_drawn_in_sequence():
    drop = LoraDropout(0.25, seed=5)
    m = drop.for_pass(3, 0).mask("blk.0.attn_q.weight", (400, 64))
    assert set(np.unique(m).tolist()) == {0.0, np.float32(1 / 0.75)}
    assert abs((m == 0).mean() - 0.25) < 0.01
    np.testing.assert_array_equal(m, LoraDropout(0.25, seed=5).for_pass(3, 0).mask("blk.0.attn_q.weight", (400, 64)))
    for other in (drop.for_pass(4, 0), drop.for_pass(3, 1), LoraDropout(0.25, seed=6).for_pass(3, 0)):
        assert not np.array_equal(m, other.mask("blk.0.attn_q.weight", (400, 64)))
    assert not np.array_equal(m, drop.for_pass(3, 0).mask("blk.0.attn_k.weight", (400, 64)))
    assert LoraDropout(0.0, seed=5).for_pass(1, 0) is None
    # each row of the global batch has its own mask: a data-parallel rank holding rows 2..3 of a
    # 4-row batch draws the rows one process draws for them
    whole = drop.for_pass(3, 0, 0, 100).mask("blk.1.ffn_up.weight", (400, 64))
    part = drop.for_pass(3, 0, 2, 100).mask("blk.1.ffn_up.weight", (200, 64))
    np.testing.assert_array_equal(part, whole[200:])
    assert not np.array_equal(whole[:100], whole[100:200])
    with pytest.raises(ValueError, match="--lora-dropout"):
        LoraDropout(1.0, 0)


def test_dropout_gradients_match_finite_differences_of_the_dropped_forward(model_path):
    """With a fixed mask the dropped network is a function of A and B: its backward (also with
    the checkpointed recompute drawing the masks again) matches central differences of its forward."""
    weights, lora, inputs, targets = graph_case(model_path)
    graph = Graph(weights, lora, precision="f32")
    graph.dropout = LoraDropout(0.3, seed=9).for_pass(1, 0)
    grads = Grads.like(lora)
    loss, n = graph.loss_and_grads(inputs, targets, grads, checkpointing=True)
    plain = Grads.like(lora)
    graph.loss_and_grads(inputs, targets, plain, checkpointing=False)
    for name, g in grads.arrays().items():
        np.testing.assert_array_equal(g, plain.arrays()[name])
    undropped, _ = Graph(weights, lora, precision="f32").loss_and_grads(inputs, targets, None)
    assert abs(loss - undropped) > 1e-3  # the masks do act
    rng, eps = np.random.default_rng(3), 1e-2
    for name, pair in list(lora.pairs.items())[:6]:
        for half in ("a", "b"):
            param, grad = getattr(pair, half), getattr(grads.pairs[name], half)
            for flat in rng.choice(param.size, size=2, replace=False):
                idx = np.unravel_index(flat, param.shape)
                saved = float(param[idx])
                param[idx] = saved + eps
                up = graph.loss_and_grads(inputs, targets, None)[0] / n
                param[idx] = saved - eps
                down = graph.loss_and_grads(inputs, targets, None)[0] / n
                param[idx] = saved
                assert grad[idx] == pytest.approx((up - down) / (2 * eps), rel=2e-2, abs=2e-4), (name, half)


def run(model_path, data, out, iterations, checkpoint_in="", **extra):
    return ggtune.finetune(model_path, data, lora_out=str(out / "lora-ITERATION.gguf"),
                           checkpoint_in=checkpoint_in, checkpoint_out=str(out / "ck-ITERATION.gguf"),
                           adam_iter=iterations, **{**COMMON, **extra})


def test_dropout_training_resumes_exactly_and_is_off_in_evaluation(tmp_path, model_path, text_path):
    straight = run(model_path, text_path, tmp_path / "a", 4, lora_dropout=0.2, seed=-1, grad_acc=2)
    seed = load_checkpoint(tmp_path / "a" / "ck-LATEST.gguf").seed
    assert seed is not None
    first = run(model_path, text_path, tmp_path / "b", 2, lora_dropout=0.2, seed=seed, grad_acc=2)
    # --seed -1 on a resume takes the checkpoint's seed: the masks are the uninterrupted run's
    second = run(model_path, text_path, tmp_path / "b", 2, lora_dropout=0.2, seed=-1, grad_acc=2,
                 checkpoint_in=str(tmp_path / "b" / "ck-LATEST.gguf"))
    np.testing.assert_allclose(first.losses + second.losses, straight.losses, rtol=0, atol=1e-6)
    undropped = run(model_path, text_path, tmp_path / "c", 4, seed=seed, grad_acc=2)
    assert undropped.losses[1:] != straight.losses[1:]
    # the held-out loss is the adapter's, no mask: evaluation runs without dropout
    held = run(model_path, text_path, tmp_path / "d", 2, lora_dropout=0.5, val_split=0.2, seed=3)
    model = load_model(model_path, precision="f32", lora=[(str(tmp_path / "d" / "lora-LATEST.gguf"), 1.0)])
    tokens = np.asarray(model.tokenize(TEXT), np.int32)
    cut = int(len(tokens) * 0.8)
    rows = [np.concatenate([[model.tokenizer.bos_id], tokens[b: b + 16]]).astype(np.int32)
            for b in range(cut, len(tokens) - 1, 16)]
    expected = np.concatenate([model.token_losses(r[None]).reshape(-1) for r in rows]).astype(np.float64).mean()
    assert held.val_losses[-1][1] == pytest.approx(expected, rel=2e-4)


def test_rslora_scale_in_training_adapter_and_merge(tmp_path, model_path, text_path):
    run(model_path, text_path, tmp_path, 3, lora_r=4, lora_alpha=8.0, rslora=True, rank_wq=1)
    ck = load_checkpoint(tmp_path / "ck-LATEST.gguf")
    assert ck.rslora and ck.lora_alpha == 8.0
    stored_alpha, pairs = read_gguf_adapter(tmp_path / "lora-LATEST.gguf")
    assert stored_alpha == pytest.approx(8.0 * math.sqrt(4))
    for name, (a_ck, b_ck) in ck.lora.items():
        r = a_ck.shape[1]
        trained = lora_scale(8.0, r, True) * (b_ck.astype(np.float64) @ a_ck.T)  # the training's update
        a, b = pairs[name]
        as_llama_cpp_reads_it = stored_alpha / r * (b.astype(np.float64) @ a)
        np.testing.assert_allclose(as_llama_cpp_reads_it, trained, rtol=1e-5, atol=1e-9)
        assert r == (1 if "attn_q" in name else 4)
    # merge reads either file to the same deltas
    from_adapter = read_adapter_source(str(tmp_path / "lora-LATEST.gguf"), 1.0)
    from_checkpoint = read_adapter_source(str(tmp_path / "ck-LATEST.gguf"), 1.0)
    for name, d in from_checkpoint.items():
        other = from_adapter[name]
        np.testing.assert_allclose(other.scale * (other.b.astype(np.float64) @ other.a),
                                   d.scale * (d.b.astype(np.float64) @ d.a), rtol=1e-5, atol=1e-9)
    # a resume without --rslora keeps the checkpoint's scale rule
    again = run(model_path, text_path, tmp_path, 1, lora_r=4, rank_wq=1, checkpoint_in=str(tmp_path / "ck-LATEST.gguf"))
    assert load_checkpoint(tmp_path / "ck-LATEST.gguf").rslora and again.iterations == 4


def test_rslora_factors_leave_the_default_rank_alone():
    a, b = np.ones((4, 3), np.float32), np.ones((5, 4), np.float32)
    alpha, out = adapter_alpha_and_factors(2.0, 4, False, {"x": (a, b)})
    assert alpha == 2.0 and out["x"][1] is b
    alpha, out = adapter_alpha_and_factors(2.0, 4, True, {"x": (a, b)})
    assert alpha == 4.0 and out["x"][1] is b


def test_lora_targets_pick_the_kinds(tmp_path, model_path, text_path):
    assert parse_targets("attn_q, attn_v") == {"attn_q", "attn_v"}
    assert parse_targets("q_proj,v_proj") == {"attn_q", "attn_v"}
    assert parse_targets("all-linear") == {"attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_down",
                                           "ffn_up"}
    with pytest.raises(ValueError, match="--lora-targets: unknown target 'attn_x'"):
        parse_targets("attn_q,attn_x")
    result = run(model_path, text_path, tmp_path, 1, lora_targets="attn_q,attn_v", rank_w2=3)
    assert sorted({n.split(".")[-2] for n in result.trained_tensors}) == ["attn_q", "attn_v", "ffn_down"]
    ck = load_checkpoint(tmp_path / "ck-LATEST.gguf")
    assert ck.ranks["attn_q"] == 2 and ck.ranks["ffn_down"] == 3 and ck.ranks["attn_k"] == 0
    with pytest.raises(ValueError, match="--lora-targets attn_norm: attn_norm cannot be trained.*ggla"):
        run(model_path, text_path, tmp_path, 1, lora_targets="attn_norm")
    with pytest.raises(ValueError, match="--lora-targets: unknown target"):
        run(model_path, text_path, tmp_path, 1, lora_targets="wq")


@pytest.mark.llamacpp
def test_llama_cpp_applies_the_rslora_scale(tmp_path):
    """llama.cpp knows only alpha/r: the rsLoRA adapter as ggtune writes it (stored alpha, B of other
    ranks rescaled) gives llama.cpp's logits those of the trained adapters at alpha/sqrt(r)."""
    llama_cpp = pytest.importorskip("llama_cpp")
    from ggtune.adapters import write_gguf_adapter
    from ggtune.model import LoraPair, Model

    base = write_tiny_llama(tmp_path / "base.gguf", byte_vocab=True, weight_type=T.F32, n_head=4, n_head_kv=2,
                            n_embd=64, n_ff=96, n_ctx=64)
    weights = read_model_gguf(base)
    rng = np.random.default_rng(0)
    alpha, lora_r = 6.0, 4
    ranks = {"attn_q": 1, "attn_v": 4, "ffn_down": 9}  # ranks below, at and above --lora-r
    lora = init_lora(weights, ranks, alpha, seed=1, rslora=True)
    for pair in lora.pairs.values():
        pair.b[:] = 0.1 * rng.standard_normal(pair.b.shape)
    stored_alpha, tensors = adapter_alpha_and_factors(alpha, lora_r, True,
                                                      {n: (p.a, p.b) for n, p in lora.pairs.items()})
    write_gguf_adapter(tmp_path / "rs.gguf", tensors, alpha=stored_alpha, tied_embeddings=weights.tied_embeddings)
    tokens = [int(t) for t in rng.integers(0, 269, size=40)]
    llm = llama_cpp.Llama(base, lora_path=str(tmp_path / "rs.gguf"), n_ctx=64, n_batch=64, logits_all=True,
                          n_threads=2, type_k=0, type_v=0, verbose=False)  # F32 KV cache
    llm.eval(tokens)
    theirs = np.array(llm.scores[: len(tokens)], dtype=np.float32)
    trained = {n: [LoraPair(p.a, p.b, alpha / math.sqrt(p.a.shape[0]))] for n, p in lora.pairs.items()}
    ours = Model(weights, trained, "f32").logits(np.array(tokens))
    plain = Model(weights, {}, "f32").logits(np.array(tokens))
    assert np.abs(ours - plain).max() > 0.1
    np.testing.assert_allclose(theirs, ours, atol=1e-3, rtol=0)
