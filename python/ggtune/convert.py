"""Old train-text-from-scratch 'ggcp' checkpoints -> GGUF, as llama.cpp's
convert-train-checkpoint-to-gguf.py wrote them (spec: original-finetune.md section F).

Input layout, all little-endian:
  header     u32 magic 0x67676370 ('ggcp'), version 0, train_its, train_samples, train_tokens,
             n_vocab, n_embd, n_mult, n_head, n_layer, n_rot
  model      tensor records: tok_embeddings, norm, output, then per layer attention_norm, wq, wk, wv,
             wo, ffn_norm, w1, w2, w3
  optimizer  u32 context version (0 or 1), parameters, tensor records, scalars (see _read_optimizer)
A tensor record: u32 n_dims, u32 name_len, u32 ggml type (0 = F32), u32 ne[n_dims], the name, zero
padding up to the next 32-byte file offset, then the data. A tensor the writer did not have (the
past-loss buffer when past = 0) is a record with n_dims = 0 and no data.

Every byte is accounted for: a short file, a wrong magic or version, a size that disagrees with the
header, or bytes after the optimizer state raise CheckpointFormatError naming file, offset and field,
and no output file is written.
"""

from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import numpy as np

from .atomic import atomic_path
from .finite import describe_non_finite

GGCP_MAGIC = 0x67676370  # 'ggcp' as a little-endian u32
GGML_TYPE_F32 = 0
OPT_TYPE_ADAM, OPT_TYPE_LBFGS = 0, 1
OPT_PARAMS_V0_SIZE = 96  # sizeof(struct ggml_opt_params) in the old ggml
RECORD_ALIGNMENT = 32
RMS_EPS = 1e-5  # the original writes this fixed value; ggcp files do not store it
ARCHITECTURE = "llama"


class CheckpointFormatError(ValueError):
    """The input is not a valid ggcp checkpoint. ``detail`` is the message without the file name."""

    def __init__(self, path: str | os.PathLike, offset: int, what: str, problem: str):
        self.path, self.offset = Path(path), offset
        self.detail = f"offset {offset}: {what}: {problem}"
        super().__init__(f"{path}: {self.detail}")


@dataclass(frozen=True)
class Hparams:
    n_vocab: int
    n_embd: int
    n_mult: int
    n_head: int
    n_layer: int
    n_rot: int

    @property
    def n_ff(self) -> int:
        """Feed-forward width as train-text-from-scratch derived it from n_mult."""
        return ((2 * (4 * self.n_embd) // 3 + self.n_mult - 1) // self.n_mult) * self.n_mult


# A GGUF metadata entry: key, value type (gguf.GGUFValueType name), value.
Metadata = list[tuple[str, str, object]]
# Tensors by GGUF name, as numpy arrays (row-major: numpy shape = reversed ggml ne).
Tensors = list[tuple[str, np.ndarray]]


@dataclass
class OptimizerState:
    context_version: int  # 0 or 1: the layout of the ggcp optimizer context
    kind: str  # "adam" or "lbfgs" (the GGUF optimizer.type)
    past: int  # convergence window; its loss buffer is stored only when > 0
    nx: int  # number of optimised parameters
    iteration: int
    just_initialized: bool
    metadata: Metadata = field(default_factory=list)  # optimizer.adam.* / optimizer.lbfgs.* keys
    tensors: Tensors = field(default_factory=list)


@dataclass
class GgcpCheckpoint:
    path: Path
    train_its: int
    train_samples: int
    train_tokens: int
    hparams: Hparams
    model_tensors: Tensors
    optimizer: OptimizerState


class _Cursor:
    """Bounds-checked little-endian reads over the input bytes; errors name the field."""

    def __init__(self, path: Path, data: np.ndarray):  # data: (n_bytes,) uint8
        self.path, self.data, self.offset = path, data, 0

    def fail(self, what: str, problem: str, at: int | None = None) -> NoReturn:
        raise CheckpointFormatError(self.path, self.offset if at is None else at, what, problem)

    def take(self, n_bytes: int, what: str) -> np.ndarray:
        end = self.offset + n_bytes
        if end > len(self.data):
            self.fail(what, f"needs {n_bytes} bytes but the file ends after {len(self.data)} "
                            f"(truncated?)")
        chunk = self.data[self.offset:end]
        self.offset = end
        return chunk

    def scalar(self, fmt: str, what: str):
        return struct.unpack(fmt, self.take(struct.calcsize(fmt), what).tobytes())[0]

    def u32(self, what: str) -> int:
        return self.scalar("<I", what)

    def i32(self, what: str) -> int:
        return self.scalar("<i", what)

    def u64(self, what: str) -> int:
        return self.scalar("<Q", what)

    def f32(self, what: str) -> float:
        return self.scalar("<f", what)

    def count(self, what: str) -> int:
        """An i32 that stores a count or counter: negative values are corrupt."""
        at, value = self.offset, self.i32(what)
        if value < 0:
            self.fail(what, f"is {value}, expected >= 0", at=at)
        return value

    def record(self, what: str, ne: tuple[int, ...]) -> np.ndarray | None:
        """One F32 tensor record whose ggml shape must be ``ne``; returns an array of numpy shape
        ne[::-1] viewing the input, or None for the empty record (ne = ())."""
        start = self.offset
        n_dims = self.u32(f"{what} n_dims")
        name_len = self.u32(f"{what} name length")
        ggml_type = self.u32(f"{what} type")
        if n_dims != len(ne):
            self.fail(what, f"has {n_dims} dimensions, expected {len(ne)}", at=start)
        if ggml_type != GGML_TYPE_F32:
            self.fail(what, f"has ggml type {ggml_type}, expected {GGML_TYPE_F32} (F32)", at=start)
        stored_ne = tuple(self.u32(f"{what} ne[{i}]") for i in range(n_dims))
        name = self.take(name_len, f"{what} name").tobytes().decode("utf-8", "replace")
        if stored_ne != ne:
            self.fail(what, f"record '{name}' has ne {list(stored_ne)}, expected {list(ne)} "
                            f"from the header", at=start)
        self.take(-self.offset % RECORD_ALIGNMENT, f"{what} alignment padding")
        if not ne:
            return None
        data = self.take(4 * math.prod(ne), f"{what} data ('{name}')").view("<f4")
        problem = describe_non_finite(data)
        if problem is not None:
            self.fail(what, f"record '{name}' holds {problem}", at=start)
        return data.reshape(ne[::-1])

    def expect_end(self, what: str) -> None:
        trailing = len(self.data) - self.offset
        if trailing:
            self.fail(what, f"{trailing} unexpected trailing bytes")


def read_ggcp(path: str | os.PathLike) -> GgcpCheckpoint:
    """Parses a whole ggcp checkpoint; tensor arrays are read-only views of a memory map."""
    path = Path(path)
    if path.stat().st_size == 0:
        raise CheckpointFormatError(path, 0, "magic", "the file is empty")
    cur = _Cursor(path, np.memmap(path, dtype=np.uint8, mode="r"))
    magic = cur.u32("magic")
    if magic != GGCP_MAGIC:
        cur.fail("magic", f"is 0x{magic:08x}, expected 0x{GGCP_MAGIC:08x} ('ggcp'): not a "
                          f"train-text-from-scratch checkpoint", at=0)
    version = cur.u32("version")
    if version != 0:
        cur.fail("version", f"is {version}, only version 0 exists", at=4)
    train_its, train_samples, train_tokens = (cur.u32(f"train_{k}") for k in ("its", "samples", "tokens"))
    hparams = _read_hparams(cur)
    model_tensors = [(name, cur.record(f"model tensor '{name}'", ne))
                     for name, ne in _model_layout(hparams)]
    n_params = sum(a.size for _, a in model_tensors)
    optimizer = _read_optimizer(cur, n_params)
    cur.expect_end("end of the optimizer context")
    return GgcpCheckpoint(path, train_its, train_samples, train_tokens, hparams, model_tensors, optimizer)


def _read_hparams(cur: _Cursor) -> Hparams:
    names = list(Hparams.__dataclass_fields__)
    at = {name: cur.offset + 4 * i for i, name in enumerate(names)}
    hp = Hparams(*(cur.u32(name) for name in names))
    for name in ("n_vocab", "n_embd", "n_mult", "n_head"):
        if getattr(hp, name) == 0:
            cur.fail(name, "is 0", at=at[name])
    if hp.n_embd % hp.n_head:
        cur.fail("n_head", f"{hp.n_head} does not divide n_embd {hp.n_embd}", at=at["n_head"])
    if hp.n_rot > hp.n_embd // hp.n_head:
        cur.fail("n_rot", f"{hp.n_rot} exceeds the head size {hp.n_embd // hp.n_head}",
                 at=at["n_rot"])
    return hp


def _model_layout(hp: Hparams) -> list[tuple[str, tuple[int, ...]]]:
    """GGUF tensor names in file order with their ggml ne (the old names in comments)."""
    e, v, ff = hp.n_embd, hp.n_vocab, hp.n_ff
    layout = [("token_embd.weight", (e, v)),  # tok_embeddings
              ("output_norm.weight", (e,)),  # norm
              ("output.weight", (e, v))]
    for i in range(hp.n_layer):
        layout += [(f"blk.{i}.{name}.weight", ne) for name, ne in (
            ("attn_norm", (e,)),  # attention_norm
            ("attn_q", (e, e)), ("attn_k", (e, e)), ("attn_v", (e, e)),  # wq wk wv
            ("attn_output", (e, e)),  # wo
            ("ffn_norm", (e,)),
            ("ffn_gate", (e, ff)),  # w1
            ("ffn_down", (ff, e)),  # w2
            ("ffn_up", (e, ff)),  # w3
        )]
    return layout


def _read_optimizer(cur: _Cursor, n_params: int) -> OptimizerState:
    """Optimizer context version 0: the 96-byte ggml_opt_params (type at byte 0, past at 8, lbfgs m
    at 60), nx (u64), iter, just_initialized; Adam stores x g g2 m v mh vh pf, L-BFGS x xp g gp d pf
    lmal lmys lms lmy. Version 1: past, lbfgs m, nx, iter, just_initialized and no type: Adam then
    stores m v pf, L-BFGS the same as in version 0, so the type is the layout that fits the file."""
    start = cur.offset
    version = cur.u32("optimizer context version")
    if version == 0:
        params = cur.take(OPT_PARAMS_V0_SIZE, "optimizer parameters")
        opt_type, past, lbfgs_m = (struct.unpack_from(f, params, at)[0]
                                   for f, at in (("<I", 0), ("<i", 8), ("<i", 60)))
        if opt_type not in (OPT_TYPE_ADAM, OPT_TYPE_LBFGS):
            cur.fail("optimizer parameters type", f"is {opt_type}, expected 0 (Adam) or 1 (L-BFGS)",
                     at=start + 4)
        if past < 0:
            cur.fail("optimizer parameters past", f"is {past}, expected >= 0", at=start + 12)
    elif version == 1:
        past = cur.count("optimizer past")
        lbfgs_m = cur.i32("optimizer lbfgs m")
    else:
        cur.fail("optimizer context version", f"is {version}, expected 0 or 1", at=start)
    nx_at, nx = cur.offset, cur.u64("optimizer nx")
    if nx != n_params:
        cur.fail("optimizer nx", f"is {nx}, but the model has {n_params} parameters", at=nx_at)
    state = OptimizerState(version, "", past, nx, cur.count("optimizer iteration"),
                           bool(cur.i32("optimizer just_initialized")))
    if version == 1:
        _read_untyped_v1(cur, state, lbfgs_m)
    elif opt_type == OPT_TYPE_ADAM:
        _read_adam(cur, state)
    else:
        _read_lbfgs(cur, state, lbfgs_m)
    return state


def _read_untyped_v1(cur: _Cursor, state: OptimizerState, lbfgs_m: int) -> None:
    """Tries both layouts; the one that ends exactly at the end of the file is the type (they
    cannot both: L-BFGS stores seven more records after the point where Adam's state ends)."""
    start, failures = cur.offset, {}
    for kind, read in (("Adam", lambda: _read_adam(cur, state)),
                       ("L-BFGS", lambda: _read_lbfgs(cur, state, lbfgs_m))):
        cur.offset = start
        state.metadata, state.tensors = [], []
        try:
            read()
            cur.expect_end("end of the optimizer context")
            return
        except CheckpointFormatError as error:
            failures[kind] = error.detail
    cur.fail("optimizer context version 1", "stores no optimizer type and the remaining "
             f"{len(cur.data) - start} bytes fit neither layout; "
             + "; ".join(f"as {kind}: {detail}" for kind, detail in failures.items()), at=start)


def _read_adam(cur: _Cursor, state: OptimizerState) -> None:
    nx, past = state.nx, state.past
    if state.context_version == 0:  # x, g, g2 (recomputed by the optimizer) are dropped
        for name in ("x", "g", "g2"):
            cur.record(f"adam {name}", (nx,))
    m = cur.record("adam m", (nx,))
    v = cur.record("adam v", (nx,))
    if state.context_version == 0:  # the bias-corrected mh, vh are dropped as well
        for name in ("mh", "vh"):
            cur.record(f"adam {name}", (nx,))
    pf = cur.record("adam pf", (past,) if past else ())
    state.kind = "adam"
    state.metadata = [
        ("optimizer.adam.best_loss", "FLOAT32", cur.f32("adam fx_best")),
        ("optimizer.adam.previous_loss", "FLOAT32", cur.f32("adam fx_prev")),
        ("optimizer.adam.no_improvement_count", "UINT32", cur.count("adam n_no_improvement")),
    ]
    state.tensors = [("optimizer.adam.first_moments", m), ("optimizer.adam.second_moments", v)]
    if past:
        state.tensors.append(("optimizer.adam.past_loss_values", pf))


def _read_lbfgs(cur: _Cursor, state: OptimizerState, m: int) -> None:
    if m <= 0:
        cur.fail("lbfgs m", f"is {m}, L-BFGS needs a memory of at least 1")
    nx, past = state.nx, state.past
    prefix = "optimizer.lbfgs."
    names_ne = [("current_parameters", "x", (nx,)), ("previous_parameters", "xp", (nx,)),
                ("current_gradients", "g", (nx,)), ("previous_gradients", "gp", (nx,)),
                ("search_direction", "d", (nx,)), ("past_loss_values", "pf", (past,) if past else ()),
                ("memory_alpha", "lmal", (m,)), ("memory_ys", "lmys", (m,)),
                ("memory_s", "lms", (nx, m)), ("memory_y", "lmy", (nx, m))]
    tensors = [(prefix + name, cur.record(f"lbfgs {old}", ne)) for name, old, ne in names_ne]
    state.kind = "lbfgs"
    state.metadata = [
        (prefix + "approx_hessian_count", "UINT32", m),
        (prefix + "best_loss", "FLOAT32", cur.f32("lbfgs fx_best")),
        (prefix + "line_search_step", "FLOAT32", cur.f32("lbfgs step")),
        (prefix + "line_search_j", "INT32", cur.i32("lbfgs j")),
        (prefix + "line_search_k", "INT32", cur.i32("lbfgs k")),
        (prefix + "line_search_end", "INT32", cur.i32("lbfgs end")),
        (prefix + "no_improvement_count", "UINT32", cur.count("lbfgs n_no_improvement")),
    ]
    state.tensors = [(name, array) for name, array in tensors if array is not None]


def gguf_metadata(ckpt: GgcpCheckpoint) -> Metadata:
    """Every key the original writes after general.architecture (which GGUFWriter writes first),
    in its order and with its value types."""
    hp, opt = ckpt.hparams, ckpt.optimizer
    return [
        ("general.file_type", "UINT32", 0),  # all F32
        ("llama.attention.layer_norm_rms_epsilon", "FLOAT32", RMS_EPS),
        ("training.file_version", "UINT32", 0),
        ("training.type", "STRING", "train_model"),
        ("training.iteration_count", "UINT32", ckpt.train_its),
        ("training.sample_count", "UINT32", ckpt.train_samples),
        ("training.token_count", "UINT32", ckpt.train_tokens),
        ("llama.embedding_length", "UINT32", hp.n_embd),  # n_vocab is implied by token_embd
        ("llama.attention.head_count", "UINT32", hp.n_head),
        ("llama.block_count", "UINT32", hp.n_layer),
        ("llama.rope.dimension_count", "UINT32", hp.n_rot),
        ("llama.feed_forward_length", "UINT32", hp.n_ff),
        ("optimizer.file_version", "UINT32", 0),
        ("optimizer.convergence_past_count", "UINT32", opt.past),
        ("optimizer.parameter_count", "UINT64", opt.nx),
        ("optimizer.iteration_count", "UINT32", opt.iteration),
        ("optimizer.just_initialized", "BOOL", opt.just_initialized),
        ("optimizer.type", "STRING", opt.kind),
        *opt.metadata,
    ]


def write_checkpoint_gguf(ckpt: GgcpCheckpoint, output: str | os.PathLike) -> None:
    """Writes the GGUF atomically: the model tensors, then the optimizer's, all F32."""
    import gguf

    with atomic_path(output) as tmp:
        writer = gguf.GGUFWriter(tmp, ARCHITECTURE)
        for key, value_type, value in gguf_metadata(ckpt):
            writer.add_key_value(key, value, gguf.GGUFValueType[value_type])
        for name, array in ckpt.model_tensors + ckpt.optimizer.tensors:
            writer.add_tensor(name, array)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()


def convert_checkpoint(input: str | os.PathLike, output: str | os.PathLike) -> GgcpCheckpoint:
    """Converts a ggcp checkpoint into the GGUF convert-train-checkpoint-to-gguf.py writes.
    The whole input is validated before the output is created."""
    ckpt = read_ggcp(input)
    write_checkpoint_gguf(ckpt, output)
    return ckpt


def describe(ckpt: GgcpCheckpoint) -> str:
    hp, opt = ckpt.hparams, ckpt.optimizer
    n_tensors = len(ckpt.model_tensors) + len(opt.tensors)
    return (f"{n_tensors} tensors: model n_vocab={hp.n_vocab} n_embd={hp.n_embd} n_ff={hp.n_ff} "
            f"n_head={hp.n_head} n_layer={hp.n_layer} n_rot={hp.n_rot} after {ckpt.train_its} "
            f"iterations; optimizer {opt.kind} (context version {opt.context_version}, "
            f"{opt.nx} parameters, past={opt.past}, iteration {opt.iteration})")


def add_cli(subparsers) -> None:
    """Registers ``convert-checkpoint --input F --output G`` on an argparse subparsers object."""
    parser = subparsers.add_parser(
        "convert-checkpoint",
        help="convert an old train-text-from-scratch 'ggcp' checkpoint to GGUF",
        description="Convert an old train-text-from-scratch 'ggcp' checkpoint into the GGUF "
                    "checkpoint that llama.cpp's convert-train-checkpoint-to-gguf.py writes.")
    parser.add_argument("--input", "-i", required=True, help="ggcp checkpoint to read")
    parser.add_argument("--output", "-o", required=True, help="GGUF file to write")
    parser.set_defaults(func=_run_convert_checkpoint)


def _run_convert_checkpoint(args) -> int:
    from .cli import require_file

    require_file(args.input, "--input")
    ckpt = convert_checkpoint(args.input, args.output)  # errors: one line by cli.main
    print(f"wrote {args.output}: {describe(ckpt)}")
    return 0
