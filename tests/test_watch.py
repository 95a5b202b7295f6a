"""Watching a run: the metrics log, validation loss, early stopping and the BEST adapter."""

import json
import math

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T

from ggtune.adapters import read_gguf_adapter
from ggtune.metrics import default_metrics_path, read_metrics
from ggtune.model import load_model
from ggtune.validation import BestTracker, best_name
from tiny_models import write_tiny_llama

from test_trainer import COMMON as TRAINER_COMMON, TEXT, run as trainer_run, text_path  # noqa: F401 (a fixture)

COMMON = {**TRAINER_COMMON, "precision": "f32"}


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return write_tiny_llama(tmp_path_factory.mktemp("m") / "tiny.gguf", byte_vocab=True, weight_type=T.Q8_0,
                            n_head=4, n_head_kv=2, tied=True, n_embd=64, n_ff=96, n_ctx=64)


def run(model_path, data, out, iterations, checkpoint_in="", **extra):
    """test_trainer's run at float32 (the watch tests compare exact losses)."""
    return trainer_run(model_path, data, out, iterations, checkpoint_in, **{"precision": "f32", **extra})


def test_metrics_log_has_a_line_per_iteration_and_a_resume_appends(tmp_path, model_path, text_path):
    first = run(model_path, text_path, tmp_path, 3)
    path = tmp_path / "lora.metrics.jsonl"
    assert first.metrics_path == str(path) == default_metrics_path(str(tmp_path / "lora-ITERATION.gguf"))
    records = read_metrics(str(path))
    assert [r["iteration"] for r in records] == [1, 2, 3]
    for record, loss, lr, norm in zip(records, first.losses, first.learning_rates, first.grad_norms):
        assert set(record) == {"iteration", "epoch", "samples", "loss", "lr", "grad_norm", "tokens_per_s",
                               "elapsed"}
        assert record["loss"] == loss and record["lr"] == lr and record["grad_norm"] == norm > 0
        assert record["tokens_per_s"] > 0 and record["elapsed"] > 0 and 0 < record["epoch"] < 1
        assert record["samples"] == 2 * record["iteration"]  # batch 2, one sample per row
    assert records[1]["elapsed"] > records[0]["elapsed"]
    run(model_path, text_path, tmp_path, 2, checkpoint_in=str(tmp_path / "ck-LATEST.gguf"))
    assert [r["iteration"] for r in read_metrics(str(path))] == [1, 2, 3, 4, 5]
    # a fresh run starts the log anew; '' writes none
    run(model_path, text_path, tmp_path, 1)
    assert [r["iteration"] for r in read_metrics(str(path))] == [1]
    none = run(model_path, text_path, tmp_path / "quiet", 1, metrics="")
    assert none.metrics_path == "" and not list((tmp_path / "quiet").glob("*.jsonl"))


def test_metrics_log_reader_names_file_and_line(tmp_path):
    bad = tmp_path / "m.jsonl"
    bad.write_text('{"iteration": 1, "loss": 2.0}\nnot json\n{"iteration": 3}\n')
    with pytest.raises(ValueError, match=r"m.jsonl:2: not a JSON metrics record"):
        read_metrics(str(bad))
    bad.write_text('{"iteration": 1, "loss": 2.0}\n{"iterat')  # cut short by a kill: skipped
    assert len(read_metrics(str(bad))) == 1


def test_validation_loss_is_the_held_out_cross_entropy_of_the_adapter(tmp_path, model_path, text_path):
    """--val-split on plain text holds out the last tokens; the loss reported after the last step
    is the mean cross-entropy of the adapted model (scored by the inference forward) on them."""
    result = run(model_path, text_path, tmp_path, 4, val_split=0.2, eval_every=2)
    assert [it for it, _ in result.val_losses] == [0, 2, 4]  # 0: before the first step
    assert [r.get("val_loss") for r in read_metrics(result.metrics_path)] == [
        result.val_losses[0][1], None, result.val_losses[1][1], None, result.val_losses[2][1]]
    assert result.val_losses[-1][1] < result.val_losses[0][1]
    model = load_model(model_path, precision="f32", lora=[(str(tmp_path / "lora-LATEST.gguf"), 1.0)])
    tokens = np.asarray(model.tokenize(TEXT), np.int32)
    cut = int(len(tokens) * 0.8)
    windows = [tokens[b: b + 16] for b in range(cut, len(tokens) - 1, 16)]
    losses = [model.token_losses(np.concatenate([[model.tokenizer.bos_id], w])[None].astype(np.int32))
              for w in windows]
    expected = float(np.concatenate([l.reshape(-1) for l in losses]).astype(np.float64).mean())
    assert result.val_losses[-1][1] == pytest.approx(expected, rel=2e-4)
    assert result.val_perplexities[-1][1] == pytest.approx(math.exp(expected), rel=1e-3)
    assert result.best_val_loss == min(loss for it, loss in result.val_losses if it > 0)


def test_early_stop_keeps_the_best_adapter(tmp_path, model_path, text_path):
    """A learning rate far too high makes the held-out loss climb: --early-stop 2 stops two
    evaluations after the best one, whose adapter is the BEST file."""
    result = run(model_path, text_path, tmp_path, 30, val_split=0.2, eval_every=1, early_stop=2,
                 adam_alpha=0.5, warmup=0, save_every=1, adam_gclip=0.0)
    assert "--early-stop 2" in result.stopped_by
    trained = result.val_losses[1:]  # [0] is the base model's, before the first step
    losses = [loss for _, loss in trained]
    best_at = int(np.argmin(losses))
    assert len(losses) == best_at + 3 < 30
    best_iteration = trained[best_at][0]
    alpha, best = read_gguf_adapter(tmp_path / "lora-BEST.gguf")
    _, same = read_gguf_adapter(tmp_path / f"lora-{best_iteration}.gguf")
    for name, (a, b) in best.items():
        np.testing.assert_array_equal(a, same[name][0])
        np.testing.assert_array_equal(b, same[name][1])
    assert str(tmp_path / "lora-BEST.gguf") in result.written


def test_val_data_file_and_resumed_best(tmp_path, model_path, text_path):
    val = tmp_path / "val.txt"
    val.write_text("in the winter, the river freezes over while the fox sleeps. " * 4, encoding="utf-8")
    first = run(model_path, text_path, tmp_path, 2, val_data=str(val), eval_every=1)
    assert len(first.val_losses) == 3 and all(np.isfinite(l) for _, l in first.val_losses)
    second = run(model_path, text_path, tmp_path, 1, val_data=str(val), eval_every=1,
                 checkpoint_in=str(tmp_path / "ck-LATEST.gguf"))
    # the checkpoint carries the best loss: a worse evaluation after a resume does not replace BEST;
    # a resume has no baseline evaluation
    assert [it for it, _ in second.val_losses] == [3]
    assert second.best_val_loss == min(first.best_val_loss, second.val_losses[0][1])


def test_best_tracker_and_names():
    tracker = BestTracker(patience=2)
    assert tracker.update(3.0) and not tracker.update(3.5) and not tracker.should_stop
    assert not tracker.update(3.0) and tracker.should_stop  # equal is not better
    assert best_name("out/lora-ITERATION-f32.gguf") == "out/lora-BEST-f32.gguf"
    assert best_name("adapter.gguf") == "adapter-BEST.gguf"
    assert default_metrics_path("out/ggml-lora-ITERATION-f32.gguf") == "out/ggml-lora-f32.metrics.jsonl"
    assert default_metrics_path("adapter.gguf") == "adapter.metrics.jsonl"


@pytest.mark.parametrize("extra, message", [
    (dict(val_split=1.5), "--val-split: expected a fraction"),
    (dict(val_split=0.1, val_data="x.txt"), "--val-split and --val-data"),
    (dict(val_data="missing.txt"), "--val-data: missing.txt: no such file"),
    (dict(early_stop=2), "--early-stop: needs validation data"),
    (dict(early_stop=2, val_split=0.1), "--early-stop: needs --eval-every"),
    (dict(eval_every=-1), "--eval-every: expected >= 0"),
])
def test_bad_validation_options_are_refused(tmp_path, model_path, text_path, extra, message):
    with pytest.raises(ValueError, match=message):
        run(model_path, text_path, tmp_path, 1, **extra)


def test_val_split_too_large_for_the_data(tmp_path, model_path):
    chat = tmp_path / "one.jsonl"
    chat.write_text(json.dumps({"prompt": "a", "completion": "b"}) + "\n")
    with pytest.raises(ValueError, match="one.jsonl has 1 samples, too few"):
        run(model_path, str(chat), tmp_path, 1, val_split=0.5)


def test_cli_help_shows_the_new_flags():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "ggtune.cli", "finetune", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for flag in ("--val-data", "--val-split", "--eval-every", "--early-stop", "--metrics", "--pack",
                 "--lora-dropout", "--rslora", "--lora-targets", "--train-format"):
        assert flag in out.stdout, flag
    assert "default: 'auto'" in out.stdout and "completion" in out.stdout


def test_cli_metrics_and_bad_option_are_one_line(tmp_path, model_path, text_path):
    import subprocess
    import sys

    base = [sys.executable, "-m", "ggtune.cli", "finetune", "--model-base", model_path, "--train-data", text_path,
            "--checkpoint-in", "", "--checkpoint-out", "", "--lora-out", str(tmp_path / "a.gguf"), "--ctx", "16",
            "--batch", "2", "--adam-iter", "2", "--quiet"]
    ok = subprocess.run(base + ["--metrics", str(tmp_path / "m.jsonl"), "--val-split", "0.1", "--eval-every", "1"],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    records = read_metrics(str(tmp_path / "m.jsonl"))
    assert [r["iteration"] for r in records] == [0, 1, 2]
    assert all("val_loss" in r for r in records) and "loss" not in records[0]
    bad = subprocess.run(base + ["--lora-dropout", "1.5"], capture_output=True, text=True)
    assert bad.returncode == 1 and "--lora-dropout: expected a probability" in bad.stderr
    assert "Traceback" not in bad.stderr


class CountingGraph:
    """Stands in for the Graph: records the targets it is asked to score."""

    def __init__(self):
        self.scored = []

    def loss_and_grads(self, inputs, targets, grads, **layout):
        assert grads is None  # evaluation never asks for gradients
        kept = targets[targets >= 0]
        self.scored += kept.tolist()
        return float(len(kept)), len(kept)


@pytest.mark.parametrize("pack", [False, True])
def test_evaluation_scores_what_training_trains_on(pack):
    from ggtune.data import Samples
    from ggtune.validation import Evaluator

    tokens = np.arange(10, 30, dtype=np.int32)
    trainable = np.zeros(20, bool)
    trainable[[3, 4, 12, 13, 14]] = True  # the answers
    chat = Samples(source="v", tokens=tokens, begins=np.array([0, 8]), sizes=np.array([8, 12]), trainable=trainable)
    graph = CountingGraph()
    result = Evaluator(graph, chat, n_ctx=16, n_batch=1, bos_id=1, eos_id=2, pack=pack).evaluate()
    assert sorted(graph.scored) == tokens[trainable].tolist() and result.n_tokens == 5
    text = Samples(source="t", tokens=tokens, begins=np.array([0, 8]), sizes=np.array([8, 12]))
    graph = CountingGraph()
    Evaluator(graph, text, n_ctx=16, n_batch=2, bos_id=1, eos_id=2, pack=pack).evaluate()
    assert sorted(graph.scored) == tokens[:8].tolist() + tokens[8:20].tolist()[:12]  # no padding EOS
