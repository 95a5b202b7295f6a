"""ggtune.finetune end to end on tiny random models: resume, adapters, refusals, data errors, SIGINT."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T

import ggtune
from ggtune import trainer
from ggtune.adapters import read_gguf_adapter
from ggtune.checkpoint import CheckpointError, load_checkpoint
from ggtune.graph import Graph
from ggtune.lora import LoraSet
from tiny_models import write_tiny_llama

TEXT = ("The quick brown fox jumps over the lazy dog while the cat watches the rain. " * 30
        + "Another line with other words: in the winter, the river freezes over. " * 20)

COMMON = dict(ctx=16, batch=2, lora_r=2, adam_alpha=1e-2, warmup=2, seed=11, save_every=0, verbose=False)


@pytest.fixture
def model_path(tmp_path):
    return write_tiny_llama(tmp_path / "tiny.gguf", byte_vocab=True, weight_type=T.Q8_0, n_head=4, n_head_kv=2,
                            tied=True, n_embd=64, n_ff=96, n_ctx=64)


@pytest.fixture
def text_path(tmp_path):
    path = tmp_path / "train.txt"
    path.write_text(TEXT, encoding="utf-8")
    return str(path)


def run(model_path, text_path, out, iterations, checkpoint_in="", **extra):
    return ggtune.finetune(model_path, text_path, lora_out=str(out / "lora-ITERATION.gguf"),
                           checkpoint_in=checkpoint_in, checkpoint_out=str(out / "ck-ITERATION.gguf"),
                           adam_iter=iterations, **{**COMMON, **extra})


def test_training_lowers_the_loss_and_writes_a_faithful_adapter(tmp_path, model_path, text_path):
    result = run(model_path, text_path, tmp_path, 12)
    assert len(result.losses) == 12 and result.iterations == 12
    assert np.mean(result.losses[-3:]) < result.losses[0] - 0.05
    assert all(t > 0 for t in result.tokens_per_second)
    assert str(tmp_path / "lora-12.gguf") in result.written and str(tmp_path / "lora-LATEST.gguf") in result.written
    # the default GGUF adapter on a tied model carries the seven matrices, nothing else
    assert sorted({name.split(".")[-2] for name in result.trained_tensors}) == sorted(
        ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_down", "ffn_up"])
    alpha, pairs = read_gguf_adapter(tmp_path / "lora-LATEST.gguf")
    ck = load_checkpoint(tmp_path / "ck-LATEST.gguf")
    assert alpha == 2.0 and set(pairs) == set(ck.lora)
    for name, (a, b) in pairs.items():
        np.testing.assert_array_equal(a, ck.lora[name][0].T)
        np.testing.assert_array_equal(b, ck.lora[name][1])
    # the adapter applied at inference gives the loss the trained LoRA set gives in the graph
    tokens = np.arange(3, 40, dtype=np.int32)
    with_adapter = ggtune.load_model(model_path, lora=[(str(tmp_path / "lora-LATEST.gguf"), 1.0)], precision="f32")
    lora = LoraSet(alpha=alpha)
    for name, (a, b) in pairs.items():
        lora.add(name, a, b)
    loss, n = Graph(with_adapter.weights, lora, precision="f32").loss_and_grads(tokens[None, :-1], tokens[None, 1:],
                                                                                None)
    assert loss / n == pytest.approx(with_adapter.cross_entropy(tokens), rel=1e-5)


def test_resume_is_exact(tmp_path, model_path, text_path):
    straight = run(model_path, text_path, tmp_path / "a", 8)
    first = run(model_path, text_path, tmp_path / "b", 4)
    second = run(model_path, text_path, tmp_path / "b", 4, checkpoint_in=str(tmp_path / "b" / "ck-LATEST.gguf"))
    assert second.iterations == 8
    np.testing.assert_allclose(first.losses + second.losses, straight.losses, rtol=0, atol=1e-6)
    one = load_checkpoint(tmp_path / "a" / "ck-LATEST.gguf")
    two = load_checkpoint(tmp_path / "b" / "ck-LATEST.gguf")
    for name in one.lora:
        for x, y in zip(one.lora[name], two.lora[name]):
            np.testing.assert_allclose(x, y, rtol=0, atol=1e-6)
    np.testing.assert_allclose(one.optimizer.m, two.optimizer.m, rtol=0, atol=1e-6)
    assert one.counters == two.counters and one.shuffle == two.shuffle


def test_resume_keeps_the_checkpoints_alpha(tmp_path, model_path, text_path, capsys):
    """The checkpoint records --lora-alpha: a resume without it continues at the same scale (the
    original's files did not, and a resume silently fell back to alpha = rank); another value is
    taken, with a note."""
    straight = run(model_path, text_path, tmp_path / "a", 4, lora_alpha=8.0)
    run(model_path, text_path, tmp_path / "b", 2, lora_alpha=8.0)
    ck = str(tmp_path / "b" / "ck-LATEST.gguf")
    assert load_checkpoint(ck).lora_alpha == 8.0
    resumed = run(model_path, text_path, tmp_path / "b", 2, checkpoint_in=ck)
    np.testing.assert_allclose(resumed.losses, straight.losses[2:], rtol=0, atol=1e-6)
    other = run(model_path, text_path, tmp_path / "c", 2, checkpoint_in=ck, lora_alpha=2.0, verbose=True)
    assert "trained with --lora-alpha 8; continuing with 2" in capsys.readouterr().err
    assert abs(other.losses[0] - straight.losses[2]) > 1e-4


def test_resume_with_other_ranks_or_opt_past_is_refused(tmp_path, model_path, text_path):
    run(model_path, text_path, tmp_path, 2)
    ck = str(tmp_path / "ck-LATEST.gguf")
    with pytest.raises(CheckpointError, match="Provided rank differs from checkpoint file"):
        run(model_path, text_path, tmp_path, 1, checkpoint_in=ck, lora_r=3)
    with pytest.raises(CheckpointError, match="opt-past"):
        run(model_path, text_path, tmp_path, 1, checkpoint_in=ck, opt_past=2)


def test_only_write_lora_writes_the_checkpoint_adapter(tmp_path, model_path, text_path):
    run(model_path, text_path, tmp_path, 3)
    out = tmp_path / "again.gguf"
    result = ggtune.finetune(model_path, text_path, lora_out=str(out), checkpoint_in=str(tmp_path / "ck-LATEST.gguf"),
                             only_write_lora=True, **COMMON)
    assert result.written == [str(out)] and result.losses == []
    assert out.read_bytes() == (tmp_path / "lora-LATEST.gguf").read_bytes()


def test_norm_adapters_need_a_format_that_carries_them(tmp_path, model_path, text_path):
    with pytest.raises(ValueError, match="--rank-att-norm 1: attn_norm cannot be trained.*--lora-format ggla"):
        run(model_path, text_path, tmp_path, 1, rank_att_norm=1)
    result = run(model_path, text_path, tmp_path, 2, lora_format="ggla", rank_att_norm=1)
    assert any(name.endswith("attn_norm.weight") for name in result.trained_tensors)
    assert (tmp_path / "lora-LATEST.gguf").read_bytes()[:4] == (0x67676C61).to_bytes(4, "little")


@pytest.fixture
def small_runtime(monkeypatch):
    """The plan's measured runtime fixed at 50 MiB: in a long test session this process's own heap
    (what the trainer measures) would otherwise decide how many layers the budget has room for."""
    monkeypatch.setattr(trainer, "current_anon_rss", lambda: 50 * 2**20)


def test_keep_layers_trains_like_full_recompute(tmp_path, model_path, text_path, small_runtime):
    """Keeping the last layers' intermediates changes the speed and the memory plan, not the result."""
    full = run(model_path, text_path, tmp_path / "a", 2, keep_layers=0)
    kept = run(model_path, text_path, tmp_path / "b", 2, keep_layers=1)
    chosen = run(model_path, text_path, tmp_path / "d", 2)  # the default budget has room for every layer
    assert (full.kept_layers, kept.kept_layers, chosen.kept_layers) == (0, 1, 2)
    assert kept.losses == full.losses == chosen.losses
    with pytest.raises(ValueError, match="--keep-layers: expected an integer >= 0, got -1"):
        run(model_path, text_path, tmp_path / "c", 1, keep_layers=-1)


def test_memory_budget_is_checked_and_printed(tmp_path, model_path, text_path, capsys, small_runtime):
    for bad in (0, -5.0, float("nan")):
        with pytest.raises(ValueError, match=f"--memory-budget: expected a number > 0, got {bad!r}"):
            run(model_path, text_path, tmp_path, 1, memory_budget=bad)
    with pytest.raises(ValueError, match="--memory-budget 1: the memory plan needs .* MiB with 0 of 2 layers"):
        run(model_path, text_path, tmp_path, 1, memory_budget=1, keep_layers=0)
    result = run(model_path, text_path, tmp_path, 1, memory_budget=2000, verbose=True)
    err = capsys.readouterr().err
    assert result.kept_layers == 2
    assert "activations kept by 2 of 2 layers" in err
    assert "every layer keeps its activations" in err and "2000 MiB (--memory-budget)" in err


def test_bad_data_is_refused_before_any_work(tmp_path, model_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(ValueError, match="empty.txt"):
        run(model_path, str(empty), tmp_path, 1)
    binary = tmp_path / "bad.txt"
    binary.write_bytes(b"ok \xff\xfe not utf-8")
    with pytest.raises(ValueError, match="bad.txt"):
        run(model_path, str(binary), tmp_path, 1)
    assert not list(tmp_path.glob("ck-*")) and not list(tmp_path.glob("lora-*"))


def test_unknown_option_names_the_closest(model_path, text_path):
    with pytest.raises(TypeError, match="adam_alpha"):
        ggtune.finetune(model_path, text_path, adam_alfa=1e-3)


def test_chat_data_trains_on_assistant_tokens(tmp_path, model_path):
    chat = tmp_path / "chat.jsonl"
    lines = [json.dumps({"messages": [{"role": "user", "content": f"say {w}"},
                                      {"role": "assistant", "content": f"{w} {w} {w}"}]})
             for w in ("apple", "river", "winter", "cat")] * 3
    chat.write_text("\n".join(lines))
    result = run(model_path, str(chat), tmp_path, 3, train_format="chat", ctx=32)
    assert len(result.losses) == 3 and np.isfinite(result.losses).all()


def _cli(*args, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "ggtune.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def test_cli_help_lists_every_flag_with_defaults():
    out = subprocess.run([sys.executable, "-m", "ggtune.cli", "finetune", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for flag in ("--model-base", "--train-data", "--checkpoint-in", "--lora-out", "--adam-iter", "--rank-wq",
                 "--no-checkpointing", "--separate-with-eos", "--no-separate-with-bos", "--cos-decay-restart",
                 "--gpu-layers", "-ngl", "--escape", "--only-write-lora"):
        assert flag in out.stdout, flag
    assert "default: 256" in out.stdout


def test_cli_sigint_saves_checkpoint_and_adapter(tmp_path, model_path, text_path):
    proc = _cli("finetune", "--model_base", model_path, "--train_data", text_path, "--checkpoint-in", "",
                "--checkpoint-out", str(tmp_path / "ck-ITERATION.gguf"), "--lora-out", str(tmp_path / "lora.gguf"),
                "--ctx", "16", "--batch", "2", "--adam-iter", "100000", "--save-every", "0")
    deadline = time.time() + 120
    for line in proc.stderr:  # wait until training is under way
        if "finetune [" in line or time.time() > deadline:
            break
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert (tmp_path / "lora.gguf").exists() and (tmp_path / "ck-LATEST.gguf").exists()
    assert load_checkpoint(tmp_path / "ck-LATEST.gguf").counters.iteration_count >= 1
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".partial")]


def test_cli_bad_model_is_one_line_error(tmp_path, text_path):
    proc = _cli("finetune", "--model-base", str(tmp_path / "missing.gguf"), "--train-data", text_path)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0 and "missing.gguf" in err and "Traceback" not in err


def test_profile_and_memory_plan_are_printed(tmp_path, model_path, text_path, capsys):
    result = run(model_path, text_path, tmp_path, 2, profile=True, verbose=True)
    err = capsys.readouterr().err
    assert "memory plan:" in err and "total (expected peak RSS)" in err
    assert err.count("profile of iteration") == 2
    assert "matmul[Q8_0]" in err and "matmul_backward[Q8_0]" in err and "attention_backward" in err
    assert result.memory_plan_bytes > 0 and result.peak_rss_bytes > 0
