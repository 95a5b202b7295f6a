import os

import gguf
import numpy as np
import pytest

from ggtune.architecture import HParams
from ggtune.checkpoint import (Checkpoint, CheckpointError, OptimizerCheckpoint,
                               TrainCounters, check_resume_compatible, load_checkpoint, load_checkpoint_if_present,
                               output_names, parameter_names, save_checkpoint)
from ggtune.names import ALL_KINDS as RANK_KINDS, lora_base_names
from ggtune.data import ShuffleState, seed_rng_state

HP = HParams(n_vocab=0, n_ctx_train=64, n_embd=8, n_ff=12, n_head=4, n_head_kv=2, n_layer=2, n_rot=2,
             rms_eps=float(np.float32(1e-5)),  # stored as f32: round-trips exactly
             rope_freq_base=10000.0, rope_freq_scale=1.0)
N_VOCAB = 11


def base_shape(base, hp=HP):
    """numpy (n_out, n_in) of the base weight, norms as (1, n_embd)."""
    kv = hp.n_embd * hp.n_head_kv // hp.n_head
    kind = base.split(".")[-2]
    return {"token_embd": (N_VOCAB, hp.n_embd), "output": (N_VOCAB, hp.n_embd), "attn_q": (hp.n_embd, hp.n_embd),
            "attn_k": (kv, hp.n_embd), "attn_v": (kv, hp.n_embd), "attn_output": (hp.n_embd, hp.n_embd),
            "ffn_gate": (hp.n_ff, hp.n_embd), "ffn_up": (hp.n_ff, hp.n_embd), "ffn_down": (hp.n_embd, hp.n_ff),
            }.get(kind, (1, hp.n_embd))


def make_checkpoint(ranks, past=0, seed=0):
    rng = np.random.default_rng(seed)
    lora = {}
    for base in lora_base_names(HP.n_layer, ranks):
        n_out, n_in = base_shape(base)
        r = ranks[base.split(".")[-2]]
        lora[base] = (rng.standard_normal((n_in, r)).astype(np.float32),
                      rng.standard_normal((n_out, r)).astype(np.float32))
    nx = sum(a.size + b.size for a, b in lora.values())
    opt = OptimizerCheckpoint(iteration=7, m=rng.standard_normal(nx).astype(np.float32),
                              v=rng.random(nx).astype(np.float32), just_initialized=False, best_loss=2.5,
                              previous_loss=2.75, no_improvement_count=3,
                              past_loss_values=rng.random(past).astype(np.float32))
    return Checkpoint(hparams=HP, ranks=dict(ranks), lora=lora, optimizer=opt,
                      counters=TrainCounters(iteration_count=7, sample_count=56, token_count=3584, epoch_count=1),
                      shuffle=ShuffleState(rng_state=seed_rng_state(42), samples_hash=2**64 - 5, sample_count=1000,
                                           next_sample=17))


ALL_RANKS = {k: 4 for k in RANK_KINDS} | {"attn_norm": 1, "ffn_norm": 1, "output_norm": 1, "attn_k": 2}


@pytest.mark.parametrize("past", [0, 3])
def test_round_trip(tmp_path, past):
    ckpt = make_checkpoint(ALL_RANKS, past=past)
    path = tmp_path / "checkpoint-7.gguf"
    save_checkpoint(path, ckpt)
    back = load_checkpoint(path)
    assert back.hparams == ckpt.hparams and back.ranks == ckpt.ranks
    assert back.counters == ckpt.counters and back.shuffle == ckpt.shuffle
    assert list(back.lora) == lora_base_names(HP.n_layer, ALL_RANKS)
    for base, (a, b) in ckpt.lora.items():
        np.testing.assert_array_equal(back.lora[base][0], a)
        np.testing.assert_array_equal(back.lora[base][1], b)
    for name in ("m", "v", "past_loss_values"):
        np.testing.assert_array_equal(getattr(back.optimizer, name), getattr(ckpt.optimizer, name))
    assert (back.optimizer.iteration, back.optimizer.best_loss, back.optimizer.previous_loss,
            back.optimizer.no_improvement_count) == (7, 2.5, 2.75, 3)
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".partial")]


def test_file_layout_matches_section_d(tmp_path):
    path = tmp_path / "c.gguf"
    save_checkpoint(path, make_checkpoint(ALL_RANKS, past=2))
    r = gguf.GGUFReader(path)
    T = gguf.GGUFValueType
    want = {"training.type": T.STRING, "general.architecture": T.STRING, "general.file_type": T.UINT32,
            "llama.context_length": T.UINT32, "llama.attention.head_count_kv": T.UINT32,
            "llama.rope.dimension_count": T.UINT32, "llama.attention.layer_norm_rms_epsilon": T.FLOAT32,
            "llama.rope.freq_base": T.FLOAT32, "llama.rope.scale_linear": T.FLOAT32,
            "training.lora.rank.ffn_up": T.UINT32, "training.file_version": T.UINT32,
            "training.iteration_count": T.UINT64, "training.epoch_count": T.UINT64,
            "training.shuffle.samples_hash": T.UINT64, "training.shuffle.rng_state": T.STRING,
            "training.shuffle.next_sample": T.UINT64, "optimizer.file_version": T.UINT32,
            "optimizer.convergence_past_count": T.UINT32, "optimizer.parameter_count": T.UINT64,
            "optimizer.iteration_count": T.UINT32, "optimizer.just_initialized": T.BOOL,
            "optimizer.type": T.STRING, "optimizer.adam.best_loss": T.FLOAT32,
            "optimizer.adam.no_improvement_count": T.UINT32}
    for key, typ in want.items():
        assert r.fields[key].types[0] == typ, key
    names = [t.name for t in r.tensors]
    assert names[:6] == ["token_embd.weight.lora_a", "token_embd.weight.lora_b", "output_norm.weight.lora_a",
                         "output_norm.weight.lora_b", "output.weight.lora_a", "output.weight.lora_b"]
    assert names[6:8] == ["blk.0.attn_norm.weight.lora_a", "blk.0.attn_norm.weight.lora_b"]
    assert names[-3:] == ["optimizer.adam.first_moments", "optimizer.adam.second_moments",
                          "optimizer.adam.past_loss_values"]
    shapes = {t.name: [int(x) for x in t.shape] for t in r.tensors}  # ggml ne, ne0 first
    assert shapes["blk.1.attn_k.weight.lora_a"] == [2, 8]  # [r, n_in]
    assert shapes["blk.1.attn_k.weight.lora_b"] == [2, 4]  # [r, n_out]
    assert shapes["blk.0.ffn_down.weight.lora_a"] == [4, 12]
    assert shapes["blk.0.attn_norm.weight.lora_b"] == [1, 1]
    assert shapes["output_norm.weight.lora_a"] == [1, 8]
    assert all(t.tensor_type == gguf.GGMLQuantizationType.F32 for t in r.tensors)
    assert parameter_names(HP.n_layer, ALL_RANKS)[:2] == ["token_embd.weight.lora_a", "token_embd.weight.lora_b"]


def test_rank_zero_kinds_have_no_tensors(tmp_path):
    ranks = {k: 4 for k in RANK_KINDS} | {"attn_norm": 0, "ffn_norm": 0, "output_norm": 0, "output": 0}
    save_checkpoint(tmp_path / "c.gguf", make_checkpoint(ranks))
    back = load_checkpoint(tmp_path / "c.gguf")
    assert back.ranks["output"] == 0 and not any("norm" in b or b.startswith("output") for b in back.lora)
    assert len(back.lora) == 1 + 7 * HP.n_layer


def test_truncated_and_corrupt_files_name_the_file(tmp_path):
    path = tmp_path / "good.gguf"
    save_checkpoint(path, make_checkpoint(ALL_RANKS))
    raw = path.read_bytes()
    for label, data in (("cut", raw[: len(raw) // 2]), ("header", raw[:40]), ("junk", b"not a gguf" * 10)):
        bad = tmp_path / f"{label}.gguf"
        bad.write_bytes(data)
        with pytest.raises(CheckpointError, match=f"{label}.gguf: "):
            load_checkpoint(bad)
    with pytest.raises(CheckpointError, match="nothere.gguf: no such checkpoint file"):
        load_checkpoint(tmp_path / "nothere.gguf")


def test_checkpoint_in_semantics(tmp_path):
    assert load_checkpoint_if_present("") is None
    assert load_checkpoint_if_present(None) is None
    assert load_checkpoint_if_present(tmp_path / "checkpoint.gguf") is None  # fresh start
    save_checkpoint(tmp_path / "checkpoint.gguf", make_checkpoint(ALL_RANKS))
    assert load_checkpoint_if_present(tmp_path / "checkpoint.gguf").counters.iteration_count == 7
    (tmp_path / "broken.gguf").write_bytes(b"GGUF" + b"\xff" * 20)
    with pytest.raises(CheckpointError, match="broken.gguf"):
        load_checkpoint_if_present(tmp_path / "broken.gguf")


def test_wrong_kind_of_gguf(tmp_path, smollm2_path):
    with pytest.raises(CheckpointError, match="training.type.* is missing"):
        load_checkpoint(smollm2_path)


def test_inconsistent_checkpoint_refused_before_writing(tmp_path):
    ckpt = make_checkpoint(ALL_RANKS)
    ckpt.optimizer.m = ckpt.optimizer.m[:-1]
    with pytest.raises(CheckpointError, match="moments"):
        save_checkpoint(tmp_path / "c.gguf", ckpt)
    ckpt = make_checkpoint(ALL_RANKS)
    del ckpt.lora["blk.1.ffn_up.weight"]
    with pytest.raises(CheckpointError, match="missing.*blk.1.ffn_up.weight"):
        save_checkpoint(tmp_path / "c.gguf", ckpt)
    assert not os.listdir(tmp_path)


def test_resume_compatibility_messages():
    ckpt = make_checkpoint(ALL_RANKS, past=2)
    check_resume_compatible(ckpt, dict(ALL_RANKS), 2)
    with pytest.raises(CheckpointError, match=r"Provided rank differs .*attn_q 4 -> 8.*--checkpoint-in ''"):
        check_resume_compatible(ckpt, ALL_RANKS | {"attn_q": 8}, 2)
    with pytest.raises(CheckpointError, match=r"'--opt-past N' differs from checkpoint file \(2 -> 0\)"):
        check_resume_compatible(ckpt, dict(ALL_RANKS), 0)


def test_output_names():
    assert output_names("checkpoint-ITERATION.gguf", 30) == ["checkpoint-30.gguf", "checkpoint-LATEST.gguf"]
    assert output_names("a-ITERATION-ITERATION", 5) == ["a-5-ITERATION", "a-LATEST-ITERATION"]
    assert output_names("lora-@.bin", 2, pattern_it="@", fn_latest="last") == ["lora-2.bin", "lora-last.bin"]
    assert output_names("fixed.gguf", 9) == ["fixed.gguf"]
    assert output_names("", 9) == []


def test_resume_through_a_checkpoint_is_exact(tmp_path):
    """data + optim + checkpoint together: 2N toy steps in one go equal N steps, save, load, N steps."""
    from ggtune.data import BatchOptions, BatchStream, Samples
    from ggtune.optim import Adam, AdamState, learning_rate_schedule

    rng = np.random.default_rng(9)
    tokens = rng.integers(3, 50, 400).astype(np.int32)
    samples = Samples(source="toy.txt", tokens=tokens, begins=np.arange(0, 390, 13, dtype=np.int64),
                      sizes=np.full(30, 10, np.int64))
    ranks = {k: 0 for k in RANK_KINDS} | {"attn_q": 2}
    start = make_checkpoint(ranks, seed=1)

    def run(ckpt, steps):
        lora = {b: (a.copy(), bb.copy()) for b, (a, bb) in ckpt.lora.items()}
        params = {f"{b}.{h}": t for b, pair in lora.items() for h, t in zip(("lora_a", "lora_b"), pair)}
        opt = Adam(params, decay=0.1)
        opt.load_state(AdamState(ckpt.optimizer.iteration, ckpt.optimizer.m, ckpt.optimizer.v))
        stream = BatchStream(samples, BatchOptions(n_ctx=8, n_batch=4, fill_with_next_samples=True,
                                                   sample_random_offsets=True), bos_id=1, eos_id=2, seed=5,
                             state=ckpt.shuffle)
        counters = TrainCounters(**vars(ckpt.counters))
        for _ in range(steps):
            batch = stream.next_batch()
            signal = np.float32(batch.targets.mean() / 50.0)
            grads = {n: p * np.float32(0.5) - signal for n, p in params.items()}
            lr = learning_rate_schedule(opt.iteration, warmup=2, cos_decay_steps=5, cos_decay_restart=1.1,
                                        cos_decay_min=0.1, enable_restart=False, alpha=1e-2, min_alpha=0.0)
            opt.step(grads, lr)
            counters.iteration_count += 1
            counters.sample_count += batch.used_samples
            counters.epoch_count += batch.epoch_completed
        state = opt.export_state()
        return Checkpoint(hparams=HP, ranks=ranks, lora=lora, counters=counters, shuffle=stream.state,
                          optimizer=OptimizerCheckpoint(iteration=state.iteration, m=state.m, v=state.v))

    start.shuffle = ShuffleState(rng_state="", samples_hash=0, sample_count=0, next_sample=0)  # fresh
    start.optimizer.m[:] = 0
    start.optimizer.v[:] = 0
    start.optimizer.iteration = 0
    start.counters = TrainCounters()
    straight = run(start, 12)
    save_checkpoint(tmp_path / "half.gguf", run(start, 6))
    resumed = run(load_checkpoint(tmp_path / "half.gguf"), 6)
    assert straight.counters == resumed.counters and straight.counters.epoch_count >= 1
    assert straight.shuffle == resumed.shuffle
    for base in straight.lora:
        for x, y in zip(straight.lora[base], resumed.lora[base]):
            np.testing.assert_array_equal(x, y)
