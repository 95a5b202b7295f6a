"""ggtune plot: the curves of a metrics log, and a clear message without matplotlib."""

import json
import subprocess
import sys

import pytest

from ggtune.plot import MISSING, last_run, smoothed


def write_log(path, n=40):
    with open(path, "w") as f:
        for i in range(1, n + 1):
            record = {"iteration": i, "loss": 3.0 - i / n, "lr": 1e-3, "grad_norm": 1.0, "tokens_per_s": 500.0}
            if i % 10 == 0:
                record.update(val_loss=3.2 - i / n, val_ppl=1.0)
            f.write(json.dumps(record) + "\n")


def test_smoothing_is_a_debiased_moving_average():
    assert smoothed([2.0, 2.0, 2.0], weight=0.9) == pytest.approx([2.0, 2.0, 2.0])  # no pull towards 0
    out = smoothed([0.0, 10.0], weight=0.5)
    assert out == pytest.approx([0.0, (0.5 * 0.0 * 0.5 + 0.5 * 10.0) / (1 - 0.25)])


def test_a_resumed_log_is_one_history():
    records = [{"iteration": 1, "loss": 5}, {"iteration": 2, "loss": 4}, {"iteration": 1, "loss": 3}]
    assert [r["loss"] for r in last_run(records)] == [3, 4]


def test_cli_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")  # a test dependency: present in CI (the test extra)
    log = tmp_path / "run.metrics.jsonl"
    write_log(log)
    out = tmp_path / "curves.png"
    proc = subprocess.run([sys.executable, "-m", "ggtune.cli", "plot", str(log), "-o", str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "40 iterations" in proc.stdout
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_cli_plot_without_matplotlib_says_how_to_get_it(tmp_path):
    log = tmp_path / "run.metrics.jsonl"
    write_log(log)
    hide = "import sys; sys.modules['matplotlib'] = None; from ggtune.cli import main; sys.exit(main())"
    proc = subprocess.run([sys.executable, "-c", hide, "plot", str(log), "-o", str(tmp_path / "c.png")],
                          capture_output=True, text=True)
    assert proc.returncode == 1 and MISSING in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "c.png").exists()


def test_cli_plot_bad_log_is_one_line(tmp_path):
    log = tmp_path / "bad.jsonl"
    log.write_text("not json\n{}\n")
    proc = subprocess.run([sys.executable, "-m", "ggtune.cli", "plot", str(log), "-o", str(tmp_path / "c.png")],
                          capture_output=True, text=True)
    assert proc.returncode == 1 and "bad.jsonl:1" in proc.stderr and "Traceback" not in proc.stderr
