"""The LoRA training graph: forward and backward of a LLaMA model, gradients into LoRA only.

Shape legend: B batch rows, S sequence (ctx), T = B*S tokens, C n_embd, F n_ff,
Hq / Hkv query / key-value heads, D head dim, V vocab, r LoRA rank.

Every adapted matrix computes  Y = X·Wᵀ + s·(X·Aᵀ)·Bᵀ  with s = alpha/r: the frozen W stays in
its GGUF type and the dense W + s·B·A is never built. Gradients flow to A and B only.

Memory: with gradient checkpointing only each layer's input x [T, C] is kept through the
forward; the backward recomputes one layer at a time (but for the last keep_layers layers, which
keep their intermediates: a trade of memory for speed). The loss head runs over row chunks so
the [T, V] logits never sit in memory at once; forward and backward of the head are fused
(the chunk's logits become its gradient in place).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import _core
from .lora import LoraSet, flat_arrays, tensor_name


def _empty(*shape: int) -> np.ndarray:
    return np.empty(shape, np.float32)


def _bounds(first_key: np.ndarray | None) -> dict:
    """Attention's keyword for packed rows (the kernels' default, None, is plain causal)."""
    return {} if first_key is None else {"first_key": first_key}


def _stacked(factors: list[np.ndarray]) -> np.ndarray:
    return factors[0] if len(factors) == 1 else np.concatenate(factors)


@dataclass
class GradPair:
    a: np.ndarray  # dL/dA [r, n_in]
    b: np.ndarray  # dL/dB [n_out, r]


@dataclass
class Grads:
    """Gradient accumulators with the shapes of the LoRA pairs (zeroed with reset())."""

    pairs: dict[str, GradPair]

    @classmethod
    def like(cls, lora: LoraSet) -> "Grads":
        return cls({n: GradPair(np.zeros_like(p.a), np.zeros_like(p.b)) for n, p in lora.pairs.items()})

    def reset(self) -> None:
        for g in self.pairs.values():
            g.a.fill(0.0)
            g.b.fill(0.0)

    def arrays(self) -> dict[str, np.ndarray]:
        """Named like LoraSet.parameters(), in the same order."""
        return flat_arrays(self.pairs)


class Graph:
    """Forward / backward over one batch for a loaded model and a LoRA set."""

    def __init__(self, weights, lora: LoraSet, *, precision: str = "auto", head_chunk: int = 256,
                 kernels=_core):
        self.k = kernels  # ggtune._core, or profile.Profiler.wrap(ggtune._core) to time every call
        self.model = weights  # gguf_io.ModelWeights
        self.matrices = weights.weights_by_name()
        self.hp = weights.hparams
        self.lora = lora
        self.precision = precision
        self.head_chunk = head_chunk
        hp = self.hp
        self.head_dim = hp.n_embd // hp.n_head
        self.kv_dim = self.head_dim * hp.n_head_kv
        self.attn_scale = 1.0 / float(np.sqrt(self.head_dim))
        self.dropout = None  # dropout.DropoutPass while training with --lora-dropout; None evaluates

    # ----------------------------------------------------------------- linear with LoRA
    def linears_forward(self, x, items, outs=None):
        """Matrices [(weight, name), ...] reading the same x [T, n_in] (q/k/v; gate/up) ->
        [(y [T, n_out], z [T, r] or None)]; z = x·Aᵀ is kept for the backward. The adapters'
        down-projections run as one pass over x, their A factors stacked."""
        T = x.shape[0]
        ys = [out if out is not None else _empty(T, weight.n_out)
              for (weight, _), out in zip(items, outs or [None] * len(items))]
        for (weight, _), y in zip(items, ys):
            self.k.matmul(x, weight.data, weight.ggml_type, y, precision=self.precision)
        zs = [None] * len(items)
        adapted = self._adapted(items)
        if adapted and self.dropout is not None:
            for (i, pair, _) in adapted:  # each adapter its own mask, so no shared projection
                x_kept = x * self.dropout.mask(items[i][1], x.shape)
                zs[i] = _empty(T, pair.a.shape[0])
                self.k.lora_project(x_kept, pair.a, zs[i])
                self.k.lora_expand(zs[i], np.ascontiguousarray(pair.b.T), ys[i], self.lora.scale(items[i][1]))
        elif adapted:
            z_all = _empty(T, sum(pair.a.shape[0] for _, pair, _ in adapted))
            self.k.lora_project(x, _stacked([pair.a for _, pair, _ in adapted]), z_all)
            for (i, pair, cols) in adapted:
                zs[i] = np.ascontiguousarray(z_all[:, cols])
                self.k.lora_expand(zs[i], np.ascontiguousarray(pair.b.T), ys[i], self.lora.scale(items[i][1]))
        return list(zip(ys, zs))

    def linears_backward(self, x, items, dys, zs, grads: Grads, dx, accumulate: bool):
        """dx (= or +=) Σ dy·W + s·(dy·B)·A over matrices [(weight, name), ...] that read the same x;
        dA += s·(dy·B)ᵀ·x and dB += s·dyᵀ·z for each adapter. One pass over x serves every
        dA and one pass over dx every (dy·B)·A, the adapters stacked."""
        for i, ((weight, _), dy) in enumerate(zip(items, dys)):
            self.k.matmul_backward(dy, weight.data, weight.ggml_type, dx, accumulate=accumulate or i > 0,
                                  precision=self.precision)
        adapted = self._adapted(items)
        if not adapted:
            return
        if self.dropout is not None:
            return self._dropout_lora_backward(x, items, dys, zs, adapted, grads, dx)
        T = x.shape[0]
        dz_all = _empty(T, sum(pair.a.shape[0] for _, pair, _ in adapted))
        for (i, pair, cols) in adapted:
            name, dy, r = items[i][1], dys[i], pair.a.shape[0]
            s, g = self.lora.scale(name), grads.pairs[name]
            dz = _empty(T, r)
            self.k.lora_project(dy, np.ascontiguousarray(pair.b.T), dz)
            dz_all[:, cols] = dz * s                                   # dz = s·dy·B   [T, r]
            db_t = np.zeros((r, dy.shape[1]), np.float32)
            self.k.lora_outer(zs[i], dy, db_t, s)
            g.b += db_t.T                                              # dB += s·dyᵀ·z [n_out, r]
        da_all = np.zeros((dz_all.shape[1], x.shape[1]), np.float32)
        self.k.lora_outer(dz_all, x, da_all)                           # dA += dzᵀ·x   [r, n_in]
        for (i, pair, cols) in adapted:
            grads.pairs[items[i][1]].a += da_all[cols]
        self.k.lora_expand(dz_all, _stacked([pair.a for _, pair, _ in adapted]), dx)  # dx += dz·A

    def _dropout_lora_backward(self, x, items, dys, zs, adapted, grads: Grads, dx) -> None:
        """The adapters' part of linears_backward with input dropout M: with x_kept = M ⊙ x,
        dA += dzᵀ·x_kept and dx += M ⊙ (dz·A), dz = s·dy·B; the masks are drawn again, identical."""
        T = x.shape[0]
        for (i, pair, _) in adapted:
            name, dy, r = items[i][1], dys[i], pair.a.shape[0]
            s, g = self.lora.scale(name), grads.pairs[name]
            mask = self.dropout.mask(name, x.shape)
            dz = _empty(T, r)
            self.k.lora_project(dy, np.ascontiguousarray(pair.b.T), dz)
            dz *= s                                                    # dz = s·dy·B   [T, r]
            db_t = np.zeros((r, dy.shape[1]), np.float32)
            self.k.lora_outer(zs[i], dy, db_t, s)
            g.b += db_t.T                                              # dB += s·dyᵀ·z [n_out, r]
            da = np.zeros_like(pair.a)
            self.k.lora_outer(dz, np.ascontiguousarray(x * mask), da)
            g.a += da                                                  # dA += dzᵀ·x_kept
            dx_lora = np.zeros_like(dx)
            self.k.lora_expand(dz, pair.a, dx_lora)
            dx += dx_lora * mask                                       # dx += M ⊙ (dz·A)

    def _adapted(self, items):
        """[(index, pair, columns of the stacked z)] of the items that have an adapter."""
        out, offset = [], 0
        for i, (_, name) in enumerate(items):
            pair = self.lora.get(name)
            if pair is not None:
                r = pair.a.shape[0]
                out.append((i, pair, slice(offset, offset + r)))
                offset += r
        return out

    def linear_forward(self, x, weight, name, out=None):
        """x [T, n_in] -> (y [T, n_out], z [T, r] or None)."""
        return self.linears_forward(x, [(weight, name)], [out])[0]

    def linear_backward(self, dy, x, z, weight, name, grads: Grads, dx, accumulate: bool):
        self.linears_backward(x, [(weight, name)], [dy], [z], grads, dx, accumulate)

    # ----------------------------------------------------------------- norms with LoRA
    def norm_weight(self, weight: np.ndarray, name: str) -> np.ndarray:
        """w + s·(B·A)[0]: a norm adapter adapts the (C,) weight viewed as a (1, C) matrix."""
        pair = self.lora.get(name)
        if pair is None:
            return weight
        return (weight + self.lora.scale(name) * (pair.b @ pair.a)[0]).astype(np.float32)

    def norm_weight_backward(self, dweight: np.ndarray, name: str, grads: Grads) -> None:
        pair = self.lora.get(name)
        if pair is None:
            return
        s = self.lora.scale(name)
        g = grads.pairs[name]
        g.a += s * np.outer(pair.b[0], dweight)
        g.b += s * (pair.a @ dweight)[None, :]

    def rms_norm(self, x, weight):
        out, rstd = _empty(*x.shape), _empty(x.shape[0])
        self.k.rms_norm_forward(x, weight, self.hp.rms_eps, out, rstd)
        return out, rstd

    # ----------------------------------------------------------------- one transformer layer
    def layer_forward(self, li: int, x: np.ndarray, batch: int, keep: bool, layout=None):
        """x [T, C] -> x_out [T, C]; with keep=True also returns what the backward needs.
        layout: (positions int32 [T], first_key int32 [B, S]) of packed rows, or None."""
        hp, layer = self.hp, self.model.layers[li]
        T, S = x.shape[0], x.shape[0] // batch
        Hq, Hkv, D = hp.n_head, hp.n_head_kv, self.head_dim
        names = {k: tensor_name(k, li) for k in ("attn_norm", "attn_q", "attn_k", "attn_v",
                                                 "attn_output", "ffn_norm", "ffn_gate", "ffn_down", "ffn_up")}
        w = {kind: self.matrices[name] for kind, name in names.items() if name in self.matrices}
        w_an = self.norm_weight(layer.attn_norm, names["attn_norm"])
        h, rstd1 = self.rms_norm(x, w_an)
        (q, zq), (k, zk), (v, zv) = self.linears_forward(h, self._items(w, names, "attn_q", "attn_k", "attn_v"))
        pos, first_key = layout if layout is not None else (self._positions(batch, S), None)
        self._rope(q.reshape(T, Hq, D), pos, forward=True)
        self._rope(k.reshape(T, Hkv, D), pos, forward=True)
        att, lse = _empty(T, Hq * D), _empty(batch, Hq, S)
        self.k.attention_forward(q.reshape(batch, S, Hq, D), k.reshape(batch, S, Hkv, D),
                                v.reshape(batch, S, Hkv, D), self.attn_scale,
                                att.reshape(batch, S, Hq, D), lse, **_bounds(first_key))
        o, zo = self.linear_forward(att, w["attn_output"], names["attn_output"])
        x1 = _empty(T, hp.n_embd)
        self.k.add(x, o, x1)
        w_fn = self.norm_weight(layer.ffn_norm, names["ffn_norm"])
        h2, rstd2 = self.rms_norm(x1, w_fn)
        (gate, zg), (up, zu) = self.linears_forward(h2, self._items(w, names, "ffn_gate", "ffn_up"))
        act = _empty(T, gate.shape[1])
        self.k.swiglu_forward(gate, up, act)
        x2, zd = self.linear_forward(act, w["ffn_down"], names["ffn_down"])
        self.k.add(x1, x2, x2)
        if not keep:
            return x2, None
        saved = dict(names=names, w=w, x=x, h=h, rstd1=rstd1, w_an=w_an, q=q, k=k, v=v, att=att, lse=lse,
                     x1=x1, h2=h2, rstd2=rstd2, w_fn=w_fn, gate=gate, up=up, act=act, pos=pos,
                     zq=zq, zk=zk, zv=zv, zo=zo, zg=zg, zu=zu, zd=zd, batch=batch, first_key=first_key)
        return x2, saved

    def layer_backward(self, li: int, s: dict, dx2: np.ndarray, grads: Grads) -> np.ndarray:
        """dx2 = dL/d(layer output) [T, C] -> dL/d(layer input) [T, C]."""
        hp, n, w = self.hp, s["names"], s["w"]
        T, batch = dx2.shape[0], s["batch"]
        S, Hq, Hkv, D = T // batch, hp.n_head, hp.n_head_kv, self.head_dim
        # feed-forward block: x2 = x1 + down(swiglu(gate(h2), up(h2)))
        dact = _empty(T, s["act"].shape[1])
        self.linear_backward(dx2, s["act"], s["zd"], w["ffn_down"], n["ffn_down"], grads, dact, False)
        dgate, dup = _empty(*dact.shape), _empty(*dact.shape)
        self.k.swiglu_backward(dact, s["gate"], s["up"], dgate, dup)
        dh2 = _empty(T, hp.n_embd)
        self.linears_backward(s["h2"], self._items(w, n, "ffn_gate", "ffn_up"), [dgate, dup],
                              [s["zg"], s["zu"]], grads, dh2, False)
        dx1 = self._norm_backward(dh2, s["x1"], s["w_fn"], s["rstd2"], n["ffn_norm"], grads)
        self.k.add(dx1, dx2, dx1)
        # attention block: x1 = x + wo(attention(rope(wq h), rope(wk h), wv h)), h = norm(x)
        datt = _empty(T, Hq * D)
        self.linear_backward(dx1, s["att"], s["zo"], w["attn_output"], n["attn_output"], grads, datt, False)
        dq, dk, dv = _empty(T, Hq * D), _empty(T, Hkv * D), _empty(T, Hkv * D)
        self.k.attention_backward(datt.reshape(batch, S, Hq, D), s["q"].reshape(batch, S, Hq, D),
                                 s["k"].reshape(batch, S, Hkv, D), s["v"].reshape(batch, S, Hkv, D),
                                 s["att"].reshape(batch, S, Hq, D), s["lse"], self.attn_scale,
                                 dq.reshape(batch, S, Hq, D), dk.reshape(batch, S, Hkv, D),
                                 dv.reshape(batch, S, Hkv, D), **_bounds(s["first_key"]))
        self._rope(dq.reshape(T, Hq, D), s["pos"], forward=False)
        self._rope(dk.reshape(T, Hkv, D), s["pos"], forward=False)
        dh = _empty(T, hp.n_embd)
        self.linears_backward(s["h"], self._items(w, n, "attn_q", "attn_k", "attn_v"), [dq, dk, dv],
                              [s["zq"], s["zk"], s["zv"]], grads, dh, False)
        dx = self._norm_backward(dh, s["x"], s["w_an"], s["rstd1"], n["attn_norm"], grads)
        self.k.add(dx, dx1, dx)
        return dx

    @staticmethod
    def _items(w, names, *kinds):
        return [(w[kind], names[kind]) for kind in kinds]

    def _norm_backward(self, dout, x, weight, rstd, name, grads: Grads) -> np.ndarray:
        dx = _empty(*x.shape)
        if name in self.lora.pairs:
            dweight = np.zeros(x.shape[1], np.float32)
            self.k.rms_norm_backward(dout, x, weight, rstd, dx, dweight)
            self.norm_weight_backward(dweight, name, grads)
        else:
            self.k.rms_norm_backward(dout, x, weight, rstd, dx)
        return dx

    def _positions(self, batch: int, S: int) -> np.ndarray:
        return np.ascontiguousarray(np.tile(np.arange(S, dtype=np.int32), batch))

    def _rope(self, x: np.ndarray, pos: np.ndarray, forward: bool) -> None:
        hp = self.hp
        fn = self.k.rope_forward if forward else self.k.rope_backward
        fn(x, pos, hp.n_rot, hp.rope_freq_base, hp.rope_freq_scale, 0, x)

    # ----------------------------------------------------------------- embeddings and head
    def embed_forward(self, ids: np.ndarray) -> np.ndarray:
        """ids int32 [T] -> x0 [T, C] = E[ids] + s·B[ids]·A (token_embd adapter)."""
        emb = self.model.token_embd
        x = _empty(ids.shape[0], self.hp.n_embd)
        self.k.get_rows(emb.data, emb.ggml_type, ids, x)
        pair = self.lora.get("token_embd.weight")
        if pair is not None:
            x += self.lora.scale("token_embd.weight") * (pair.b[ids] @ pair.a)
        return x

    def embed_backward(self, ids: np.ndarray, dx: np.ndarray, grads: Grads) -> None:
        pair = self.lora.get("token_embd.weight")
        if pair is None:
            return
        s, g = self.lora.scale("token_embd.weight"), grads.pairs["token_embd.weight"]
        g.a += s * (pair.b[ids].T @ dx)
        self.k.embedding_backward(np.ascontiguousarray(s * (dx @ pair.a.T), np.float32), ids, g.b)

    def head_name(self) -> str:
        return "token_embd.weight" if self.model.tied_embeddings else "output.weight"

    def head(self, x: np.ndarray, targets: np.ndarray, grads: Grads | None, loss_scale: float):
        """Final norm, output matmul and cross-entropy over row chunks.

        Returns (sum of token losses, dL/dx [T, C] or None). With grads, each chunk's logits
        are turned into their gradient in place (scaled by loss_scale) right after the loss.
        """
        hp, model = self.hp, self.model
        w_on = self.norm_weight(model.output_norm, "output_norm.weight")
        h, rstd = self.rms_norm(x, w_on)
        name, weight = self.head_name(), model.output
        T = x.shape[0]
        dh = _empty(T, hp.n_embd) if grads is not None else None
        loss_sum = 0.0
        # One [chunk, V] buffer for every chunk (a fresh 50 MB array per chunk would be mapped
        # and page-faulted anew: 6-100 ms each, measured); freed with the head, as memory.py plans.
        logits_buffer = _empty(min(T, self.head_chunk), weight.n_out)
        for r0 in range(0, T, self.head_chunk):
            r1 = min(T, r0 + self.head_chunk)
            hc, tc = h[r0:r1], targets[r0:r1]
            logits, z = self.linear_forward(hc, weight, name, out=logits_buffer[: r1 - r0])
            loss = _empty(r1 - r0)
            self.k.cross_entropy_forward(logits, tc, loss)
            loss_sum += float(loss.sum(dtype=np.float64))
            if grads is not None:
                self.k.cross_entropy_backward(logits, tc, loss_scale, logits)
                self.linear_backward(logits, hc, z, weight, name, grads, dh[r0:r1], False)
        if grads is None:
            return loss_sum, None
        return loss_sum, self._norm_backward(dh, x, w_on, rstd, "output_norm.weight", grads)

    # ----------------------------------------------------------------- whole model
    def loss_and_grads(self, inputs: np.ndarray, targets: np.ndarray, grads: Grads | None,
                       *, checkpointing: bool = True, keep_layers: int = 0,
                       loss_scale: float | None = None, positions: np.ndarray | None = None,
                       first_key: np.ndarray | None = None):
        """inputs, targets int32 [B, S] (target < 0: masked). Returns (loss_sum, n_kept).

        Packed rows (packing.py) pass positions int32 [B, S] (rope position of each token) and
        first_key int32 [B, S] (query (b, i) attends keys first_key[b, i] <= j <= i only).

        With grads, adds d(loss_scale · loss_sum)/dθ into them; loss_scale defaults to 1/n_kept
        (the mean over unmasked positions). With checkpointing, the last keep_layers layers keep
        their intermediates from the forward (the first ones the backward needs) and only the
        others are recomputed."""
        batch = inputs.shape[0]
        ids = np.ascontiguousarray(inputs.reshape(-1), np.int32)
        tgt = np.ascontiguousarray(targets.reshape(-1), np.int32)
        n_kept = int((tgt >= 0).sum())
        if loss_scale is None:
            loss_scale = 1.0 / max(n_kept, 1)
        first_kept = self.hp.n_layer - (self.hp.n_layer if not checkpointing else keep_layers)
        layout = None
        if positions is not None or first_key is not None:
            layout = (np.ascontiguousarray(positions if positions is not None else
                                           self._positions(batch, inputs.shape[1]), np.int32).reshape(-1),
                      None if first_key is None else np.ascontiguousarray(first_key, np.int32))
        x = self.embed_forward(ids)
        layer_inputs, saved = [], []
        for li in range(self.hp.n_layer):
            layer_inputs.append(x)
            x, s = self.layer_forward(li, x, batch, keep=grads is not None and li >= first_kept, layout=layout)
            saved.append(s)
        loss_sum, dx = self.head(x, tgt, grads, loss_scale)
        if grads is None:
            return loss_sum, n_kept
        for li in reversed(range(self.hp.n_layer)):
            s = saved[li]
            if s is None:  # checkpointing: recompute this layer, keeping its intermediates
                _, s = self.layer_forward(li, layer_inputs[li], batch, keep=True, layout=layout)
            dx = self.layer_backward(li, s, dx, grads)
            saved[li] = layer_inputs[li] = None
        self.embed_backward(ids, dx, grads)
        return loss_sum, n_kept
