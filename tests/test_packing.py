"""Packing: rows of several samples, each seeing only itself, train as the samples would alone."""

import json

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T

import ggtune
from ggtune.data import IGNORE, BatchOptions, BatchStream, Samples, Shuffled, build_batch, make_batch
from ggtune.gguf_io import read_model_gguf
from ggtune.graph import Graph, Grads
from ggtune.lora import init_lora
from ggtune.names import ALL_KINDS
from ggtune.packing import packed_rows
from tiny_models import write_tiny_llama

BOS, EOS = 1, 2


def chat_like(sizes, seed=0, vocab=60):
    """Samples of the given sizes with a trainable mask (the second half of each is 'the answer')."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(3, vocab, size=sum(sizes)).astype(np.int32)
    begins = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    trainable = np.zeros(len(tokens), bool)
    for b, n in zip(begins, sizes):
        trainable[b + n // 2: b + n] = True
    return Samples(source="s", tokens=tokens, begins=begins, sizes=np.array(sizes, np.int64), trainable=trainable)


def in_order(samples, order=None):
    order = np.arange(samples.count) if order is None else np.asarray(order)
    return Shuffled(order=order.astype(np.int64), offsets=np.zeros(len(order), np.int64), next_rng_state="")


def test_packed_rows_layout():
    s = chat_like([3, 4, 9, 2])
    inputs, targets, positions, first_key, used = packed_rows(s, in_order(s), 0, 10, 2, BOS, EOS, wrap=False)
    assert used == 3
    # row 0: sample 0 (4 positions) and 1 (5), one padding; row 1: sample 2 (10: BOS + 9, no room for its end)
    assert positions[0].tolist() == [0, 1, 2, 3, 0, 1, 2, 3, 4, 0]
    assert first_key[0].tolist() == [0, 0, 0, 0, 4, 4, 4, 4, 4, 9]
    t0 = s.tokens[:3]
    assert inputs[0, :4].tolist() == [BOS, *t0] and inputs[0, 4] == BOS
    assert targets[0, :4].tolist() == [IGNORE, t0[1], t0[2], IGNORE]  # mask; chat ends without a target
    assert targets[0, 9] == IGNORE and inputs[0, 9] == EOS
    assert positions[1].tolist() == list(range(10)) and (first_key[1] == 0).all()
    t2 = s.tokens[7:16]
    assert inputs[1].tolist() == [BOS, *t2] and targets[1].tolist() == np.where(s.trainable[7:16], t2, IGNORE)[
        :10].tolist() + [IGNORE] * 1
    # sample 3 did not fit into row 1 of 2: the next batch starts with it (wrap=True keeps filling)
    _, _, _, _, used2 = packed_rows(s, in_order(s), 0, 10, 3, BOS, EOS, wrap=True)
    assert used2 == 5  # row 2 holds sample 3 (3 positions) and, wrapping around, sample 0 (4)


def test_plain_text_segments_end_in_eos_like_the_first_padding_target():
    s = Samples(source="t", tokens=np.arange(10, 16, dtype=np.int32), begins=np.array([0, 3]),
                sizes=np.array([3, 3]))
    packed = build_batch(s, in_order(s), 0, BatchOptions(n_ctx=8, n_batch=1, pack=True), BOS, EOS)
    alone, alone_targets, _ = make_batch(s, in_order(s), 0, BatchOptions(n_ctx=8, n_batch=1), BOS, EOS)
    assert packed.targets[0, :4].tolist() == alone_targets[0, :4].tolist() == [10, 11, 12, EOS]
    assert packed.inputs[0, :4].tolist() == alone[0, :4].tolist()
    assert packed.targets[0, 4:].tolist() == [13, 14, 15, EOS] and packed.used_samples == 2


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    path = write_tiny_llama(tmp_path_factory.mktemp("p") / "m.gguf", weight_type=T.Q8_0, n_head_kv=2, tied=True,
                            n_embd=64, n_ff=96, n_head=4, n_layer=2, seed=2)
    weights = read_model_gguf(path)
    lora = init_lora(weights, dict.fromkeys(ALL_KINDS, 2), alpha=3.0, seed=2)
    rng = np.random.default_rng(4)
    for pair in lora.pairs.values():
        pair.b[:] = 0.2 * rng.standard_normal(pair.b.shape)
    return weights, lora


def gradients(weights, lora, batch, keep_targets=None):
    """(loss sum, {param: float64 gradient of the loss sum}) of a batch, scoring only targets where
    keep_targets is True."""
    targets = batch.targets if keep_targets is None else np.where(keep_targets, batch.targets, IGNORE)
    grads = Grads.like(lora)
    layout = {} if batch.positions is None else dict(positions=batch.positions, first_key=batch.first_key)
    loss, _ = Graph(weights, lora, precision="f32").loss_and_grads(batch.inputs, targets, grads, loss_scale=1.0,
                                                                   **layout)
    return loss, {k: v.astype(np.float64) for k, v in grads.arrays().items()}


def test_packed_training_computes_each_samples_gradient_as_alone(case):
    weights, lora = case
    s = chat_like([5, 11, 3, 7, 9, 4], seed=1, vocab=weights.hparams.n_vocab)
    packed = build_batch(s, in_order(s), 0, BatchOptions(n_ctx=20, n_batch=3, pack=True), BOS, EOS, wrap=False)
    assert packed.used_samples == 6 and (packed.first_key > 0).any()
    total_loss, total = 0.0, None
    for i in range(s.count):
        alone = build_batch(s, in_order(s, [i]), 0, BatchOptions(n_ctx=20, n_batch=1), BOS, EOS)
        loss_alone, g_alone = gradients(weights, lora, alone)
        # the same sample inside the packed batch: score only its own segment
        row, start = _segment_of(packed, i, s)
        keep = np.zeros(packed.targets.shape, bool)
        keep[row, start: start + s.sizes[i] + 1] = True
        loss_packed, g_packed = gradients(weights, lora, packed, keep)
        assert loss_packed == pytest.approx(loss_alone, rel=1e-5)
        for name, g in g_alone.items():
            scale = max(np.abs(g).max(), 1e-6)
            np.testing.assert_allclose(g_packed[name], g, rtol=0, atol=2e-5 * scale, err_msg=f"sample {i} {name}")
        total_loss += loss_alone
        total = g_alone if total is None else {k: total[k] + v for k, v in g_alone.items()}
    loss_all, g_all = gradients(weights, lora, packed)
    assert loss_all == pytest.approx(total_loss, rel=1e-5)
    for name, g in total.items():
        np.testing.assert_allclose(g_all[name], g, rtol=0, atol=2e-5 * max(np.abs(g).max(), 1e-6))


def _segment_of(batch, i, samples):
    """(row, start) of sample i (placed in order) in a packed batch: the i-th segment start with BOS."""
    starts = [(r, c) for r in range(batch.inputs.shape[0]) for c in range(batch.inputs.shape[1])
              if batch.positions[r, c] == 0 and batch.inputs[r, c] == BOS]
    return starts[i]


def test_without_first_key_samples_would_see_each_other(case):
    """The check above is not vacuous: packed rows without the attention bound differ."""
    weights, lora = case
    s = chat_like([5, 11, 3], seed=1, vocab=weights.hparams.n_vocab)
    packed = build_batch(s, in_order(s), 0, BatchOptions(n_ctx=24, n_batch=1, pack=True), BOS, EOS, wrap=False)
    bounded, _ = Graph(weights, lora, precision="f32").loss_and_grads(
        packed.inputs, packed.targets, None, positions=packed.positions, first_key=packed.first_key)
    unbounded, _ = Graph(weights, lora, precision="f32").loss_and_grads(
        packed.inputs, packed.targets, None, positions=packed.positions)
    assert abs(bounded - unbounded) > 1e-3


def test_pack_option_trains_and_is_exclusive(tmp_path):
    model = write_tiny_llama(tmp_path / "tiny.gguf", byte_vocab=True, weight_type=T.Q8_0, n_head=4, n_head_kv=2,
                             tied=True, n_embd=64, n_ff=96, n_ctx=64)
    chat = tmp_path / "chat.jsonl"
    chat.write_text("\n".join(json.dumps({"messages": [{"role": "user", "content": f"say {w}"},
                                                       {"role": "assistant", "content": w}]})
                              for w in ("apple", "river", "winter", "cat", "sun", "moon") * 4))
    common = dict(checkpoint_in="", checkpoint_out="", lora_out=str(tmp_path / "l.gguf"), ctx=64, batch=2,
                  lora_r=2, seed=1, verbose=False, adam_iter=4, adam_alpha=1e-2, warmup=0)
    packed = ggtune.finetune(model, str(chat), pack=True, **common)
    assert np.isfinite(packed.losses).all() and packed.losses[-1] < packed.losses[0]
    with pytest.raises(ValueError, match="--pack and --fill-with-next-samples"):
        ggtune.finetune(model, str(chat), pack=True, fill_with_next_samples=True, **common)


def test_packed_stream_resumes_at_the_same_sample():
    s = chat_like([3, 4, 9, 2, 5, 6, 1, 8])
    opts = BatchOptions(n_ctx=12, n_batch=2, pack=True)
    full = BatchStream(s, opts, bos_id=BOS, eos_id=EOS, seed=3)
    want = [full.next_batch() for _ in range(6)]
    first = BatchStream(s, opts, bos_id=BOS, eos_id=EOS, seed=3)
    for _ in range(3):
        first.next_batch()
    resumed = BatchStream(s, opts, bos_id=BOS, eos_id=EOS, seed=3, state=first.state)
    for w in want[3:]:
        got = resumed.next_batch()
        np.testing.assert_array_equal(got.inputs, w.inputs)
        np.testing.assert_array_equal(got.first_key, w.first_key)


def test_packed_samples_without_a_leading_bos_match_make_batch_rows():
    """--no-start-with-bos --pack: each packed sample is laid out as make_batch lays out a row."""
    from ggtune.data import BatchOptions, Samples, Shuffled, make_batch
    from ggtune.packing import packed_rows

    pieces = [[10, 11, 12], [20, 21], [30, 31, 32, 33]]
    sizes = np.array([len(p) for p in pieces])
    s = Samples(source="t", tokens=np.array(sum(pieces, []), np.int32),
                begins=np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64), sizes=sizes)
    order = Shuffled(order=np.arange(3, dtype=np.int64), offsets=np.zeros(3, np.int64), next_rng_state="")
    inputs, targets, positions, first_key, used = packed_rows(s, order, 0, 9, 1, 1, 2, wrap=False,
                                                              start_with_bos=False)
    assert used == 3
    assert inputs[0].tolist() == [10, 11, 12, 20, 21, 30, 31, 32, 33]
    assert targets[0].tolist() == [11, 12, 2, 21, 2, 31, 32, 33, 2]
    assert positions[0].tolist() == [0, 1, 2, 0, 1, 0, 1, 2, 3]
    assert first_key[0].tolist() == [0, 0, 0, 3, 3, 5, 5, 5, 5]
    for i, piece in enumerate(pieces):  # the same tokens and targets as an unpacked row of it
        one = Shuffled(order=np.array([i], np.int64), offsets=np.zeros(1, np.int64), next_rng_state="")
        row_in, row_tgt, _ = make_batch(s, one, 0, BatchOptions(n_ctx=len(piece), n_batch=1, start_with_bos=False),
                                        1, 2)
        at = int(np.flatnonzero((first_key[0] == first_key[0][positions[0] == 0][i]))[0])
        assert inputs[0, at: at + len(piece)].tolist() == row_in[0].tolist()
        assert targets[0, at: at + len(piece) - 1].tolist() == row_tgt[0, :-1].tolist()
