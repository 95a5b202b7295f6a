"""ggtune demo on a tiny model: held-out figures, the metrics log with validation, and the curves."""

import pytest
from gguf import GGMLQuantizationType as T

from ggtune.demo import run_demo
from ggtune.metrics import read_metrics
from tiny_models import write_tiny_llama


def test_demo_writes_adapter_metrics_and_curves(tmp_path, capsys):
    pytest.importorskip("matplotlib")  # a test dependency (the test extra)
    model = write_tiny_llama(tmp_path / "tiny.gguf", byte_vocab=True, weight_type=T.Q8_0, n_head=4, n_head_kv=2,
                             tied=True, n_embd=64, n_ff=96, n_ctx=128)
    text = tmp_path / "t.txt"
    text.write_text("the river freezes over in the winter while the fox sleeps. " * 40)
    out = run_demo(iterations=3, lora_out=str(tmp_path / "demo.gguf"), text_path=str(text), model_path=model,
                   verbose=False)
    records = read_metrics(str(tmp_path / "demo.metrics.jsonl"))
    assert [r["iteration"] for r in records] == [0, 1, 2, 3] and "val_loss" in records[-1]
    assert out["curves"] == str(tmp_path / "demo-curves.png")
    assert (tmp_path / "demo-curves.png").read_bytes()[:4] == b"\x89PNG"
    assert "training curves drawn in" in capsys.readouterr().out
