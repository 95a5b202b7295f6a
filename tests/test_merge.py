"""`ggtune merge`: adapters folded into the weights give the model that base + adapter computes."""

from __future__ import annotations

import argparse
import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest

import gguf
from gguf import GGMLQuantizationType as T

from ggtune import quantize as q
from ggtune.adapters import AdapterError, checkpoint_to_modern
from ggtune.checkpoint import (Checkpoint, OptimizerCheckpoint, TrainCounters,
                               save_checkpoint)
from ggtune.names import ALL_KINDS as RANK_KINDS, lora_base_names
from ggtune.data import ShuffleState
from ggtune.gguf_io import GGUFError, read_model_gguf
from ggtune.graph import Graph
from ggtune.lora import LoraSet
from ggtune.merge import MergeError, add_cli, default_checkpoint_alpha, merge
from ggtune.model import load_model
from tiny_models import TinyConfig, tensor_shapes, write_random_adapter, write_tiny_llama

TOKENS = np.array([5, 17, 3, 42, 8, 8, 61, 0, 33, 70, 12, 29, 54, 2, 77, 40], dtype=np.int32)
LAYER_MATRICES = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


def matrix_shapes(cfg: TinyConfig, kinds=LAYER_MATRICES, layers=None) -> dict[str, tuple[int, int]]:
    """{name: (n_out, n_in)} of the layer matrices of `kinds` (in `layers`, default all)."""
    return {name: shape for name, shape in tensor_shapes(cfg).items()
            if name.startswith("blk.") and name.split(".")[2] in kinds
            and (layers is None or int(name.split(".")[1]) in layers)}


def raw_tensors(path) -> dict[str, tuple[int, list[int], bytes]]:
    """{name: (ggml type, ne, stored bytes)}."""
    return {t.name: (int(t.tensor_type), [int(n) for n in t.shape], t.data.tobytes())
            for t in gguf.GGUFReader(os.fspath(path)).tensors}


def dequantized(path, name) -> np.ndarray:
    """float32 numpy (rows, n_in) of one tensor (1-D: (1, n))."""
    t = next(t for t in gguf.GGUFReader(os.fspath(path)).tensors if t.name == name)
    rows = int(np.prod([int(n) for n in t.shape[1:]], dtype=np.int64))
    return q.dequantize(t.data.view(np.uint8).reshape(rows, -1), int(t.tensor_type), int(t.shape[0]))


def merge_quality():
    """benchmarks/merge_quality.py as a module (its adapter and held-out text)."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "merge_quality.py"
    spec = importlib.util.spec_from_file_location("merge_quality", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---- F32: logits of the merged model = logits of base + adapters ---------------------------------

@pytest.mark.parametrize("tied", [False, True])
def test_f32_merge_matches_base_plus_adapters(tmp_path, tied):
    cfg = TinyConfig(tied=tied)
    base = write_tiny_llama(tmp_path / "base.gguf", cfg)
    first, second = tmp_path / "a1.gguf", tmp_path / "a2.gguf"
    write_random_adapter(first, matrix_shapes(cfg), rank=4, alpha=8.0, seed=1, std=0.2)
    targets = {"attn_q", "ffn_down"} | (set() if tied else {"output"})
    shapes = matrix_shapes(cfg, targets)
    if not tied:
        shapes["output.weight"] = tensor_shapes(cfg)["output.weight"]
    write_random_adapter(second, shapes, rank=2, alpha=None, seed=2, std=0.2)  # no alpha: scale = user scale
    loras = [(str(first), 0.75), (str(second), -0.5)]
    summary = merge(base, loras, tmp_path / "merged.gguf", outtype="f32")
    assert summary.n_adapted == len(matrix_shapes(cfg)) + (0 if tied else 1)

    expected = load_model(base, lora=loras, precision="f32").logits(TOKENS)
    merged = load_model(tmp_path / "merged.gguf", precision="f32").logits(TOKENS)
    plain = load_model(base, precision="f32").logits(TOKENS)
    assert np.abs(expected - plain).max() > 0.1  # the adapters matter
    np.testing.assert_allclose(merged, expected, atol=1e-4, rtol=0)


def test_metadata_kept_and_file_type_follows_outtype(tmp_path):
    base = write_tiny_llama(tmp_path / "base.gguf", byte_vocab=True, weight_type=T.Q8_0,
                            extra_keys={"general.file_type": 7, "general.name": "tiny"})
    cfg = TinyConfig(byte_vocab=True)
    write_random_adapter(tmp_path / "a.gguf", matrix_shapes(cfg, ("attn_v",)), rank=2, alpha=2.0)
    for outtype, file_type in (("same", 7), ("f16", int(gguf.LlamaFileType.MOSTLY_F16))):
        out = tmp_path / f"{outtype}.gguf"
        merge(base, [(tmp_path / "a.gguf", 1.0)], out, outtype=outtype)
        before = {k: f.contents() for k, f in gguf.GGUFReader(base).fields.items() if not k.startswith("GGUF.")}
        after = {k: f.contents() for k, f in gguf.GGUFReader(out).fields.items() if not k.startswith("GGUF.")}
        assert after.pop("general.file_type") == file_type
        before.pop("general.file_type")
        assert after == before  # tokenizer, chat template, names: every key, same values
        types = {name: t for name, (t, _, _) in raw_tensors(out).items()}
        assert types["blk.0.attn_norm.weight"] == T.F32  # vectors keep their type
        assert types["token_embd.weight"] == (T.Q8_0 if outtype == "same" else T.F16)


# ---- same: untouched tensors byte for byte, adapted ones re-quantized ----------------------------

def block_sse(values: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Squared error to target of each 32-value block of float32 [rows, n_in]."""
    return np.square(values - target, dtype=np.float64).reshape(-1, 32).sum(axis=1)


@pytest.mark.parametrize("weight_type", [T.Q8_0, T.Q4_1])
def test_same_copies_untouched_and_requantizes_adapted(tmp_path, weight_type):
    cfg = TinyConfig(weight_type=weight_type)
    base = write_tiny_llama(tmp_path / "base.gguf", cfg)
    adapted = matrix_shapes(cfg, ("attn_q", "ffn_down"), layers={1})
    pairs = write_random_adapter(tmp_path / "a.gguf", adapted, rank=3, alpha=6.0, seed=4, std=0.2)
    merge(base, [(tmp_path / "a.gguf", 0.5)], tmp_path / "m.gguf", requantize="nearest")  # outtype "same" by default

    before, after = raw_tensors(base), raw_tensors(tmp_path / "m.gguf")
    assert list(after) == list(before)  # same tensors, same order
    for name, (ggml_type, ne, data) in before.items():
        assert after[name][:2] == (ggml_type, ne), name
        if name not in adapted:
            assert after[name][2] == data, f"{name} was not copied byte for byte"
    for name, (a, b) in pairs.items():
        w = dequantized(base, name)
        target = w + np.float32(0.5 * 6.0 / 3) * (b @ a)
        got = dequantized(tmp_path / "m.gguf", name)
        fresh = gguf.quants.dequantize(gguf.quants.quantize(target, weight_type), weight_type)
        # each block is the closer to W + sBA of the old block and ggml's reference quantization
        best = np.minimum(block_sse(w, target), block_sse(fresh, target))
        np.testing.assert_allclose(block_sse(got, target), best, rtol=1e-6, atol=0, err_msg=name)
        assert block_sse(got, target).sum() < 0.5 * block_sse(w, target).sum()  # the adapter is there


def test_small_adapter_keeps_blocks_a_fresh_quantization_would_blur(tmp_path):
    """An adapter far below the Q4_1 step: re-quantizing every block would add a rounding error of
    about a step to every value; the merge keeps such blocks, so it stays closer to W + sBA."""
    cfg = TinyConfig(weight_type=T.Q4_1)
    base = write_tiny_llama(tmp_path / "base.gguf", cfg)
    adapted = matrix_shapes(cfg, ("ffn_up",), layers={0})
    pairs = write_random_adapter(tmp_path / "a.gguf", adapted, rank=2, alpha=2.0, seed=5, std=0.03)
    merge(base, [(tmp_path / "a.gguf", 1.0)], tmp_path / "m.gguf", requantize="nearest")
    (name, (a, b)), = pairs.items()
    w = dequantized(base, name)
    target = w + b @ a
    got = dequantized(tmp_path / "m.gguf", name)
    fresh = gguf.quants.dequantize(gguf.quants.quantize(target, T.Q4_1), T.Q4_1)
    assert block_sse(got, target).sum() < 0.8 * block_sse(fresh, target).sum()
    assert np.any(got != w)  # blocks where the adapter is large enough were re-quantized


# ---- training checkpoints: norm and token_embd adapters reach the model --------------------------

def write_checkpoint(path, weights, ranks: dict[str, int], seed=0,
                     lora_alpha=None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """A finetune_lora checkpoint with random adapters (checkpoint orientation) for `weights`."""
    hp = weights.hparams
    rng = np.random.default_rng(seed)
    matrices = weights.weights_by_name()
    lora = {}
    for base in lora_base_names(hp.n_layer, ranks):
        r = ranks[base.split(".")[-2]]
        n_out, n_in = (1, hp.n_embd) if base.endswith("norm.weight") else (matrices[base].n_out, matrices[base].n_in)
        lora[base] = ((0.3 * rng.standard_normal((n_in, r))).astype(np.float32),
                      (0.3 * rng.standard_normal((n_out, r))).astype(np.float32))
    count = sum(a.size + b.size for a, b in lora.values())
    ckpt = Checkpoint(
        hparams=hp,
        ranks=ranks, lora=lora,
        optimizer=OptimizerCheckpoint(m=np.zeros(count, np.float32), v=np.zeros(count, np.float32)),
        counters=TrainCounters(), shuffle=ShuffleState(rng_state="unused", samples_hash=0, sample_count=0, next_sample=0),
        lora_alpha=lora_alpha)
    save_checkpoint(path, ckpt)
    return lora


CHECKPOINT_RANKS = dict(dict.fromkeys(RANK_KINDS, 0), token_embd=3, output_norm=1, attn_norm=2, ffn_norm=1,
                        attn_q=3, ffn_up=3, output=3)


@pytest.mark.parametrize("tied", [False, True])
def test_checkpoint_source_matches_numpy_expectation(tmp_path, tied):
    base = write_tiny_llama(tmp_path / "base.gguf", tied=tied)
    weights = read_model_gguf(base)
    ranks = dict(CHECKPOINT_RANKS, output=0 if tied else 3)
    lora = write_checkpoint(tmp_path / "ck.gguf", weights, ranks)
    merge(base, [(tmp_path / "ck.gguf", 0.5, 6.0)], tmp_path / "m.gguf", outtype="f32")

    for name, (a_ck, b_ck) in lora.items():
        r = a_ck.shape[1]
        scale = 0.5 * 6.0 / r
        delta = scale * (b_ck.astype(np.float64) @ a_ck.T.astype(np.float64))  # (n_out, n_in)
        if name.endswith("norm.weight"):  # w (n_embd,) + s·(B_ck @ A_ck.T)[0]
            norms = {"output_norm.weight": weights.output_norm}
            norms.update({f"blk.{i}.{k}.weight": layer.norms[k] for i, layer in enumerate(weights.layers)
                          for k in ("attn_norm", "ffn_norm")})
            expected = norms[name].astype(np.float64) + delta[0]
        else:
            expected = weights.weights_by_name()[name].dequantize().astype(np.float64) + delta
        got = dequantized(tmp_path / "m.gguf", name).reshape(expected.shape)
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5, err_msg=name)


def test_checkpoint_merge_equals_the_training_forward(tmp_path):
    """The merged model's loss equals the training graph's loss with the checkpoint's adapters:
    the orientation and scale of every kind (norms and token_embd on a tied model) are the trainer's."""
    base = write_tiny_llama(tmp_path / "base.gguf", tied=True)
    weights = read_model_gguf(base)
    ranks = dict(CHECKPOINT_RANKS, output=0, attn_k=2, ffn_gate=2)
    lora = write_checkpoint(tmp_path / "ck.gguf", weights, ranks, seed=7)
    alpha = default_checkpoint_alpha(ranks)
    assert alpha == 3.0  # the matrices' rank, as the trainer's --lora-alpha default (= --lora-r)
    merge(base, [(tmp_path / "ck.gguf", 1.0)], tmp_path / "m.gguf", outtype="f32")

    trained = LoraSet(alpha=alpha)
    for name, (a, b) in checkpoint_to_modern(lora).items():
        trained.add(name, a, b)
    inputs, targets = TOKENS[None, :-1], TOKENS[None, 1:]
    loss_sum, n = Graph(weights, trained, precision="f32").loss_and_grads(inputs, targets, None)
    untrained, _ = Graph(weights, LoraSet(alpha=alpha), precision="f32").loss_and_grads(inputs, targets, None)
    merged = load_model(tmp_path / "m.gguf", precision="f32").token_losses(TOKENS[None, :]).sum(dtype=np.float64)
    assert abs(loss_sum - untrained) > 0.1
    assert merged == pytest.approx(loss_sum, abs=1e-4 * n)


def test_checkpoint_alpha_recorded_by_ggtune_is_the_default(tmp_path):
    """A ggtune checkpoint records its alpha (the original's do not): merge scales by it unless
    --lora-alpha says otherwise, even for a checkpoint of norm adapters only."""
    base = write_tiny_llama(tmp_path / "base.gguf")
    weights = read_model_gguf(base)
    ranks = dict(dict.fromkeys(RANK_KINDS, 0), attn_norm=1, attn_q=2)
    write_checkpoint(tmp_path / "ck.gguf", weights, ranks, lora_alpha=5.0)
    merge(base, [(tmp_path / "ck.gguf", 1.0)], tmp_path / "default.gguf", outtype="f32")
    merge(base, [(tmp_path / "ck.gguf", 1.0, 5.0)], tmp_path / "explicit.gguf", outtype="f32")
    merge(base, [(tmp_path / "ck.gguf", 1.0, 2.0)], tmp_path / "rank.gguf", outtype="f32")
    name = "blk.0.attn_q.weight"
    np.testing.assert_array_equal(dequantized(tmp_path / "default.gguf", name),
                                  dequantized(tmp_path / "explicit.gguf", name))
    assert not np.array_equal(dequantized(tmp_path / "default.gguf", name),
                              dequantized(tmp_path / "rank.gguf", name))


def test_checkpoint_with_only_norm_adapters_needs_alpha(tmp_path):
    base = write_tiny_llama(tmp_path / "base.gguf")
    write_checkpoint(tmp_path / "ck.gguf", read_model_gguf(base), dict(dict.fromkeys(RANK_KINDS, 0), attn_norm=1))
    with pytest.raises(MergeError, match="--lora-alpha"):
        merge(base, [(tmp_path / "ck.gguf", 1.0)], tmp_path / "m.gguf")
    merge(base, [(tmp_path / "ck.gguf", 1.0, 4.0)], tmp_path / "m.gguf")
    assert (tmp_path / "m.gguf").is_file()


# ---- bad input: a clear message and no output file ----------------------------------------------

@pytest.fixture
def tiny(tmp_path):
    cfg = TinyConfig()
    base = write_tiny_llama(tmp_path / "base.gguf", cfg)
    write_random_adapter(tmp_path / "a.gguf", matrix_shapes(cfg), rank=2, alpha=2.0)
    return tmp_path, base


from ggtune.cli import main as cli_main  # noqa: E402


def run_cli(argv):
    parser = argparse.ArgumentParser(prog="ggtune")
    add_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_bad_inputs_name_the_problem_and_write_nothing(tmp_path, tiny):
    _, base = tiny
    adapter, out = str(tmp_path / "a.gguf"), tmp_path / "out.gguf"
    other = write_tiny_llama(tmp_path / "other.gguf", n_embd=32, n_ff=64)  # different shapes
    write_random_adapter(tmp_path / "wrong.gguf", matrix_shapes(TinyConfig(n_embd=32, n_ff=64)), rank=2)
    write_random_adapter(tmp_path / "ghost.gguf", {"blk.9.attn_q.weight": (64, 64)}, rank=2)
    k_base = write_tiny_llama(tmp_path / "k.gguf", weight_type=T.Q4_K, n_embd=256, n_ff=256, n_head=4)
    write_random_adapter(tmp_path / "k_ad.gguf", matrix_shapes(TinyConfig(n_embd=256, n_ff=256), ("attn_v",)), rank=2)
    cases = [
        ((tmp_path / "nope.gguf", [(adapter, 1.0)], "same"), GGUFError, "nope.gguf: no such file"),
        ((base, [(tmp_path / "gone.gguf", 1.0)], "same"), MergeError, "gone.gguf: no such adapter file"),
        ((base, [(tmp_path / "wrong.gguf", 1.0)], "same"), MergeError, r"wrong.gguf: adapter for 'blk.0.attn_q.weight'"),
        ((base, [(tmp_path / "ghost.gguf", 1.0)], "same"), MergeError, "has no tensor 'blk.9.attn_q.weight'"),
        ((base, [(adapter, 1.0)], "q3_k"), MergeError, "outtype: expected one of"),
        ((base, [(base, 1.0)], "same"), AdapterError, "not a LoRA adapter"),
        ((adapter, [(adapter, 1.0)], "same"), MergeError, "--model needs the base model"),
        ((base, [], "same"), MergeError, "no adapter"),
        ((k_base, [(tmp_path / "k_ad.gguf", 1.0)], "same"), MergeError,
         r"'blk.0.attn_v.weight' is Q4_K, which ggtune cannot quantize.*--outtype q8_0"),
        ((other, [(adapter, 1.0)], "q4_0"), MergeError, "adapter for"),
    ]
    for (model, loras, outtype), error, message in cases:
        with pytest.raises(error, match=message):
            merge(model, loras, out, outtype=outtype)
        assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no partial files left

    merge(k_base, [(tmp_path / "k_ad.gguf", 1.0)], out, outtype="q8_0")  # the suggested fix works
    assert {t for t, _, _ in raw_tensors(out).values()} == {T.Q8_0, T.F32}


def test_block_size_mismatch_suggests_a_float_outtype(tmp_path):
    base = write_tiny_llama(tmp_path / "base.gguf", n_embd=48, n_ff=80, n_head=4, n_head_kv=2)
    write_random_adapter(tmp_path / "a.gguf", matrix_shapes(TinyConfig(n_embd=48, n_ff=80), ("attn_q",)), rank=2)
    with pytest.raises(MergeError, match=r"rows of 48 values, not a multiple of the Q4_0 block of 32; choose --outtype f16"):
        merge(base, [(tmp_path / "a.gguf", 1.0)], tmp_path / "m.gguf", outtype="q4_0")


def test_cli(tmp_path, tiny, capsys):
    _, base = tiny
    adapter, out = str(tmp_path / "a.gguf"), str(tmp_path / "cli.gguf")
    assert run_cli(["merge", "--model", base, "--lora", adapter, "--lora-scale", "0.5", "--output", out,
                    "--outtype", "f32"]) == 0
    assert "14 with adapters folded in" in capsys.readouterr().out
    expected = load_model(base, lora=[(adapter, 0.5)], precision="f32").logits(TOKENS)
    np.testing.assert_allclose(load_model(out, precision="f32").logits(TOKENS), expected, atol=1e-4, rtol=0)

    bad = tmp_path / "bad.gguf"
    assert cli_main(["merge", "-m", base, "--lora", str(tmp_path / "missing.gguf"), "-o", str(bad)]) == 2
    assert capsys.readouterr().err == f"ggtune merge: error: --lora: no such file: {tmp_path / 'missing.gguf'}\n"
    assert cli_main(["merge", "-m", base, "--lora", adapter, "--lora-scale", "1", "--lora-scale", "2", "-o", str(bad)]) == 1
    assert "--lora-scale given 2 times for 1 --lora" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: invalid choice
        run_cli(["merge", "-m", base, "--lora", adapter, "-o", str(bad), "--outtype", "q4_k"])
    assert "invalid choice: 'q4_k'" in capsys.readouterr().err
    assert not bad.exists()

    q4 = write_tiny_llama(tmp_path / "q4.gguf", byte_vocab=True, weight_type=T.Q4_1)
    calibration = write_calibration(tmp_path / "cal.txt")
    for mode, n_gptq in (("gptq", 14), ("nearest", 0)):
        assert run_cli(["merge", "-m", q4, "--lora", adapter, "-o", str(tmp_path / f"{mode}.gguf"),
                        "--requantize", mode, "--calibration", calibration]) == 0
        assert f"{n_gptq} by GPTQ" in capsys.readouterr().out


# ---- GPTQ: re-quantization that keeps the outputs --------------------------------------------------

def correlated_inputs(rng: np.random.Generator, n_tokens: int, n_in: int) -> np.ndarray:
    """float64 [n_tokens, n_in] with unequal scales and correlated features, like activations."""
    mixing = 0.3 * rng.standard_normal((n_in, n_in)) + np.eye(n_in)
    return (rng.standard_normal((n_tokens, n_in)) * rng.uniform(0.2, 3.0, n_in)) @ mixing


@pytest.mark.parametrize("weight_type", sorted(q.GPTQ_TYPES))
def test_gptq_output_error_below_nearest_rounding(weight_type):
    """W on its grid plus a low-rank ΔW (a tenth of the weights' spread): GPTQ keeps the outputs
    X·(W + ΔW)ᵀ much closer than rounding each block to nearest does."""
    rng = np.random.default_rng(int(weight_type))
    rows, n_in = 48, 160  # 5 blocks per row
    raw = q.quantize(rng.standard_normal((rows, n_in)).astype(np.float32), weight_type)
    w = q.dequantize(raw, weight_type, n_in)
    target = w + (0.1 * rng.standard_normal((rows, 3)) @ rng.standard_normal((3, n_in))).astype(np.float32)
    x = correlated_inputs(rng, 600, n_in)
    nearest = q.dequantize(q.requantize_closest(target, raw, w, weight_type), weight_type, n_in)
    grid = q.BlockGrid.for_target(target, raw, weight_type)
    gptq_raw = q.gptq_quantize(target, x.T @ x, grid)
    gptq = q.dequantize(gptq_raw, weight_type, n_in)

    def output_error(values):
        return np.linalg.norm((values - target.astype(np.float64)) @ x.T)

    assert output_error(gptq) < 0.8 * output_error(nearest)
    assert output_error(gptq) < 0.8 * output_error(w)  # ΔW is there, not only rounding noise
    np.testing.assert_array_equal(q.BlockGrid.of_raw(gptq_raw, weight_type).d, grid.d)  # on its grids


def test_gptq_without_adapter_gives_the_tensor_back():
    rng = np.random.default_rng(3)
    raw = q.quantize(rng.standard_normal((8, 64)).astype(np.float32), T.Q4_1)
    w = q.dequantize(raw, T.Q4_1, 64)
    x = correlated_inputs(rng, 100, 64)
    assert q.gptq_quantize(w, x.T @ x, q.BlockGrid.of_raw(raw, T.Q4_1)).tobytes() == raw.tobytes()


@pytest.mark.parametrize("weight_type", sorted(q.GPTQ_TYPES))
@pytest.mark.parametrize("n_in", [32, 64, 96])
def test_packed_blocks_round_trip_through_the_kernels(weight_type, n_in):
    """pack_blocks writes the GGUF layout: ggtune's dequantize kernel reads back (q - offset)·d + m."""
    fmt = q.BLOCK_FORMATS[T(weight_type)]
    rng = np.random.default_rng(n_in)
    rows, nb = 3, n_in // 32
    codes = rng.integers(fmt.q_min, fmt.q_max + 1, size=(rows, n_in))
    codes[0, :2] = fmt.q_min, fmt.q_max  # both ends of the range
    d = rng.uniform(0.01, 0.2, (rows, nb)).astype(np.float16).astype(np.float64)
    m = (rng.uniform(-1, 0, (rows, nb)).astype(np.float16).astype(np.float64) if fmt.has_min
         else np.zeros((rows, nb)))
    grid = q.BlockGrid(int(weight_type), d, m)
    raw = q.pack_blocks(codes, grid)
    assert raw.shape == (rows, n_in // 32 * gguf.GGML_QUANT_SIZES[T(weight_type)][1])
    expected = (codes - fmt.offset) * np.repeat(d, 32, axis=1) + np.repeat(m, 32, axis=1)
    np.testing.assert_allclose(q.dequantize(raw, weight_type, n_in), expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(gguf.quants.dequantize(raw, T(weight_type)).reshape(rows, n_in), expected,
                               rtol=1e-6, atol=1e-6)
    parsed = q.BlockGrid.of_raw(raw, weight_type)
    np.testing.assert_array_equal(parsed.d, d)
    np.testing.assert_array_equal(parsed.m, m)


def write_calibration(path, n_chars=3000, seed=0) -> str:
    rng = np.random.default_rng(seed)
    words = ["the", "model", "weights", "adapter", "merge", "tokens", "of", "and", "a", "quantized", "layer"]
    path.write_text(" ".join(rng.choice(words, n_chars // 5)), encoding="utf-8")
    return str(path)


@pytest.mark.parametrize("weight_type", [T.Q4_1, T.Q8_0])
def test_gptq_merge_keeps_base_plus_adapter_outputs_better(tmp_path, weight_type):
    """End to end on a tiny model with a vocabulary: untouched tensors byte for byte, and the GPTQ
    merge's logits on the calibration text are closer to base + adapter than nearest rounding's."""
    cfg = TinyConfig(byte_vocab=True, weight_type=weight_type)
    base = write_tiny_llama(tmp_path / "base.gguf", cfg)
    adapted = matrix_shapes(cfg, ("attn_q", "attn_v", "attn_output", "ffn_up", "ffn_down"))
    write_random_adapter(tmp_path / "a.gguf", adapted, rank=2, alpha=2.0, seed=6, std=0.1)
    calibration = write_calibration(tmp_path / "cal.txt")
    outputs = {}
    for mode in ("gptq", "nearest"):
        out = tmp_path / f"{mode}.gguf"
        summary = merge(base, [(tmp_path / "a.gguf", 1.0)], out, requantize=mode, calibration=calibration)
        assert summary.n_gptq == (len(adapted) if mode == "gptq" else 0)
        outputs[mode] = out
    assert summary.n_requantized == len(adapted)
    before, after = raw_tensors(base), raw_tensors(outputs["gptq"])
    assert list(after) == list(before)
    for name, (ggml_type, ne, data) in before.items():
        assert after[name][:2] == (ggml_type, ne), name
        assert (after[name][2] == data) == (name not in adapted), name

    runtime = load_model(base, lora=[(tmp_path / "a.gguf", 1.0)], precision="f32")
    tokens = np.array(runtime.tokenize(open(calibration, encoding="utf-8").read())[:cfg.n_ctx])
    expected = runtime.logits(tokens)

    def logit_error(path):
        return np.linalg.norm(load_model(path, precision="f32").logits(tokens) - expected)

    assert logit_error(outputs["gptq"]) < 0.8 * logit_error(outputs["nearest"])


def test_gptq_bad_calibration_names_the_problem(tmp_path):
    base = write_tiny_llama(tmp_path / "base.gguf", TinyConfig(byte_vocab=True, weight_type=T.Q4_0))
    no_vocab = write_tiny_llama(tmp_path / "novocab.gguf", TinyConfig(weight_type=T.Q4_0))
    write_random_adapter(tmp_path / "a.gguf", matrix_shapes(TinyConfig(), ("attn_q",)), rank=2)
    (tmp_path / "short.txt").write_text("hi", encoding="utf-8")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    out = tmp_path / "m.gguf"
    cases = [((base, tmp_path / "missing.txt"), "missing.txt: cannot read the calibration text"),
             ((base, tmp_path / "latin1.txt"), "latin1.txt: cannot read the calibration text .expected UTF-8"),
             ((base, tmp_path / "short.txt"), "short.txt: .* tokens; calibration needs at least 64"),
             ((no_vocab, None), "novocab.gguf: cannot tokenize the calibration text .*--requantize nearest")]
    for (model, calibration), message in cases:
        with pytest.raises(MergeError, match=message):
            merge(model, [(tmp_path / "a.gguf", 1.0)], out, calibration=calibration)
        assert not out.exists()
    with pytest.raises(MergeError, match="requantize: expected one of gptq, nearest"):
        merge(base, [(tmp_path / "a.gguf", 1.0)], out, requantize="best")
    merge(no_vocab, [(tmp_path / "a.gguf", 1.0)], out, requantize="nearest")  # the suggested fix works
    merge(no_vocab, [(tmp_path / "a.gguf", 1.0)], out, outtype="f16")  # float outputs need no calibration


# ---- llama.cpp loads the merged file -------------------------------------------------------------

@pytest.mark.llamacpp
def test_llama_cpp_runs_the_merged_model(tmp_path):
    llama_cpp = pytest.importorskip("llama_cpp")
    cfg = TinyConfig(byte_vocab=True)
    base = write_tiny_llama(tmp_path / "base.gguf", cfg)
    write_random_adapter(tmp_path / "a.gguf", matrix_shapes(cfg), rank=4, alpha=8.0, seed=3, std=0.2)
    merge(base, [(tmp_path / "a.gguf", 0.75)], tmp_path / "m.gguf", outtype="f32")
    tokens = [int(t) for t in np.random.default_rng(0).integers(0, 269, size=48)]

    llm = llama_cpp.Llama(str(tmp_path / "m.gguf"), n_ctx=64, n_batch=64, logits_all=True, n_threads=2,
                          type_k=0, type_v=0, verbose=False)  # F32 KV cache
    llm.eval(tokens)
    theirs = np.array(llm.scores[: len(tokens)], dtype=np.float32)
    ours = load_model(base, lora=[(tmp_path / "a.gguf", 0.75)], precision="f32").logits(np.array(tokens))
    plain = load_model(base, precision="f32").logits(np.array(tokens))
    assert np.abs(ours - plain).max() > 0.1
    np.testing.assert_allclose(theirs, ours, atol=1e-3, rtol=0)


# ---- SmolLM2 Q4_1, re-quantized in place -----------------------------------------------------------

@pytest.mark.slow
def test_smollm2_same_keeps_cross_entropy(tmp_path, smollm2_path):
    """Quick version of benchmarks/merge_quality.py: six layers adapted, 256 held-out tokens."""
    bench = merge_quality()
    adapter = bench.write_seeded_adapter(tmp_path / "a.gguf", smollm2_path, layers=range(6))
    merge(smollm2_path, [(adapter, 1.0)], tmp_path / "m.gguf")
    model = load_model(smollm2_path, lora=[(adapter, 1.0)])
    tokens = bench.held_out_tokens(model, 256)
    base_ce = load_model(smollm2_path).cross_entropy(tokens)
    with_adapter = model.cross_entropy(tokens)
    merged = load_model(tmp_path / "m.gguf").cross_entropy(tokens)
    assert abs(with_adapter - base_ce) / base_ce > 0.003  # the adapter moves the loss (measured 0.6%)
    assert abs(merged - with_adapter) / with_adapter < 0.01
