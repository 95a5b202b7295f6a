"""convert-checkpoint: ggcp files from the independent test writer, converted and read back with
gguf.GGUFReader; every key, value type, tensor name, shape and value is checked."""

import argparse
import itertools
import struct

import gguf
import numpy as np
import pytest
from ggcp_writer import GgcpSpec, build_ggcp

from ggtune.convert import CheckpointFormatError, add_cli, convert_checkpoint

VT = gguf.GGUFValueType
VARIANTS = list(itertools.product([0, 1], ["adam", "lbfgs"], [0, 3]))


def expected_metadata(f):
    """What convert-train-checkpoint-to-gguf.py writes, key by key, in order."""
    s = f.spec
    keys = [
        ("general.architecture", VT.STRING, "llama"),
        ("general.file_type", VT.UINT32, 0),
        ("llama.attention.layer_norm_rms_epsilon", VT.FLOAT32, np.float32(1e-5)),
        ("training.file_version", VT.UINT32, 0),
        ("training.type", VT.STRING, "train_model"),
        ("training.iteration_count", VT.UINT32, s.train_its),
        ("training.sample_count", VT.UINT32, s.train_samples),
        ("training.token_count", VT.UINT32, s.train_tokens),
        ("llama.embedding_length", VT.UINT32, s.n_embd),
        ("llama.attention.head_count", VT.UINT32, s.n_head),
        ("llama.block_count", VT.UINT32, s.n_layer),
        ("llama.rope.dimension_count", VT.UINT32, s.n_rot),
        ("llama.feed_forward_length", VT.UINT32, s.n_ff),
        ("optimizer.file_version", VT.UINT32, 0),
        ("optimizer.convergence_past_count", VT.UINT32, s.past),
        ("optimizer.parameter_count", VT.UINT64, f.nx),
        ("optimizer.iteration_count", VT.UINT32, f.iteration),
        ("optimizer.just_initialized", VT.BOOL, f.just_initialized),
    ]
    sc = f.scalars
    if s.optimizer == "adam":
        keys += [("optimizer.type", VT.STRING, "adam"),
                 ("optimizer.adam.best_loss", VT.FLOAT32, sc["fx_best"]),
                 ("optimizer.adam.previous_loss", VT.FLOAT32, sc["fx_prev"]),
                 ("optimizer.adam.no_improvement_count", VT.UINT32, sc["n_no_improvement"])]
    else:
        keys += [("optimizer.type", VT.STRING, "lbfgs"),
                 ("optimizer.lbfgs.approx_hessian_count", VT.UINT32, s.lbfgs_m),
                 ("optimizer.lbfgs.best_loss", VT.FLOAT32, sc["fx_best"]),
                 ("optimizer.lbfgs.line_search_step", VT.FLOAT32, sc["step"]),
                 ("optimizer.lbfgs.line_search_j", VT.INT32, sc["j"]),
                 ("optimizer.lbfgs.line_search_k", VT.INT32, sc["k"]),
                 ("optimizer.lbfgs.line_search_end", VT.INT32, sc["end"]),
                 ("optimizer.lbfgs.no_improvement_count", VT.UINT32, sc["n_no_improvement"])]
    return keys


def expected_tensors(f):
    """GGUF name -> numpy array, in the order the original writes them."""
    tensors = dict(f.model)
    opt = f.opt
    if f.spec.optimizer == "adam":
        pairs = [("first_moments", "m"), ("second_moments", "v"), ("past_loss_values", "pf")]
        prefix = "optimizer.adam."
    else:
        pairs = [("current_parameters", "x"), ("previous_parameters", "xp"),
                 ("current_gradients", "g"), ("previous_gradients", "gp"),
                 ("search_direction", "d"), ("past_loss_values", "pf"), ("memory_alpha", "lmal"),
                 ("memory_ys", "lmys"), ("memory_s", "lms"), ("memory_y", "lmy")]
        prefix = "optimizer.lbfgs."
    tensors.update((prefix + new, opt[old]) for new, old in pairs if old in opt)
    return tensors


def write_input(tmp_path, data, name="chk.bin"):
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("context_version,optimizer,past", VARIANTS)
def test_every_variant_converts_like_the_original(tmp_path, context_version, optimizer, past):
    f = build_ggcp(GgcpSpec(context_version=context_version, optimizer=optimizer, past=past))
    out = tmp_path / "chk.gguf"
    ckpt = convert_checkpoint(write_input(tmp_path, f.data), out)
    assert (ckpt.optimizer.kind, ckpt.optimizer.context_version) == (optimizer, context_version)

    reader = gguf.GGUFReader(out)
    fields = [fl for name, fl in reader.fields.items() if not name.startswith("GGUF.")]
    want = expected_metadata(f)
    assert [fl.name for fl in fields] == [k for k, _, _ in want]
    for fl, (key, vtype, value) in zip(fields, want):
        assert fl.types == [vtype], key
        got = fl.contents()
        if vtype == VT.FLOAT32:
            assert np.float32(got) == np.float32(value), key
        else:
            assert got == value, key

    want_tensors = expected_tensors(f)
    assert [t.name for t in reader.tensors] == list(want_tensors)
    for t in reader.tensors:
        want_array = want_tensors[t.name]
        assert t.tensor_type == gguf.GGMLQuantizationType.F32, t.name
        assert list(t.shape) == list(reversed(want_array.shape)), t.name  # ggml ne order
        np.testing.assert_array_equal(t.data.reshape(want_array.shape), want_array, err_msg=t.name)
    assert (past > 0) == any(t.name.endswith("past_loss_values") for t in reader.tensors)


def test_ff_width_follows_n_mult(tmp_path):
    spec = GgcpSpec(n_embd=12, n_mult=5, n_head=3, n_rot=4, n_layer=1)
    assert spec.n_ff == 35  # 2*48//3 = 32, rounded up to a multiple of 5
    out = tmp_path / "o.gguf"
    convert_checkpoint(write_input(tmp_path, build_ggcp(spec).data), out)
    reader = gguf.GGUFReader(out)
    assert reader.fields["llama.feed_forward_length"].contents() == 35
    shapes = {t.name: list(t.shape) for t in reader.tensors}
    assert shapes["blk.0.ffn_down.weight"] == [35, 12]
    assert shapes["blk.0.ffn_gate.weight"] == [12, 35]


# ---- bad input: a clear error naming file and offset, and no output ----------------------------

def assert_rejected(tmp_path, data, *fragments):
    src = write_input(tmp_path, data)
    out = tmp_path / "out" / "x.gguf"
    with pytest.raises(CheckpointFormatError) as info:
        convert_checkpoint(src, out)
    message = str(info.value)
    assert str(src) in message and "offset" in message
    for fragment in fragments:
        assert fragment in message, message
    assert not out.parent.exists() or list(out.parent.iterdir()) == []
    return message


def patch_u32(data, offset, value, fmt="<I"):
    out = bytearray(data)
    struct.pack_into(fmt, out, offset, value)
    return bytes(out)


def test_wrong_magic(tmp_path):
    f = build_ggcp(GgcpSpec())
    assert_rejected(tmp_path, b"lmgg" + f.data[4:], "magic", "offset 0")


def test_wrong_version(tmp_path):
    f = build_ggcp(GgcpSpec())
    assert_rejected(tmp_path, patch_u32(f.data, 4, 1), "version", "is 1")


def test_empty_file(tmp_path):
    assert_rejected(tmp_path, b"", "empty")


@pytest.mark.parametrize("context_version,optimizer,past", VARIANTS)
def test_truncated_anywhere(tmp_path, context_version, optimizer, past):
    data = build_ggcp(GgcpSpec(context_version=context_version, optimizer=optimizer, past=past)).data
    for cut in sorted({2, 30, 44, 45, 200, len(data) // 2, len(data) - 13, len(data) - 4,
                       len(data) - 1}):
        message = assert_rejected(tmp_path, data[:cut], "truncated")
        assert f"after {cut}" in message


@pytest.mark.parametrize("context_version,optimizer,past", VARIANTS)
def test_trailing_bytes(tmp_path, context_version, optimizer, past):
    data = build_ggcp(GgcpSpec(context_version=context_version, optimizer=optimizer, past=past)).data
    message = assert_rejected(tmp_path, data + bytes(4), "4 unexpected trailing bytes")
    if context_version == 1:
        assert "fit neither layout" in message  # the type is inferred from the remaining bytes


def test_tensor_shape_disagreeing_with_header(tmp_path):
    f = build_ggcp(GgcpSpec(n_mult=4))
    # n_mult is the 8th header word: 5 gives n_ff = 25 while the records hold 24
    message = assert_rejected(tmp_path, patch_u32(f.data, 28, 5), "blk.0.ffn_gate.weight",
                              "layers.0.feed_forward.w1.weight", "expected [8, 25]")
    assert "ne [8, 24]" in message


def test_non_f32_record(tmp_path):
    f = build_ggcp(GgcpSpec())
    record = f.offsets["model"]
    assert_rejected(tmp_path, patch_u32(f.data, record + 8, 1), "token_embd.weight", "ggml type 1",
                    f"offset {record}")


def test_parameter_count_disagreeing_with_model(tmp_path):
    f = build_ggcp(GgcpSpec(context_version=0))
    bad = patch_u32(f.data, f.offsets["nx"], f.nx + 1, "<Q")
    assert_rejected(tmp_path, bad, "optimizer nx", f"but the model has {f.nx} parameters")


def test_unknown_optimizer_context_version(tmp_path):
    f = build_ggcp(GgcpSpec())
    assert_rejected(tmp_path, patch_u32(f.data, f.offsets["optimizer"], 2),
                    "optimizer context version", "expected 0 or 1")


def test_unknown_optimizer_type_in_v0_parameters(tmp_path):
    f = build_ggcp(GgcpSpec(context_version=0))
    assert_rejected(tmp_path, patch_u32(f.data, f.offsets["optimizer"] + 4, 2),
                    "optimizer parameters type", "is 2")


def test_past_disagreeing_with_stored_loss_buffer(tmp_path):
    f = build_ggcp(GgcpSpec(context_version=0, past=3))
    bad = patch_u32(f.data, f.offsets["optimizer"] + 4 + 8, 4, "<i")
    assert_rejected(tmp_path, bad, "adam pf", "expected [4]")


@pytest.mark.parametrize("word,value,fragments", [
    (7, 0, ("n_mult", "is 0", "offset 28")),
    (8, 3, ("n_head", "3 does not divide n_embd 8", "offset 32")),
    (10, 5, ("n_rot", "exceeds the head size 4", "offset 40")),
])
def test_impossible_hyperparameters(tmp_path, word, value, fragments):
    f = build_ggcp(GgcpSpec())
    assert_rejected(tmp_path, patch_u32(f.data, 4 * word, value), *fragments)


def test_failed_conversion_keeps_an_existing_output(tmp_path):
    out = tmp_path / "keep.gguf"
    out.write_bytes(b"previous")
    src = write_input(tmp_path, build_ggcp(GgcpSpec()).data[:-1])
    with pytest.raises(CheckpointFormatError):
        convert_checkpoint(src, out)
    assert out.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chk.bin", "keep.gguf"]


# ---- command line --------------------------------------------------------------------------------

def make_parser():
    parser = argparse.ArgumentParser(prog="ggtune")
    add_cli(parser.add_subparsers())
    return parser


def test_cli_converts_and_reports(tmp_path, capsys):
    src = write_input(tmp_path, build_ggcp(GgcpSpec(optimizer="lbfgs", past=2)).data)
    out = tmp_path / "c.gguf"
    args = make_parser().parse_args(["convert-checkpoint", "--input", str(src), "--output", str(out)])
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert str(out) in printed and "lbfgs" in printed and "n_layer=2" in printed
    assert gguf.GGUFReader(out).fields["optimizer.type"].contents() == "lbfgs"


def test_cli_reports_bad_input_without_traceback(tmp_path, capsys):
    from ggtune.cli import main

    src = write_input(tmp_path, b"ggcp" * 3)
    assert main(["convert-checkpoint", "-i", str(src), "-o", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"ggtune convert-checkpoint: error: {src}") and "magic" in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


# ---- the converted checkpoint is a model -------------------------------------------------------

def reference_logits(f, tokens):
    """float64 LLaMA forward of the ggcp weights as train-text-from-scratch ran them: RMS norm with
    eps 1e-5, rope over the first n_rot dims of each head rotating adjacent pairs (ggml mode 0,
    base 10000), causal softmax attention, SwiGLU; a weight with ggml ne (n_in, n_out) is the
    numpy (n_out, n_in) matrix."""
    s, w = f.spec, {k: v.astype(np.float64) for k, v in f.model.items()}
    n_tok, head_dim = len(tokens), s.n_embd // s.n_head

    def rms_norm(x, gain):
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + 1e-5) * gain

    def rope(x):  # x: (T, H, D)
        theta = np.arange(n_tok)[:, None] * 10000.0 ** (-np.arange(0, s.n_rot, 2) / s.n_rot)
        cos, sin = np.cos(theta)[:, None, :], np.sin(theta)[:, None, :]
        out = x.copy()
        even, odd = x[..., 0:s.n_rot:2], x[..., 1:s.n_rot:2]
        out[..., 0:s.n_rot:2] = even * cos - odd * sin
        out[..., 1:s.n_rot:2] = even * sin + odd * cos
        return out

    x = w["token_embd.weight"][tokens]
    causal = np.triu(np.full((n_tok, n_tok), -np.inf), 1)
    for i in range(s.n_layer):
        p = f"blk.{i}."
        h = rms_norm(x, w[p + "attn_norm.weight"])
        q, k, v = (
            (h @ w[p + f"attn_{n}.weight"].T).reshape(n_tok, s.n_head, head_dim) for n in "qkv")
        q, k = rope(q), rope(k)
        scores = np.einsum("thd,shd->hts", q, k) / np.sqrt(head_dim) + causal
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        attn = np.einsum("hts,shd->thd", probs, v).reshape(n_tok, s.n_embd)
        x = x + attn @ w[p + "attn_output.weight"].T
        h = rms_norm(x, w[p + "ffn_norm.weight"])
        gate, up = h @ w[p + "ffn_gate.weight"].T, h @ w[p + "ffn_up.weight"].T
        x = x + (gate / (1 + np.exp(-gate)) * up) @ w[p + "ffn_down.weight"].T
    return rms_norm(x, w["output_norm.weight"]) @ w["output.weight"].T


def test_converted_checkpoint_runs_as_a_model(tmp_path):
    model_module = pytest.importorskip("ggtune.model", reason="the model loader lands separately")
    spec = GgcpSpec(n_vocab=19, n_embd=16, n_head=2, n_rot=6, n_layer=2, n_mult=8, seed=3)
    f = build_ggcp(spec)
    out = tmp_path / "scratch.gguf"
    convert_checkpoint(write_input(tmp_path, f.data), out)
    tokens = np.array([3, 1, 18, 0, 7, 7, 2], dtype=np.int32)
    logits = model_module.load_model(out).logits(tokens)
    want = reference_logits(f, tokens)
    np.testing.assert_allclose(logits, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
