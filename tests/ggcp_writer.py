"""Test-only writer of old train-text-from-scratch 'ggcp' checkpoints, written from the spec
(original-finetune.md section F) and independent of ggtune.convert, so the two can check each other.

All values little-endian. A tensor record is: u32 n_dims, u32 name length, u32 type (0 = F32),
u32 ne[n_dims], name bytes, zero padding to the next multiple of 32 of the file offset, F32 data.
An absent tensor is written as n_dims = 0, name length 0, type 0, padding.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class GgcpSpec:
    context_version: int = 1  # optimizer context layout, 0 or 1
    optimizer: str = "adam"  # "adam" or "lbfgs"
    past: int = 0
    lbfgs_m: int = 3
    n_vocab: int = 11
    n_embd: int = 8
    n_mult: int = 4
    n_head: int = 2
    n_layer: int = 2
    n_rot: int = 4
    train_its: int = 7
    train_samples: int = 56
    train_tokens: int = 3584
    seed: int = 0

    @property
    def n_ff(self) -> int:
        hidden = 2 * (4 * self.n_embd) // 3
        return -(-hidden // self.n_mult) * self.n_mult  # round up to a multiple of n_mult


@dataclass
class GgcpFile:
    data: bytes
    spec: GgcpSpec
    # GGUF tensor name -> array in numpy (row-major) order, in the order the GGUF must list them
    model: dict[str, np.ndarray] = field(default_factory=dict)
    # old optimizer field name (m, v, pf, x, xp, ...) -> array; all that the file stores
    opt: dict[str, np.ndarray] = field(default_factory=dict)
    scalars: dict[str, float | int] = field(default_factory=dict)
    nx: int = 0
    iteration: int = 0
    just_initialized: bool = False
    offsets: dict[str, int] = field(default_factory=dict)  # where sections start, for corruption tests


class _Buffer:
    def __init__(self):
        self.out = bytearray()

    def pack(self, fmt: str, *values) -> None:
        self.out += struct.pack("<" + fmt, *values)

    def pad(self) -> None:
        self.out += bytes((32 - len(self.out) % 32) % 32)

    def record(self, name: str, ne: tuple[int, ...], values: np.ndarray) -> None:
        assert values.shape == tuple(reversed(ne))
        encoded = name.encode()
        self.pack(f"III{len(ne)}I", len(ne), len(encoded), 0, *ne)
        self.out += encoded
        self.pad()
        self.out += np.ascontiguousarray(values, dtype="<f4").tobytes()

    def absent(self) -> None:
        self.pack("III", 0, 0, 0)
        self.pad()


def _model_tensors(spec: GgcpSpec) -> list[tuple[str, str, tuple[int, ...]]]:
    """(old C++ name, GGUF name, ggml ne) in file order."""
    e, v, f = spec.n_embd, spec.n_vocab, spec.n_ff
    out = [("tok_embeddings.weight", "token_embd.weight", (e, v)),
           ("norm.weight", "output_norm.weight", (e,)),
           ("output.weight", "output.weight", (e, v))]
    per_layer = [("attention_norm", "attn_norm", (e,)), ("attention.wq", "attn_q", (e, e)),
                 ("attention.wk", "attn_k", (e, e)), ("attention.wv", "attn_v", (e, e)),
                 ("attention.wo", "attn_output", (e, e)), ("ffn_norm", "ffn_norm", (e,)),
                 ("feed_forward.w1", "ffn_gate", (e, f)), ("feed_forward.w2", "ffn_down", (f, e)),
                 ("feed_forward.w3", "ffn_up", (e, f))]
    for i in range(spec.n_layer):
        out += [(f"layers.{i}.{old}.weight", f"blk.{i}.{new}.weight", ne) for old, new, ne in per_layer]
    return out


def _v0_params(spec: GgcpSpec) -> bytes:
    """The 96-byte ggml_opt_params of the old ggml: type @0, n_threads @4, past @8, delta @12,
    two bools padded to 4 bytes, Adam fields, lbfgs m @60, further L-BFGS fields."""
    block = bytearray(96)
    struct.pack_into("<Iiif", block, 0, 0 if spec.optimizer == "adam" else 1, 6, spec.past, 1e-5)
    struct.pack_into("<i8f", block, 24, 256, 1.0, 0.1, 1e-3, 0.9, 0.999, 1e-8, 1e-5, 1e-3)
    struct.pack_into("<iii5fI", block, 60, spec.lbfgs_m, 100, 20, 1e-5, 1e-4, 0.9, 1e-20, 1e20, 2)
    return bytes(block)


def build_ggcp(spec: GgcpSpec) -> GgcpFile:
    rng = np.random.default_rng(spec.seed)
    buf = _Buffer()
    result = GgcpFile(b"", spec)
    buf.pack("11I", 0x67676370, 0, spec.train_its, spec.train_samples, spec.train_tokens,
             spec.n_vocab, spec.n_embd, spec.n_mult, spec.n_head, spec.n_layer, spec.n_rot)
    result.offsets["model"] = len(buf.out)
    for old, new, ne in _model_tensors(spec):
        values = rng.standard_normal(tuple(reversed(ne))).astype(np.float32)
        buf.record(old, ne, values)
        result.model[new] = values
    nx = sum(a.size for a in result.model.values())
    result.nx, result.iteration, result.just_initialized = nx, spec.train_its, False

    result.offsets["optimizer"] = len(buf.out)
    buf.pack("I", spec.context_version)
    if spec.context_version == 0:
        buf.out += _v0_params(spec)
    else:
        buf.pack("ii", spec.past, spec.lbfgs_m)
    result.offsets["nx"] = len(buf.out)
    buf.pack("Qii", nx, result.iteration, int(result.just_initialized))
    result.offsets["optimizer_tensors"] = len(buf.out)

    def tensor(key: str, ne: tuple[int, ...]) -> None:
        values = rng.standard_normal(tuple(reversed(ne))).astype(np.float32)
        buf.record(f"opt.{key}" if key != "pf" else "", ne, values)
        result.opt[key] = values

    def past_losses() -> None:
        if spec.past > 0:
            tensor("pf", (spec.past,))
        else:
            buf.absent()

    if spec.optimizer == "adam":
        names = ["x", "g", "g2", "m", "v", "mh", "vh"] if spec.context_version == 0 else ["m", "v"]
        for key in names:
            tensor(key, (nx,))
        past_losses()
        result.scalars = {"fx_best": 2.5, "fx_prev": 2.75, "n_no_improvement": 3}
        buf.pack("ffi", *result.scalars.values())
    else:
        m = spec.lbfgs_m
        for key in ["x", "xp", "g", "gp", "d"]:
            tensor(key, (nx,))
        past_losses()
        tensor("lmal", (m,))
        tensor("lmys", (m,))
        tensor("lms", (nx, m))
        tensor("lmy", (nx, m))
        result.scalars = {"fx_best": 1.25, "step": 0.5, "j": 2, "k": 5, "end": -1,
                          "n_no_improvement": 4}
        buf.pack("ffiiii", *result.scalars.values())
    result.data = bytes(buf.out)
    return result
