"""The transformer block of every family, forward and backward side by side.

Shape legend: B rows, S tokens per row, T = B*S, C n_embd, F n_ff, Hq / Hkv query / key-value
heads, D head dim, Skv keys (S, or n_past + S with a KV cache), r LoRA rank.

One forward serves inference (model.py: perplexity, generate with a KV cache) and training
(graph.py: keep=True returns the `Saved` record the backward reads). What differs between
families is read from the architecture description (architecture.py), never from the family name:

    h  = rms_norm(x, attn_norm)
    q, k, v = h·Wqᵀ (+bq), h·Wkᵀ (+bk), h·Wvᵀ (+bv)          qkv_bias
    q, k = rms_norm per head (attn_q_norm, attn_k_norm)     qk_norm
    q, k = rope(q), rope(k)                                 per layer: base, scale, factors, yarn
    a  = attention(q, k, v), keys first_key..i              causal; sliding window; packed samples
    o  = a·Woᵀ;  o = rms_norm(o, post_attention_norm)       post_norms
    x1 = x + o
    h2 = rms_norm(x1, ffn_norm)
    f  = (act(h2·Wgᵀ) * h2·Wuᵀ)·Wdᵀ                         act: SiLU (swiglu) or GELU-tanh (geglu)
    f  = rms_norm(f, post_ffw_norm)                         post_norms
    x2 = x1 + f

Matrix products go through a `linears` object (graph.LoraLinears in training, model's
InferenceLinears at inference), which adds the LoRA terms s·(x·Aᵀ)·Bᵀ.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Optional

import numpy as np

from .architecture import Architecture
from .names import tensor_name

F32 = 4
BF16 = np.dtype(np.uint16)  # bfloat16 bits (_core.to_bf16 / from_bf16): a kept array's compact form

# The kept arrays stored as bfloat16 in the compact layout (relative rounding <= 2^-8 per element).
# Each enters the backward only through sums over many tokens or features (the LoRA factor
# gradients, the norm backward's row mean, the attention backward's dO·Vᵀ and row deltas), so the
# rounding averages out: measured on SmolLM2 (docs/design.md, "Memory"), the LoRA gradients move by
# less than the int8 matmul engine moves them. q and k stay float32: the attention backward
# recomputes softmax(q·kᵀ - lse) against the forward's float32 lse, where a rounded score would
# shift every probability of its row.
COMPACT = ("v", "att", "x1", "gate", "up", "o", "f")
# The COMPACT arrays the backward widens to float32 copies (widen); the others' readers take
# the bfloat16 bits themselves: the gate's backward (gate, up), the attention backward and the
# attention output's LoRA gradient (att), the RMS norms (x1; Gemma's o and f).
WIDENED = ("v",)


def empty(*shape: int) -> np.ndarray:
    return np.empty(shape, np.float32)


def widen(kernels, a: np.ndarray) -> np.ndarray:
    """The float32 values of a kept array (a fresh copy of bfloat16 bits, else the array)."""
    if a.dtype == np.float32:
        return a
    out = np.empty(a.shape, np.float32)
    kernels.from_bf16(a.reshape(-1), out.reshape(-1))
    return out


def kept_dtype(precision: str) -> np.dtype:
    """The dtype of the COMPACT kept arrays: float32 when the matmuls are asked for exact f32
    (gradient checks, --precision f32), bfloat16 bits otherwise."""
    return np.dtype(np.float32) if precision == "f32" else BF16


@dataclass(frozen=True)
class Kept:
    """One array of a layer's Saved record as the memory plan sees it."""

    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


@dataclass
class Tokens:
    """Where a batch's tokens sit: B rows of S tokens, each with a position and a first key.

    positions int32 [B, S] (rope; packed samples restart at 0), first_key int32 [B, S] or None
    (query (b, i) attends keys first_key[b, i] ..= n_past + i; None: all keys before it). n_past:
    tokens already in the KV cache (their keys come first)."""

    B: int
    S: int
    positions: np.ndarray
    first_key: Optional[np.ndarray] = None
    n_past: int = 0

    @classmethod
    def rows(cls, B: int, S: int, positions=None, first_key=None, n_past: int = 0) -> "Tokens":
        if positions is None:
            positions = np.broadcast_to(np.arange(n_past, n_past + S, dtype=np.int32), (B, S))
        positions = np.ascontiguousarray(positions, np.int32)
        if positions.shape != (B, S):
            raise ValueError(f"positions: expected int32 [{B}, {S}], got shape {positions.shape}")
        if first_key is not None:
            first_key = np.ascontiguousarray(first_key, np.int32)
            if first_key.shape != (B, S):
                raise ValueError(f"first_key: expected int32 [{B}, {S}], got shape {first_key.shape}")
        return cls(B, S, positions, first_key, n_past)

    @property
    def T(self) -> int:
        return self.B * self.S

    def first_keys(self, window: int) -> Optional[np.ndarray]:
        """int32 [B, S] for a layer with this sliding window (0: none), combined with the given
        first keys by max; None when every query sees every key before it."""
        if not window:
            return self.first_key
        own = np.arange(self.n_past, self.n_past + self.S, dtype=np.int32) - (window - 1)  # key index space
        own = np.broadcast_to(np.maximum(own, 0), (self.B, self.S))
        if self.first_key is not None:
            own = np.maximum(own, self.first_key)
        return np.ascontiguousarray(own, np.int32)


@dataclass
class Saved:
    """What one layer's forward keeps for its backward (None where the family has no such step):
    only what the cheap kernels cannot rederive. The backward recomputes h = rms_norm(x),
    h2 = rms_norm(x1) (with their rstd) and act(gate, up); the COMPACT arrays may be bfloat16 bits
    (Block.kept_dtype). Every array but x counts in the memory plan: memory.py sizes this record from
    Block.kept_layout; x is the layer's input, which the graph keeps for every layer anyway."""

    x: np.ndarray  # [T, C] layer input (float32: the residual stream)
    q: np.ndarray  # [T, Hq*D] after norm and rope
    k: np.ndarray  # [T, Hkv*D]
    v: np.ndarray  # [T, Hkv*D]
    att: np.ndarray  # [T, Hq*D] attention output
    lse: np.ndarray  # [B, Hq, S]
    x1: np.ndarray  # [T, C] after the attention residual
    gate: np.ndarray  # [T, F]
    up: np.ndarray  # [T, F]
    q_raw: Optional[np.ndarray] = None  # [T, Hq*D] before the q norm (qk_norm)
    rstd_q: Optional[np.ndarray] = None  # [T*Hq]
    k_raw: Optional[np.ndarray] = None  # [T, Hkv*D]
    rstd_k: Optional[np.ndarray] = None  # [T*Hkv]
    o: Optional[np.ndarray] = None  # [T, C] attention projection before its post norm (post_norms)
    rstd_o: Optional[np.ndarray] = None  # [T]
    f: Optional[np.ndarray] = None  # [T, C] feed-forward output before its post norm
    rstd_f: Optional[np.ndarray] = None  # [T]
    z: dict = field(default_factory=dict)  # LoRA down-projections x·Aᵀ [T, r] by tensor name
    # not sized: views of the weights and the batch
    w_an: Optional[np.ndarray] = None
    w_fn: Optional[np.ndarray] = None
    tokens: Optional[Tokens] = None
    first_key: Optional[np.ndarray] = None

    def arrays(self) -> dict[str, np.ndarray]:
        """The sized arrays by field name (the memory plan's view of this record)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)
               if f.name not in ("x", "z", "w_an", "w_fn", "tokens", "first_key") and getattr(self, f.name) is not None}
        out.update({f"z:{name}": z for name, z in self.z.items() if z is not None})
        return out


FLOAT_TYPES = (0, 1, 30)  # ggml F32, F16, BF16: what precision "auto" multiplies exactly


def attention_tiles(precision: str, weights) -> str:
    """The attention tiles (`_core.attention_forward(..., tiles=)`) of a matmul precision: bf16 operands
    with float32 accumulation where the products of q, k and v already round (precisions "int8" and
    "bf16", and "auto" on quantized q/k/v weights, which it multiplies in int8), which moves the mean
    KL to llama.cpp by well under int8's own; float32 where they are exact ("f32", "ggml", "auto" on
    float weights), whose logits must stay within 1e-3 of the std of llama.cpp's (bf16 tiles move them
    by 2-4e-2). Measurements: docs/design.md. Tiers without vdpbf16ps run float32 tiles either way."""
    if precision in ("int8", "bf16"):
        return "bf16"
    if precision != "auto":
        return "f32"
    qkv = [layer.matrices[kind] for layer in weights.layers for kind in ("attn_q", "attn_k", "attn_v")]
    return "bf16" if all(w.ggml_type not in FLOAT_TYPES for w in qkv) else "f32"


class Block:
    """Forward and backward of layer `li` of a model (gguf_io.ModelWeights)."""

    def __init__(self, weights, linears, kernels, *, round_kv_f16: bool = False, ggml_gelu: bool = False,
                 attention_tiles: str = "f32", kept: np.dtype = np.dtype(np.float32)):
        self.weights = weights
        self.arch: Architecture = weights.arch
        self.lin = linears
        self.k = kernels
        # inference "ggml" precision: llama.cpp's F16 KV cache; ggml-cpu's float16 GELU table (geglu)
        self.round_kv_f16 = round_kv_f16
        self.ggml_gelu = ggml_gelu
        self.attention_tiles = attention_tiles  # "f32" or "bf16", see attention_tiles()
        self.kept_dtype = np.dtype(kept)  # of the COMPACT arrays (kept_dtype(precision))

    # ---------------------------------------------------------------- what a layer keeps
    def kept_layout(self, B: int, S: int) -> dict[str, Kept]:
        """Shape and dtype of each Saved array of one layer (without x, the layer input, and the
        LoRA z, see memory.py)."""
        hp, fam = self.arch.hp, self.arch.family
        T, C, F, Q, KV = B * S, hp.n_embd, hp.n_ff, hp.n_embd_q, hp.n_embd_kv
        shapes = dict(q=(T, Q), k=(T, KV), v=(T, KV), att=(T, Q), lse=(B, hp.n_head, S), x1=(T, C),
                      gate=(T, F), up=(T, F))
        if fam.qk_norm:
            shapes.update(q_raw=(T, Q), rstd_q=(T * hp.n_head,), k_raw=(T, KV), rstd_k=(T * hp.n_head_kv,))
        if fam.post_norms:
            shapes.update(o=(T, C), rstd_o=(T,), f=(T, C), rstd_f=(T,))
        f32 = np.dtype(np.float32)
        return {name: Kept(shape, self.kept_dtype if name in COMPACT else f32) for name, shape in shapes.items()}

    def backward_temporary_layout(self, B: int, S: int) -> dict[str, Kept]:
        """Largest set of float32 buffers alive at once inside backward(): the gradients, the
        recomputed h, h2, act (and their rstd), and the float32 copies of the WIDENED arrays."""
        hp, fam = self.arch.hp, self.arch.family
        T, C, F, Q, KV = B * S, hp.n_embd, hp.n_ff, hp.n_embd_q, hp.n_embd_kv
        shapes = dict(dx2=(T, C), dx1=(T, C), datt=(T, Q), dq=(T, Q), dk=(T, KV), dv=(T, KV), dh=(T, C),
                      dx=(T, C), dact=(T, F), dgate=(T, F), dup=(T, F), h=(T, C), rstd1=(T,), h2=(T, C),
                      rstd2=(T,), act=(T, F))
        if fam.post_norms:
            shapes.update(df=(T, C), do=(T, C))
        if fam.qk_norm:
            shapes.update(dq_raw=(T, Q), dk_raw=(T, KV))
        if self.kept_dtype != np.float32:
            shapes.update({f"{name} (f32)": kept.shape for name, kept in self.kept_layout(B, S).items()
                           if name in WIDENED})
        return {name: Kept(shape, np.dtype(np.float32)) for name, shape in shapes.items()}

    # ---------------------------------------------------------------- forward
    def forward(self, li: int, x: np.ndarray, tokens: Tokens, *, keep: bool = False, cache=None):
        """x [T, C] -> (x2 [T, C], Saved or None). With a KV cache (inference), keys and values
        are appended to it and the queries attend every cached key allowed by first_key."""
        arch, hp, fam, lin, kn = self.arch, self.arch.hp, self.arch.family, self.lin, self.k
        layer = self.weights.layers[li]
        B, S, T = tokens.B, tokens.S, tokens.T
        Hq, Hkv, D = hp.n_head, hp.n_head_kv, hp.head_dim
        name = lambda kind: tensor_name(kind, li)  # noqa: E731
        w_an = lin.norm_weight(layer.norms["attn_norm"], name("attn_norm"))
        h, rstd1 = self._rms_norm(x, w_an)
        qkv = lin.forward(h, [(layer.matrices[kd], name(kd)) for kd in ("attn_q", "attn_k", "attn_v")])
        (q, zq), (k, zk), (v, zv) = qkv
        for kd, y in zip(("attn_q", "attn_k", "attn_v"), (q, k, v)):
            if kd in layer.biases:
                kn.add_bias(y, layer.biases[kd])
        q_raw = k_raw = rstd_q = rstd_k = None
        if fam.qk_norm:  # RMSNorm over each head: q viewed as [T*Hq, D]
            q_raw, k_raw = q, k
            q, rstd_q = self._rms_norm(q_raw.reshape(T * Hq, D), layer.norms["attn_q_norm"])
            k, rstd_k = self._rms_norm(k_raw.reshape(T * Hkv, D), layer.norms["attn_k_norm"])
            q, k = q.reshape(T, Hq * D), k.reshape(T, Hkv * D)
        rope, pos = arch.rope(li), tokens.positions.reshape(T)
        rope.apply(kn, q.reshape(T, Hq, D), pos)
        rope.apply(kn, k.reshape(T, Hkv, D), pos)
        if self.round_kv_f16:
            for y in (q, k, v):
                kn.round_activations(y, 1, y)  # ggml type 1: F16
        first_key = tokens.first_keys(arch.window(li))
        k4, v4 = k.reshape(B, S, Hkv, D), v.reshape(B, S, Hkv, D)
        if cache is not None:
            k4, v4 = cache.store(li, k4, v4)
        att, lse, att_kept = empty(T, Hq * D), empty(B, Hq, S), self._compact_copy(keep, (T, Hq * D))
        kn.attention_forward(q.reshape(B, S, Hq, D), k4, v4, arch.attention_scale, att.reshape(B, S, Hq, D), lse,
                             first_key=first_key, tiles=self.attention_tiles,
                             out_bf16=None if att_kept is None else att_kept.reshape(B, S, Hq, D))
        o, zo = lin.forward(att, [(layer.matrices["attn_output"], name("attn_output"))])[0]
        o_raw = rstd_o = None
        if fam.post_norms:
            o_raw = o
            o, rstd_o = self._rms_norm(o_raw, layer.norms["post_attention_norm"])
        x1, x1_kept = empty(T, hp.n_embd), self._compact_copy(keep, (T, hp.n_embd))
        kn.add(x, o, x1, x1_kept)
        w_fn = lin.norm_weight(layer.norms["ffn_norm"], name("ffn_norm"))
        h2, rstd2 = self._rms_norm(x1, w_fn)
        (gate, zg), (up, zu) = lin.forward(h2, [(layer.matrices[kd], name(kd)) for kd in ("ffn_gate", "ffn_up")])
        act, gate, up = self._gate_forward(gate, up, keep)  # gate, up: as the layer keeps them
        f, zd = lin.forward(act, [(layer.matrices["ffn_down"], name("ffn_down"))])[0]
        f_raw = rstd_f = None
        if fam.post_norms:
            f_raw = f
            f, rstd_f = self._rms_norm(f_raw, layer.norms["post_ffw_norm"])
        x2 = f  # f is this layer's own buffer (f_raw keeps the pre-norm values)
        kn.add(x1, f, x2)
        if not keep:
            return x2, None
        z = {name(kd): zz for kd, zz in zip(("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up",
                                              "ffn_down"), (zq, zk, zv, zo, zg, zu, zd))}
        # att and x1 as their producers wrote them compact (when kept so); gate, up as _gate_forward's
        att, x1 = (a if copy is None else copy for a, copy in ((att, att_kept), (x1, x1_kept)))
        saved = Saved(x=x, q=q, k=k, v=v, att=att, lse=lse, x1=x1, gate=gate, up=up, q_raw=q_raw, rstd_q=rstd_q,
                      k_raw=k_raw, rstd_k=rstd_k, o=o_raw, rstd_o=rstd_o, f=f_raw, rstd_f=rstd_f, z=z, w_an=w_an,
                      w_fn=w_fn, tokens=tokens, first_key=first_key)
        for kept in COMPACT:
            setattr(saved, kept, self._compact(getattr(saved, kept)))
        return x2, saved

    # ---------------------------------------------------------------- backward
    def backward(self, li: int, s: Saved, dx2: np.ndarray, grads) -> np.ndarray:
        """dx2 = dL/d(layer output) [T, C] -> dL/d(layer input) [T, C]; LoRA gradients add into grads.
        Reads the Saved record as the forward left it (the kernels read the compact arrays'
        bfloat16 bits themselves; only v is widened) and recomputes h, h2 and act with the
        forward's kernels (act in the gate's backward pass)."""
        arch, hp, fam, lin, kn = self.arch, self.arch.hp, self.arch.family, self.lin, self.k
        layer = self.weights.layers[li]
        tokens = s.tokens
        B, S, T = tokens.B, tokens.S, tokens.T
        Hq, Hkv, D = hp.n_head, hp.n_head_kv, hp.head_dim
        name = lambda kind: tensor_name(kind, li)  # noqa: E731
        # feed-forward: x2 = x1 + post_norm(down(act(gate(h2), up(h2)))), h2 = norm(x1)
        df = dx2
        if fam.post_norms:
            df = self._norm_backward(dx2, s.f, layer.norms["post_ffw_norm"], s.rstd_f)
        # ffn_down's dA needs act, which the gate's backward recomputes in its own pass: it waits
        dact = empty(T, hp.n_ff)
        add_down_input_gradients = lin.backward(None, [(layer.matrices["ffn_down"], name("ffn_down"))], [df],
                                                [s.z[name("ffn_down")]], grads, dact)
        act, dgate, dup = empty(T, hp.n_ff), empty(T, hp.n_ff), empty(T, hp.n_ff)
        (kn.geglu_backward if fam.activation == "geglu" else kn.swiglu_backward)(dact, s.gate, s.up, dgate, dup, act)
        del dact
        add_down_input_gradients(act)
        del act
        h2, rstd2 = self._rms_norm(s.x1, s.w_fn)
        dh2 = empty(T, hp.n_embd)
        lin.backward(h2, [(layer.matrices[kd], name(kd)) for kd in ("ffn_gate", "ffn_up")], [dgate, dup],
                     [s.z[name("ffn_gate")], s.z[name("ffn_up")]], grads, dh2)
        del dgate, dup, h2
        dx1 = self._norm_backward(dh2, s.x1, s.w_fn, rstd2, name("ffn_norm"), grads, residual=dx2)
        del dh2
        # attention: x1 = x + post_norm(wo(attention(rope(norm(wq h)), rope(norm(wk h)), wv h)))
        do = dx1
        if fam.post_norms:
            do = self._norm_backward(dx1, s.o, layer.norms["post_attention_norm"], s.rstd_o)
        datt = empty(T, Hq * D)
        lin.backward(s.att, [(layer.matrices["attn_output"], name("attn_output"))], [do],
                     [s.z[name("attn_output")]], grads, datt)
        dq, dk, dv = empty(T, Hq * D), empty(T, Hkv * D), empty(T, Hkv * D)
        kn.attention_backward(datt.reshape(B, S, Hq, D), s.q.reshape(B, S, Hq, D), s.k.reshape(B, S, Hkv, D),
                              widen(kn, s.v).reshape(B, S, Hkv, D), s.att.reshape(B, S, Hq, D), s.lse,
                              arch.attention_scale, dq.reshape(B, S, Hq, D), dk.reshape(B, S, Hkv, D),
                              dv.reshape(B, S, Hkv, D), first_key=s.first_key, tiles=self.attention_tiles)
        del datt
        rope, pos = arch.rope(li), tokens.positions.reshape(T)
        rope.apply(kn, dq.reshape(T, Hq, D), pos, backward=True)
        rope.apply(kn, dk.reshape(T, Hkv, D), pos, backward=True)
        if fam.qk_norm:
            dq = self._norm_backward(dq.reshape(T * Hq, D), s.q_raw.reshape(T * Hq, D),
                                     layer.norms["attn_q_norm"], s.rstd_q).reshape(T, Hq * D)
            dk = self._norm_backward(dk.reshape(T * Hkv, D), s.k_raw.reshape(T * Hkv, D),
                                     layer.norms["attn_k_norm"], s.rstd_k).reshape(T, Hkv * D)
        # q/k/v biases are frozen: their gradient is not needed, and dy passes through unchanged
        h, rstd1 = self._rms_norm(s.x, s.w_an)
        dh = empty(T, hp.n_embd)
        lin.backward(h, [(layer.matrices[kd], name(kd)) for kd in ("attn_q", "attn_k", "attn_v")],
                     [dq, dk, dv], [s.z[name(kd)] for kd in ("attn_q", "attn_k", "attn_v")], grads, dh)
        del dq, dk, dv, h
        return self._norm_backward(dh, s.x, s.w_an, rstd1, name("attn_norm"), grads, residual=dx1)

    # ---------------------------------------------------------------- pieces
    def _rms_norm(self, x: np.ndarray, weight: np.ndarray):
        """x [N, n] -> (rms_norm(x)·weight [N, n], rstd [N])."""
        out, rstd = empty(*x.shape), empty(x.shape[0])
        self.k.rms_norm_forward(x, weight, self.arch.hp.rms_eps, out, rstd)
        return out, rstd

    def _gate_forward(self, gate: np.ndarray, up: np.ndarray, keep: bool = False):
        """(act(gate)·up [T, F], gate, up as the layer keeps them): SwiGLU or GELU-tanh (the latter
        through ggml's table when asked, at inference). With keep and compact kept arrays, the
        bfloat16 copies of gate and up come from the same pass as act."""
        act = empty(*gate.shape)
        if self.arch.family.activation == "geglu" and self.ggml_gelu:
            self.k.geglu_ggml_forward(gate, up, act)
            return act, gate, up
        forward = self.k.geglu_forward if self.arch.family.activation == "geglu" else self.k.swiglu_forward
        gate_kept, up_kept = self._compact_copy(keep, gate.shape), self._compact_copy(keep, up.shape)
        forward(gate, up, act, gate_kept, up_kept)
        return act, gate if gate_kept is None else gate_kept, up if up_kept is None else up_kept

    def _compact(self, a: Optional[np.ndarray]) -> Optional[np.ndarray]:
        """A COMPACT array as the layer keeps it: its bfloat16 bits, or itself when kept as float32
        (or already compact)."""
        if a is None or a.dtype == self.kept_dtype:
            return a
        out = np.empty(a.shape, BF16)
        self.k.to_bf16(a.reshape(-1), out.reshape(-1))
        return out

    def _compact_copy(self, keep: bool, shape) -> Optional[np.ndarray]:
        """An empty bfloat16 array for a producer kernel to write a COMPACT array's kept copy into
        as it writes the float32 one; None when nothing is kept compact."""
        return np.empty(shape, BF16) if keep and self.kept_dtype != np.float32 else None

    def _norm_backward(self, dout, x, weight, rstd, name: Optional[str] = None, grads=None,
                       residual: Optional[np.ndarray] = None) -> np.ndarray:
        """dL/dx of out = rms_norm(x)·weight (x float32 or bfloat16 bits), plus the residual
        branch's gradient when given (added by the kernel's pass); the weight's gradient goes to its
        adapter, if it has one."""
        dx = empty(*x.shape)
        if name is not None and self.lin.has_adapter(name):
            dweight = np.zeros(x.shape[1], np.float32)
            self.k.rms_norm_backward(dout, x, weight, rstd, dx, dweight, residual)
            self.lin.norm_weight_backward(dweight, name, grads)
        else:
            self.k.rms_norm_backward(dout, x, weight, rstd, dx, residual=residual)
        return dx

