"""Hostile inputs and faults, one test per case of the hardening issue: out-of-range options,
non-finite training, damaged adapters and models, overwritten inputs, deep JSON, undecodable
text, foreign checkpoints, full disks, kill -9, umask, SIGTERM, the memory plan, token_embd
adapters on untied models. Every refusal is one line naming the file or option."""

from __future__ import annotations

import errno
import json
import math
import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T

import gguf
import ggtune
from ggtune import atomic
from ggtune.adapters import AdapterError, read_gguf_adapter
from ggtune.checkpoint import load_checkpoint
from ggtune.cli import main as cli
from ggtune.finite import TrainingDiverged
from ggtune.gguf_io import GGUFError, read_model_gguf
from ggtune.graph import Graph
from ggtune.options import options_from_kwargs
from tiny_models import tensor_shapes, TinyConfig, write_tiny_llama

TEXT = "The quick brown fox jumps over the lazy dog while the cat watches the rain. " * 30
COMMON = dict(ctx=16, batch=2, lora_r=2, adam_alpha=1e-2, warmup=2, seed=3, save_every=0, verbose=False,
              checkpoint_in="", checkpoint_out="")
CFG = TinyConfig(byte_vocab=True, tied=False, n_embd=32, n_ff=64, n_head=4, n_head_kv=2, n_ctx=64)


@pytest.fixture
def model(tmp_path):
    return write_tiny_llama(tmp_path / "model.gguf", CFG)


@pytest.fixture
def text(tmp_path):
    path = tmp_path / "train.txt"
    path.write_text(TEXT)
    return str(path)


def one_error_line(capsys, *names: str) -> str:
    """The command's stderr: exactly one `ggtune X: error:` line, mentioning each of names."""
    err = capsys.readouterr().err
    lines = [line for line in err.split("\n") if line.strip()]
    assert len(lines) == 1 and " error: " in lines[0] and "Traceback" not in err, err
    for name in names:
        assert name in lines[0], (name, lines[0])
    return lines[0]


# ---- options out of range ------------------------------------------------------------------------

@pytest.mark.parametrize("option, value, expected", [
    ("adam_alpha", math.nan, "--adam-alpha: expected a number >= 0, got nan"),
    ("adam_alpha", math.inf, "--adam-alpha: expected a number >= 0, got inf"),
    ("lora_alpha", math.nan, "--lora-alpha: expected a number > 0"),
    ("adam_gclip", math.nan, "--adam-gclip: expected a number >= 0"),
    ("adam_beta1", 2.0, r"--adam-beta1: expected a number in \[0, 1\), got 2.0"),
    ("adam_decay", -1.0, "--adam-decay: expected a number >= 0, got -1.0"),
    ("rope_freq_scale", 0.0, "--rope-freq-scale: expected a number > 0, got 0.0"),
    ("threads", -1, r"--threads: expected an integer in \[0, 512\], got -1"),
    ("threads", 10000, r"--threads: expected an integer in \[0, 512\], got 10000"),
    ("cos_decay_min", 2.0, r"--cos-decay-min: expected a number in \[0, 1\]"),
    ("epochs", -2, "--epochs: expected an integer >= -1, got -2"),
    ("ctx", 1.5, "--ctx: expected an integer >= 1, got 1.5"),
])
def test_finetune_refuses_values_outside_their_range(model, text, option, value, expected):
    with pytest.raises(ValueError, match=expected):
        ggtune.finetune(model, text, **{**COMMON, option: value})


def test_threads_zero_stays_every_core(model, text):
    options_from_kwargs(model_base=model, train_data=text, threads=0, epochs=-1).check()


def test_cli_out_of_range_is_one_line(model, text, tmp_path, capsys):
    assert cli(["finetune", "--model-base", model, "--train-data", text, "--adam-beta1", "2"]) == 1
    one_error_line(capsys, "--adam-beta1")
    assert cli(["generate", "-m", model, "-p", "the", "--top-p", "7"]) == 1
    assert one_error_line(capsys).endswith("--top-p: expected a number in [0, 1], got 7.0")
    assert cli(["generate", "-m", model, "-p", "the", "--n-predict", "-2"]) == 1
    one_error_line(capsys, "--n-predict", "or -1")
    assert cli(["perplexity", "-m", model, "--text", text, "--threads", "-1"]) == 1
    one_error_line(capsys, "--threads")
    assert cli(["merge", "-m", model, "--lora", text, "--lora-scale", "nan", "-o", str(tmp_path / "o")]) == 1
    one_error_line(capsys, "--lora-scale")


def test_generate_keeps_llama_cpp_meanings(model):
    from ggtune.generate import generate, sample_next

    m = ggtune.load_model(model)
    prompt = m.tokenize("the cat")
    room = m.hparams.n_ctx_train - len(prompt)
    until_end = generate(m, prompt, -1, temp=0)  # -1: until end of text or context
    assert 0 < len(until_end) <= room and until_end == generate(m, prompt, room, temp=0)
    logits = np.zeros(200, np.float32)
    rng = np.random.default_rng(0)
    drawn = {sample_next(logits, rng, temp=1.0, top_k=0, top_p=1.0) for _ in range(2000)}
    assert len(drawn) > 150  # top-k 0 is off: not 40 tokens at most
    assert len({sample_next(logits, rng, temp=1.0, top_k=40, top_p=1.0) for _ in range(500)}) <= 40


# ---- training that diverges -----------------------------------------------------------------------

def test_non_finite_loss_stops_and_keeps_the_last_good_files(model, text, tmp_path, monkeypatch):
    original, calls = Graph.loss_and_grads, []

    def nan_at_third(self, *args, **kwargs):
        calls.append(1)
        loss, rest = original(self, *args, **kwargs)
        return (math.nan if len(calls) == 3 else loss), rest

    monkeypatch.setattr(Graph, "loss_and_grads", nan_at_third)
    out = tmp_path / "out"
    with pytest.raises(TrainingDiverged, match="iteration 3: the loss is nan.*last saved files are"):
        ggtune.finetune(model, text, lora_out=str(out / "lora-ITERATION.gguf"), adam_iter=10,
                        **{**COMMON, "save_every": 2, "checkpoint_out": str(out / "ck-ITERATION.gguf")})
    assert sorted(p.name for p in out.iterdir()) == ["ck-2.gguf", "ck-LATEST.gguf", "lora-2.gguf", "lora-LATEST.gguf",
                                                     "lora.metrics.jsonl"]
    assert_strict_json_lines(out / "lora.metrics.jsonl")
    assert load_checkpoint(out / "ck-LATEST.gguf").counters.iteration_count == 2
    read_gguf_adapter(out / "lora-LATEST.gguf")  # finite, or it would be refused


def test_huge_learning_rate_diverges_without_writing_nan(model, text, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(TrainingDiverged, match=r"iteration \d+: the .*(nan|inf)"):
        ggtune.finetune(model, text, lora_out=str(out / "lora.gguf"), adam_iter=30,
                        **{**COMMON, "adam_alpha": 1e30, "adam_gclip": 0.0, "warmup": 0,
                           "checkpoint_out": str(out / "ck.gguf")})
    written = sorted(p.name for p in out.iterdir()) if out.exists() else []
    assert written in ([], ["lora.metrics.jsonl"])  # no adapter, no checkpoint
    if written:
        assert_strict_json_lines(out / written[0])


def assert_strict_json_lines(path) -> None:
    """Every line of a metrics log is JSON without NaN or Infinity (a non-finite loss is null)."""
    import json

    def refuse(constant):
        raise AssertionError(f"{path}: non-finite {constant} in the metrics log")

    for line in path.read_text().splitlines():
        json.loads(line, parse_constant=refuse)


def test_adapter_writer_refuses_nan(tmp_path):
    from ggtune.adapters import write_gguf_adapter

    a, b = np.ones((2, 8), np.float32), np.full((4, 2), np.nan, np.float32)
    with pytest.raises(AdapterError, match="not written: tensor 'blk.0.attn_q.weight.lora_b' holds nan"):
        write_gguf_adapter(tmp_path / "x.gguf", {"blk.0.attn_q.weight": (a, b)}, alpha=2.0)
    assert not list(tmp_path.iterdir())


def test_sigterm_saves_like_ctrl_c(model, text, tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "ggtune.cli", "finetune", "--model-base", model, "--train-data",
                             text, "--checkpoint-in", "", "--checkpoint-out", str(tmp_path / "ck-ITERATION.gguf"),
                             "--lora-out", str(tmp_path / "lora.gguf"), "--ctx", "16", "--batch", "2",
                             "--adam-iter", "100000", "--save-every", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    for line in proc.stderr:
        if "finetune [" in line or time.time() > deadline:
            break
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "SIGTERM received" in err and "interrupted (SIGTERM)" in err and "Traceback" not in err
    assert load_checkpoint(tmp_path / "ck-LATEST.gguf").counters.iteration_count >= 1
    read_gguf_adapter(tmp_path / "lora.gguf")


# ---- damaged adapters ----------------------------------------------------------------------------

def write_adapter(path, pairs: dict, alpha=2.0, architecture="llama"):
    w = gguf.GGUFWriter(os.fspath(path), architecture)
    w.add_type("adapter")
    w.add_string("adapter.type", "lora")
    w.add_float32("adapter.lora.alpha", alpha)
    for base, (a, b) in pairs.items():
        w.add_tensor(base + ".lora_a", np.asarray(a, np.float32))
        w.add_tensor(base + ".lora_b", np.asarray(b, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return str(path)


def good_pair(rank=2):
    rng = np.random.default_rng(0)
    n_out, n_in = tensor_shapes(CFG)["blk.0.attn_q.weight"]
    return (0.1 * rng.standard_normal((rank, n_in)), 0.1 * rng.standard_normal((n_out, rank)))


def adapter_commands(model, adapter, text, tmp_path):
    return [["perplexity", "-m", model, "--lora", adapter, "--text", text, "--ctx", "16"],
            ["generate", "-m", model, "--lora", adapter, "-p", "the", "-n", "2"],
            ["merge", "-m", model, "--lora", adapter, "-o", str(tmp_path / "merged.gguf")],
            ["export-peft", "--lora", adapter, "--model", model, "--output", str(tmp_path / "peft")]]


@pytest.mark.parametrize("damage, expected", [
    ("nan value", "tensor 'blk.0.attn_q.weight.lora_b' holds nan at index 5"),
    ("inf value", "tensor 'blk.0.attn_q.weight.lora_b' holds inf"),
    ("nan alpha", "adapter.lora.alpha is nan, expected a finite number"),
    ("inf alpha", "adapter.lora.alpha is inf"),
    ("rank 0", "blk.0.attn_q.weight.lora_a' has shape"),
    ("architecture", "an adapter for general.architecture 'gemma3', the model is 'llama'"),
])
def test_damaged_adapters_are_refused_by_every_command(model, text, tmp_path, capsys, damage, expected):
    a, b = good_pair()
    alpha, arch = 2.0, "llama"
    if damage.endswith("value"):
        b = b.copy()
        b.reshape(-1)[5] = np.nan if damage == "nan value" else np.inf
    elif damage.endswith("alpha"):
        alpha = math.nan if damage == "nan alpha" else math.inf
    elif damage == "rank 0":
        a, b = a[:0], b[:, :0]
    else:
        arch = "gemma3"
    adapter = write_adapter(tmp_path / "bad.gguf", {"blk.0.attn_q.weight": (a, b)}, alpha, arch)
    for argv in adapter_commands(model, adapter, text, tmp_path):
        assert cli(argv) == 1, argv
        one_error_line(capsys, "bad.gguf", expected)
    assert not (tmp_path / "merged.gguf").exists() and not (tmp_path / "peft").exists()


def test_alpha_zero_means_no_alpha_as_in_llama_cpp(tmp_path):
    path = write_adapter(tmp_path / "a.gguf", {"blk.0.attn_q.weight": good_pair()}, alpha=0.0)
    assert read_gguf_adapter(path)[0] is None


# ---- structurally broken model files -------------------------------------------------------------

def patch_bytes(src: str, dst: Path, reader, part: np.ndarray, value: int, width: int) -> str:
    """A copy of src with the bytes of ``part`` (a view into ``reader``'s map of src) set to value."""
    at = part.ctypes.data - reader.data.ctypes.data
    data = bytearray(Path(src).read_bytes())
    data[at:at + width] = value.to_bytes(width, "little")
    dst.write_bytes(bytes(data))
    return str(dst)


def patch_tensor_info(src: str, dst: Path, name: str, part: int, value: int, width: int = 8) -> str:
    """A copy of src with one field of a tensor's info (part: 3 dims, 4 type, 5 offset) replaced."""
    reader = gguf.GGUFReader(src)
    tensor = next(t for t in reader.tensors if t.name == name)
    return patch_bytes(src, dst, reader, tensor.field.parts[part], value, width)


def offset_of(path: str, name: str) -> int:
    return int(next(t for t in gguf.GGUFReader(path).tensors if t.name == name).field.parts[5][0])


def test_structurally_broken_models_are_refused(model, text, tmp_path, capsys):
    reader = gguf.GGUFReader(model)
    second = reader.tensors[1].name
    offset = offset_of(model, second)
    cases = {
        "misaligned": (patch_tensor_info(model, tmp_path / "misaligned.gguf", second, 5, offset + 1),
                       "not a multiple of the file's alignment 32"),
        "wraps": (patch_tensor_info(model, tmp_path / "wraps.gguf", second, 5, 2**64 - int(reader.data_offset)),
                  "wraps past 2^64"),
        "type": (patch_tensor_info(model, tmp_path / "type.gguf", reader.tensors[0].name, 4, int(T.F16), 4),
                 f"tensor '{second}' has data offset {offset}, expected"),
    }
    for label, (path, expected) in cases.items():
        with pytest.raises(GGUFError, match=re.escape(expected)):
            read_model_gguf(path)
        assert cli(["perplexity", "-m", path, "--text", text]) == 1, label
        one_error_line(capsys, os.path.basename(path), expected.split(",")[0])
    no_blocks = patch_bytes(model, tmp_path / "blocks0.gguf", reader, reader.fields["llama.block_count"].parts[-1], 0, 4)
    with pytest.raises(GGUFError, match=r"tensor 'blk.0.attn_norm.weight' does not fit block_count 0"):
        read_model_gguf(no_blocks)


# ---- merge must not overwrite its inputs ---------------------------------------------------------

def test_merge_refuses_to_overwrite_the_model(model, tmp_path, capsys):
    adapter = write_adapter(tmp_path / "a.gguf", {"blk.0.attn_q.weight": good_pair()})
    before = Path(model).read_bytes()
    link = tmp_path / "link.gguf"
    link.symlink_to(model)
    for output in (model, str(link)):
        assert cli(["merge", "-m", model, "--lora", adapter, "-o", output]) == 1
        one_error_line(capsys, "is the same file as the input", "write the merged model to a new file")
    assert cli(["merge", "-m", model, "--lora", adapter, "-o", adapter]) == 1
    one_error_line(capsys, "a.gguf")
    assert Path(model).read_bytes() == before and link.is_symlink()


# ---- inputs that used to end in a traceback ------------------------------------------------------

def test_deeply_nested_chat_json_is_a_clear_error(model, tmp_path, capsys):
    chat = tmp_path / "chat.jsonl"
    good = json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]})
    chat.write_text(good + "\n" + "[" * 100_000 + "]" * 100_000 + "\n")
    assert cli(["finetune", "--model-base", model, "--train-data", str(chat), "--train-format", "chat",
                "--checkpoint-in", "", "--quiet"]) == 1
    one_error_line(capsys, f"{chat}:2: JSON nested too deeply")


def test_undecodable_text_names_the_file(model, tmp_path, capsys):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\u00e9 au lait\n".encode("latin-1") * 20)
    assert cli(["perplexity", "-m", model, "--text", str(bad)]) == 1
    one_error_line(capsys, f"{bad}: the text is not UTF-8 text (invalid byte 0xe9")
    assert cli(["finetune", "--model-base", model, "--train-data", str(bad), "--checkpoint-in", "", "--quiet"]) == 1
    one_error_line(capsys, f"{bad}: training data is not UTF-8")


def test_checkpoint_of_another_model_names_tensor_shapes_and_file(model, text, tmp_path, capsys):
    other = write_tiny_llama(tmp_path / "other.gguf", CFG, n_embd=64, n_ff=96)
    ggtune.finetune(other, text, lora_out=str(tmp_path / "l.gguf"), adam_iter=1,
                    **{**COMMON, "checkpoint_out": str(tmp_path / "ck.gguf")})
    argv = ["finetune", "--model-base", model, "--train-data", text, "--checkpoint-in", str(tmp_path / "ck.gguf"),
            "--ctx", "16", "--batch", "2", "--lora-r", "2", "--quiet"]
    assert cli(argv) == 1
    one_error_line(capsys, "ck.gguf: tensor token_embd.weight: the checkpoint holds A (64, 2)", "needs A (32, 2)",
                   "model.gguf")


def test_full_disk_names_the_file_and_leaves_nothing(tmp_path, monkeypatch):
    from ggtune.adapters import write_gguf_adapter

    def no_space(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", no_space)
    target = tmp_path / "lora.gguf"
    with pytest.raises(atomic.OutputError, match=f"{target}: cannot write: No space left on device .the disk is full"):
        write_gguf_adapter(target, {"blk.0.attn_q.weight": good_pair()}, alpha=2.0)
    assert not list(tmp_path.iterdir())


def test_write_limit_of_the_kernel_is_a_clear_error(model, tmp_path):
    """A real failing write(2): RLIMIT_FSIZE makes the kernel refuse the merged model's bytes."""
    adapter = write_adapter(tmp_path / "a.gguf", {"blk.0.attn_q.weight": good_pair()})
    out = tmp_path / "out" / "merged.gguf"
    code = ("import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
            "resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000)); from ggtune.cli import main; "
            f"sys.exit(main(['merge', '-m', {model!r}, '--lora', {adapter!r}, '-o', {str(out)!r}, '--outtype', 'f32']))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"))
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.startswith(f"ggtune merge: error: {out}: cannot write: ") and proc.stderr.count("\n") == 1
    assert not list(out.parent.iterdir())


# ---- temporaries and permissions -----------------------------------------------------------------

KILLED_WRITER = """
import os, signal, sys
from ggtune import atomic
if sys.argv[2] == "named":
    atomic._open_unnamed_if_linkable = lambda directory: None
with atomic.atomic_path(sys.argv[1]) as tmp:
    with open(tmp, "wb") as f:
        f.write(b"half of it")
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize("how", ["unnamed", "named"])
def test_kill_9_leaves_no_temporary_for_long(tmp_path, how):
    target = tmp_path / "out.bin"
    proc = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(target), how], capture_output=True)
    assert proc.returncode == -signal.SIGKILL
    left = [p.name for p in tmp_path.iterdir()]
    if how == "unnamed":  # O_TMPFILE: nothing ever had a name
        assert left == []
    else:  # the next write of the file removes what the dead process left
        assert len(left) == 1 and left[0].startswith(f".out.bin.ggtune-{atomic._host()}-") and left[0].endswith(".partial")
        with atomic.atomic_path(target) as tmp:
            Path(tmp).write_bytes(b"whole")
        assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_a_live_writers_temporary_is_not_removed(tmp_path):
    live = tmp_path / f".out.bin.ggtune-{atomic._host()}-{os.getppid()}-abcd1234.partial"
    remote = tmp_path / ".out.bin.ggtune-othermachine-999999999-abcd1234.partial"
    for path in (live, remote):
        path.write_bytes(b"someone else's")
    with atomic.atomic_path(tmp_path / "out.bin") as tmp:
        Path(tmp).write_bytes(b"x")
    assert live.exists() and remote.exists()


@pytest.mark.parametrize("unnamed", [True, False])
def test_outputs_honour_the_umask_and_keep_an_overwritten_mode(tmp_path, monkeypatch, unnamed):
    if not unnamed:
        monkeypatch.setattr(atomic, "_open_unnamed_if_linkable", lambda directory: None)
    old = os.umask(0o027)
    try:
        new = tmp_path / "new.bin"
        with atomic.atomic_path(new) as tmp:
            Path(tmp).write_bytes(b"1")
        assert stat.S_IMODE(new.stat().st_mode) == 0o640
        kept = tmp_path / "kept.bin"
        kept.write_bytes(b"old")
        kept.chmod(0o644)
        with atomic.atomic_path(kept) as tmp:
            Path(tmp).write_bytes(b"new")
        assert stat.S_IMODE(kept.stat().st_mode) == 0o644 and kept.read_bytes() == b"new"
    finally:
        os.umask(old)


def test_finetune_outputs_honour_the_umask(model, text, tmp_path):
    old = os.umask(0o022)
    try:
        result = ggtune.finetune(model, text, lora_out=str(tmp_path / "lora.gguf"), adam_iter=1,
                                 **{**COMMON, "checkpoint_out": str(tmp_path / "ck.gguf")})
    finally:
        os.umask(old)
    for path in result.written:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o644, path


# ---- the memory plan -----------------------------------------------------------------------------

def test_a_plan_beyond_the_machine_is_refused_before_training(model, text, tmp_path, capsys):
    assert cli(["finetune", "--model-base", model, "--train-data", text, "--checkpoint-in", "", "--ctx", "16",
                "--batch", "100000000", "--lora-out", str(tmp_path / "l.gguf"),
                "--checkpoint-out", str(tmp_path / "c.gguf")]) == 1
    err = capsys.readouterr().err
    assert "memory plan:" in err and err.index("memory plan:") < err.index("error:")
    line = err.strip().split("\n")[-1]
    assert line.startswith("ggtune finetune: error: --batch 100000000 --ctx 16: the memory plan needs")
    assert "available of" in line and "lower --batch or --ctx" in line
    assert not (tmp_path / "l.gguf").exists()


# ---- token_embd adapters on untied models --------------------------------------------------------

def test_default_finetune_of_an_untied_model_writes_what_ggtune_loads(model, text, tmp_path):
    result = ggtune.finetune(model, text, lora_out=str(tmp_path / "lora.gguf"), adam_iter=3,
                             **{**COMMON, "adam_alpha": 5e-2})
    assert "token_embd.weight" in result.trained_tensors and "output.weight" in result.trained_tensors
    tokens = ggtune.load_model(model).tokenize(TEXT[:60])
    adapted = ggtune.load_model(model, lora=[(str(tmp_path / "lora.gguf"), 1.0)], precision="f32")
    from ggtune.merge import merge

    merge(model, [(str(tmp_path / "lora.gguf"), 1.0)], tmp_path / "merged.gguf", outtype="f32")
    merged = ggtune.load_model(tmp_path / "merged.gguf", precision="f32")
    base = ggtune.load_model(model, precision="f32")
    np.testing.assert_allclose(adapted.logits(tokens), merged.logits(tokens), atol=2e-4, rtol=0)
    assert not np.allclose(adapted.logits(tokens), base.logits(tokens), atol=1e-3)
    token_only = {"token_embd.weight": read_gguf_adapter(tmp_path / "lora.gguf")[1]["token_embd.weight"]}
    assert token_only["token_embd.weight"][0].shape == (2, CFG.n_embd)


def test_token_embd_adapter_on_a_tied_model_is_refused(tmp_path, capsys, text):
    tied = write_tiny_llama(tmp_path / "tied.gguf", CFG, tied=True)
    rng = np.random.default_rng(1)
    vocab = tensor_shapes(TinyConfig(byte_vocab=True))["token_embd.weight"][0]
    # GGUF stores token_embd flipped: lora_a (n_vocab, r) ne [r, n_vocab], lora_b (n_embd, r)
    path = write_adapter(tmp_path / "te.gguf", {"token_embd.weight": (rng.standard_normal((vocab, 2)),
                                                                      rng.standard_normal((CFG.n_embd, 2)))})
    assert cli(["perplexity", "-m", tied, "--lora", path, "--text", text]) == 1
    one_error_line(capsys, "te.gguf", "tied-embedding model")
