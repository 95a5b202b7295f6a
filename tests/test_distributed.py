"""Data-parallel training over MPI (ggtune.distributed): `mpirun -n 2` trains like one process with the
same global batch, resumes across rank counts, refuses differing inputs, and stops when a rank hangs.

The MPI runs use 1 thread per rank and precision f32: int8 rounds activations to 8 bits, so a float
difference of 1e-9 between two summation orders can flip a rounding and the runs drift apart by more
than 1e-5 (they train alike, not bit-alike). Adam's first update of an element is about ±0.64·lr
whatever the gradient's size, so elements whose gradient is near Adam's eps (1e-8) amplify rounding
by ~lr/eps; the default learning rate 1e-3 keeps that below the 1e-5 bound after 4 steps."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import types

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T

import ggtune
from ggtune import distributed
from ggtune.checkpoint import load_checkpoint
from tiny_models import write_tiny_llama

TEXT = ("The quick brown fox jumps over the lazy dog while the cat watches the rain. " * 30
        + "Another line with other words: in the winter, the river freezes over. " * 20)
# adam_gclip 0.5 is below these runs' gradient norms (0.7-0.9): the clip acts, on the global norm
COMMON = dict(ctx=16, batch=4, lora_r=2, adam_alpha=1e-3, warmup=2, adam_gclip=0.5, seed=11, save_every=0,
              threads=1, precision="f32", verbose=False)
HERE = os.path.dirname(os.path.abspath(__file__))
MPIRUN = shutil.which("mpirun", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))


def _has_mpi4py() -> bool:
    try:
        import mpi4py  # noqa: F401  (imported, not initialized: that happens under mpirun only)
    except ImportError:
        return False
    return True


needs_mpi = pytest.mark.skipif(MPIRUN is None or not _has_mpi4py(),
                               reason="needs mpirun and mpi4py (pip install '.[test]' installs both)")


# ----------------------------------------------------------------------------- without MPI
def test_rows_are_split_by_sample_and_cover_the_batch():
    for n_rows, size in ((4, 2), (3, 2), (8, 3), (5, 5)):
        shares = [distributed.split_rows(n_rows, size, r) for r in range(size)]
        assert shares[0].start == 0 and shares[-1].stop == n_rows
        assert all(a.stop == b.start for a, b in zip(shares, shares[1:]))
        counts = [s.stop - s.start for s in shares]
        assert max(counts) - min(counts) <= 1 and counts == sorted(counts, reverse=True)


def test_one_process_without_a_launcher(monkeypatch):
    for var in distributed.LAUNCHER_SIZE_VARS + distributed.LAUNCHER_RANK_VARS:
        monkeypatch.delenv(var, raising=False)
    assert isinstance(distributed.connect(10.0), distributed.Solo)


def test_launched_as_several_processes_without_mpi4py_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "4")
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # import mpi4py now raises ImportError
    with pytest.raises(distributed.DistributedError, match="4 processes.*mpi4py is not installed"):
        distributed.connect(10.0)
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "1")  # mpirun -n 1: one process, as today
    assert isinstance(distributed.connect(10.0), distributed.Solo)


def test_a_launcher_whose_processes_each_see_mpi_alone_is_a_clear_error(monkeypatch):
    # an mpi4py bound to another MPI than the launcher's (or srun without --mpi=pmix): N lone processes
    alone = types.SimpleNamespace(COMM_WORLD=types.SimpleNamespace(Get_size=lambda: 1),
                                  Get_library_version=lambda: "Some MPI 1.0\nbuilt somewhere")
    monkeypatch.setitem(sys.modules, "mpi4py", types.SimpleNamespace(MPI=alone))
    monkeypatch.setitem(sys.modules, "mpi4py.MPI", alone)
    monkeypatch.setenv("PMI_SIZE", "3")
    with pytest.raises(distributed.DistributedError, match="started 3 processes but MPI sees each one alone.*Some MPI"):
        distributed.connect(10.0)


def test_mpi_timeout_must_be_positive(tmp_path, inputs):
    with pytest.raises(ValueError, match="--mpi-timeout: expected a positive number of seconds, got 0"):
        ggtune.finetune(**_kwargs(inputs, str(tmp_path), 1, mpi_timeout=0))


def test_file_digest_tells_files_apart(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    data = os.urandom(3 << 20)
    a.write_bytes(data)
    b.write_bytes(data)
    c.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # one bit in the last MiB
    assert distributed.file_digest(a) == distributed.file_digest(b) != distributed.file_digest(c)


# ----------------------------------------------------------------------------- under mpirun
@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("mpi")
    model = write_tiny_llama(root / "tiny.gguf", byte_vocab=True, weight_type=T.Q8_0, n_head=4, n_head_kv=2,
                             tied=True, n_embd=64, n_ff=96, n_ctx=64)
    text = root / "train.txt"
    text.write_text(TEXT, encoding="utf-8")
    return str(model), str(text)


def _kwargs(inputs, out, iterations, **extra):
    os.makedirs(out, exist_ok=True)
    return {"model_base": inputs[0], "train_data": inputs[1], "lora_out": os.path.join(out, "lora-ITERATION.gguf"),
            "checkpoint_out": os.path.join(out, "ck-ITERATION.gguf"), "checkpoint_in": "", "adam_iter": iterations,
            **COMMON, **extra}


def _mpirun(tmp_path, n, kwargs, per_rank=None, cli=False):
    """Starts `mpirun -n n` on tests/mpi_driver.py; returns (process, spec)."""
    spec = {"kwargs": kwargs, "per_rank": per_rank or {}, "result": str(tmp_path / f"result-{time.time_ns()}.json"),
            "pids": str(tmp_path), "cli": cli}
    spec_path = tmp_path / f"spec-{time.time_ns()}.json"
    spec_path.write_text(json.dumps(spec))
    root = ["--allow-run-as-root"] if os.geteuid() == 0 else []
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.dirname(ggtune.__path__[0]), HERE])}
    # --oversubscribe: a 1-core machine still runs both ranks (and no rank is pinned to a busy core)
    proc = subprocess.Popen([MPIRUN, *root, "--oversubscribe", "-n", str(n), sys.executable, os.path.join(HERE, "mpi_driver.py"),
                             str(spec_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    return proc, spec


def _mpirun_ok(tmp_path, n, kwargs):
    proc, spec = _mpirun(tmp_path, n, kwargs)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err + out
    return json.load(open(spec["result"]))


def _max_lora_difference(path_a, path_b) -> float:
    a, b = load_checkpoint(path_a), load_checkpoint(path_b)
    assert a.lora.keys() == b.lora.keys()
    return max(float(np.abs(a.lora[n][i] - b.lora[n][i]).max()) for n in a.lora for i in (0, 1))


@needs_mpi
@pytest.mark.parametrize("extra", [{}, {"grad_acc": 2, "batch": 3},
                                   {"lora_dropout": 0.2, "pack": True, "val_split": 0.1, "eval_every": 2, "batch": 3}],
                         ids=["plain", "grad_acc-uneven-split", "dropout-packed-validation"])
def test_two_ranks_train_like_one_process(tmp_path, inputs, extra):
    two = _mpirun_ok(tmp_path, 2, _kwargs(inputs, str(tmp_path / "two"), 4, **extra))
    one = ggtune.finetune(**_kwargs(inputs, str(tmp_path / "one"), 4, **extra))
    assert two["iterations"] == one.iterations == 4
    assert np.abs(np.array(two["losses"]) - one.losses).max() <= 1e-5
    assert _max_lora_difference(tmp_path / "one" / "ck-LATEST.gguf", tmp_path / "two" / "ck-LATEST.gguf") <= 1e-5
    a, b = load_checkpoint(tmp_path / "one" / "ck-LATEST.gguf"), load_checkpoint(tmp_path / "two" / "ck-LATEST.gguf")
    assert vars(a.counters) == vars(b.counters) and a.shuffle == b.shuffle  # the same samples, in the same order
    assert len(two["exchange_seconds"]) == 4 and all(t > 0 for t in two["exchange_seconds"])
    assert not [p for p in os.listdir(tmp_path / "two") if p.endswith(".partial")]


@needs_mpi
@pytest.mark.parametrize("first, then", [(2, 1), (1, 2)], ids=["2-ranks-then-1", "1-then-2-ranks"])
def test_a_checkpoint_resumes_on_another_number_of_ranks(tmp_path, inputs, first, then):
    def train(n_ranks, out, iterations, **extra):
        kwargs = _kwargs(inputs, str(tmp_path / out), iterations, **extra)
        if n_ranks == 1:
            return ggtune.finetune(**kwargs).losses
        return _mpirun_ok(tmp_path, n_ranks, kwargs)["losses"]

    train(first, "first", 2)
    # on 2 ranks, rank 0 alone reads the checkpoint and sends it to rank 1
    resumed = train(then, "resumed", 2, checkpoint_in=str(tmp_path / "first" / "ck-LATEST.gguf"))
    straight = train(1, "straight", 4)
    assert load_checkpoint(tmp_path / "resumed" / "ck-LATEST.gguf").counters.iteration_count == 4
    assert np.abs(np.array(resumed) - straight[2:]).max() <= 1e-5
    assert _max_lora_difference(tmp_path / "resumed" / "ck-LATEST.gguf",
                                tmp_path / "straight" / "ck-LATEST.gguf") <= 1e-5


@needs_mpi
def test_inputs_that_differ_between_ranks_are_refused_on_every_rank(tmp_path, inputs):
    other = tmp_path / "other.txt"
    other.write_text(TEXT.upper(), encoding="utf-8")
    options = {k: v for k, v in _kwargs(inputs, str(tmp_path / "out"), 4).items() if not isinstance(v, bool)}
    proc, _ = _mpirun(tmp_path, 2, options, per_rank={"1": {"train_data": str(other), "ctx": 32}}, cli=True)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode != 0 and "Traceback" not in err
    lines = [line for line in err.splitlines() if "differ between ranks" in line]
    assert len(lines) == 2, err  # one per rank
    assert "--train-data differs on rank 1" in lines[0] and "--ctx differs on rank 1 (32) from rank 0 (16)" in lines[0]
    assert not os.path.exists(tmp_path / "out" / "ck-LATEST.gguf")


@needs_mpi
@pytest.mark.parametrize("fault", [signal.SIGSTOP, signal.SIGKILL], ids=["hangs", "dies"])
def test_a_rank_that_hangs_or_dies_stops_the_others_within_the_timeout(tmp_path, inputs, fault):
    kwargs = _kwargs(inputs, str(tmp_path / "out"), 100000, mpi_timeout=5.0, verbose=True)
    proc, _ = _mpirun(tmp_path, 2, kwargs)
    deadline = time.time() + 120
    for line in proc.stderr:  # wait until training is under way
        if "finetune [" in line or time.time() > deadline:
            break
    victim = int((tmp_path / "1").read_text())
    os.kill(victim, fault)
    stopped_at = time.time()
    try:
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.returncode is None:
            os.kill(victim, signal.SIGKILL)
    waited = time.time() - stopped_at
    assert proc.returncode != 0 and "Traceback" not in err
    if fault == signal.SIGSTOP:  # our deadline; where rank 1 stopped decides which of the two it says
        assert "rank 0 of 2: the gradient exchange of step" in err and "within 5 s" in err, err
        assert "rank 1 never arrived" in err or "every rank arrived, but one stopped responding" in err, err
    else:  # mpirun notices the dead rank at once and stops rank 0, which says why
        assert "rank 0 of 2: terminated by the MPI launcher" in err, err
    assert waited < 5.0 + 30.0, waited  # the bound plus mpirun's own teardown on a loaded machine


@needs_mpi
def test_sigint_to_one_rank_stops_every_rank_after_the_same_step_with_a_save(tmp_path, inputs):
    options = {k: v for k, v in _kwargs(inputs, str(tmp_path / "out"), 100000).items() if not isinstance(v, bool)}
    proc, _ = _mpirun(tmp_path, 2, options, cli=True)
    deadline = time.time() + 120
    for line in proc.stderr:  # wait until training is under way
        if "finetune [" in line or time.time() > deadline:
            break
    os.kill(int((tmp_path / "1").read_text()), signal.SIGINT)  # rank 1, which prints nothing else
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err, err
    ck = load_checkpoint(tmp_path / "out" / "ck-LATEST.gguf")
    assert ck.counters.iteration_count >= 1 and (tmp_path / "out" / "lora-LATEST.gguf").exists()
    assert f"wrote {tmp_path / 'out' / 'ck-'}" in err


@needs_mpi
def test_an_error_on_rank_0_alone_stops_the_job_at_once(tmp_path, inputs):
    # only rank 0 writes, so only rank 0 finds that the checkpoint's "directory" is a file
    (tmp_path / "a-file").write_text("")
    kwargs = _kwargs(inputs, str(tmp_path / "out"), 2, checkpoint_out=str(tmp_path / "a-file" / "ck-ITERATION.gguf"))
    started = time.time()
    proc, _ = _mpirun(tmp_path, 2, kwargs)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode != 0 and "Traceback" not in err, err
    assert "rank 0 of 2:" in err and "a-file" in err and "stopping every rank" in err, err
    assert time.time() - started < COMMON.get("mpi_timeout", 300.0)  # not the timeout: an abort at once


@needs_mpi
def test_a_rank_that_never_starts_training_stops_the_others_within_the_timeout(tmp_path, inputs):
    spec = {"kwargs": _kwargs(inputs, str(tmp_path / "out"), 2, mpi_timeout=5.0), "result": str(tmp_path / "r.json")}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    root = ["--allow-run-as-root"] if os.geteuid() == 0 else []
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.dirname(ggtune.__path__[0]), HERE])}
    started = time.time()
    # MPMD: rank 0 trains, rank 1 joins MPI and then sleeps instead
    done = subprocess.run([MPIRUN, *root, "--oversubscribe", "-n", "1", sys.executable,
                           os.path.join(HERE, "mpi_driver.py"), str(tmp_path / "spec.json"), ":", "-n", "1",
                           sys.executable, "-c", "from mpi4py import MPI; import time; time.sleep(120)"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "rank 0 of 2: not every rank started training within 5 s" in done.stderr, done.stderr
    assert time.time() - started < 5.0 + 30.0
