"""The LoRA training graph: forward and backward of a model, gradients into LoRA only.

Shape legend: B batch rows, S sequence (ctx), T = B*S tokens, C n_embd, F n_ff,
Hq / Hkv query / key-value heads, D head dim, V vocab, r LoRA rank.

Every adapted matrix computes  Y = X·Wᵀ + s·(X·Aᵀ)·Bᵀ  with s = alpha/r (alpha/sqrt(r) with
rslora): the frozen W stays in its GGUF type and the dense W + s·B·A is never built. Gradients flow
to A and B only. With LoRA dropout (dropout.py) the adapters read M ⊙ X instead of X in training.

The layers are block.Block (the same forward inference runs); this module adds the LoRA
products with their gradients (LoraLinears), the embedding, the loss head and the loop over
layers with gradient checkpointing.

Memory: with gradient checkpointing only each layer's input x [T, C] is kept through the
forward; the backward recomputes one layer at a time (but for the last keep_layers layers, which
keep their compact intermediates, block.Saved: a trade of memory for speed, chosen by memory.py).
A kept layer and a recomputed one give the backward the same values (the recompute rounds its
compact arrays the same way), so keep_layers changes speed and memory, never the gradients. The loss head runs over row chunks so
the [T, V] logits never sit in memory at once; forward and backward of the head are fused
(the chunk's logits become its gradient in place).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import _core
from .block import Block, Tokens, attention_tiles, empty as _empty, kept_dtype, widen
from .lora import LoraSet, flat_arrays


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


class LoraLinears:
    """Matrix products with LoRA for the block: y = x·Wᵀ + s·(x·Aᵀ)·Bᵀ, and their backward."""

    def __init__(self, lora: LoraSet, kernels, precision: str):
        self.lora, self.k, self.precision = lora, kernels, precision
        self.dropout = None  # dropout.DropoutPass while training with --lora-dropout; None evaluates

    # ----------------------------------------------------------------- linear with LoRA
    def forward(self, x, items, outs=None):
        """Matrices [(weight, name), ...] reading the same x [T, n_in] (q/k/v; gate/up) ->
        [(y [T, n_out], z [T, r] or None)]; z = x·Aᵀ is kept for the backward. The adapters'
        down-projections run as one pass over x, their A factors stacked; each up-projection
        s·z·Bᵀ is added by the matmul to each output tile it computes (lora=, no pass of its own)."""
        T = x.shape[0]
        ys = [out if out is not None else _empty(T, weight.n_out)
              for (weight, _), out in zip(items, outs or [None] * len(items))]
        zs = [None] * len(items)
        adapted = self._adapted(items)
        if adapted and self.dropout is not None:
            for (i, pair, _) in adapted:  # each adapter its own mask, so no shared projection
                x_kept = x * self.dropout.mask(items[i][1], x.shape)
                zs[i] = _empty(T, pair.a.shape[0])
                self.k.lora_project(x_kept, pair.a, zs[i])
        elif adapted:
            z_all = _empty(T, sum(pair.a.shape[0] for _, pair, _ in adapted))
            self.k.lora_project(x, _stacked([pair.a for _, pair, _ in adapted]), z_all)
            for (i, pair, cols) in adapted:
                zs[i] = np.ascontiguousarray(z_all[:, cols])
        up = {i: (zs[i], self._scaled_b_t(pair, items[i][1]), 1.0) for i, pair, _ in adapted}
        for i, ((weight, _), y) in enumerate(zip(items, ys)):
            self.k.matmul(x, weight.data, weight.ggml_type, y, precision=self.precision, lora=up.get(i))
        return list(zip(ys, zs))

    def backward(self, x, items, dys, zs, grads: Grads, dx, accumulate: bool = False):
        """dx (= or +=) Σ dy·W + s·(dy·B)·A over matrices [(weight, name), ...] that read the same x;
        dB += s·dyᵀ·z and dA += s·(dy·B)ᵀ·x for each adapter. One call per dy gives its dz =
        s·dy·B and dB (lora_factor_backward), one pass over x serves every dA, and the stacked
        (dy·B)·A of all adapters is added by the last dy·W product to each tile of dx it computes.
        With x None the dA terms wait for x: the returned function adds them, given x (ffn_down's
        input act is recomputed by the gate's backward, which needs this dx first)."""
        adapted = self._adapted(items)
        dz_all = self._output_factor_gradients(items, dys, zs, adapted, grads) if adapted else None
        fused = dz_all is not None and self.dropout is None
        dx_lora = (dz_all, _stacked([pair.a for _, pair, _ in adapted]), 1.0) if fused else None  # dx += dz·A
        for i, ((weight, _), dy) in enumerate(zip(items, dys)):
            self.k.matmul_backward(dy, weight.data, weight.ggml_type, dx, accumulate=accumulate or i > 0,
                                  precision=self.precision, lora=dx_lora if i == len(items) - 1 else None)
        if dz_all is not None and self.dropout is not None:
            self._dropout_input_term(items, adapted, dz_all, dx)

        def add_input_gradients(x_in) -> None:
            if dz_all is not None:
                self._input_factor_gradients(x_in, items, adapted, dz_all, grads)

        if x is None:
            return add_input_gradients
        add_input_gradients(x)
        return None

    def _output_factor_gradients(self, items, dys, zs, adapted, grads: Grads) -> np.ndarray:
        """dB += s·dyᵀ·z for each adapter; returns the stacked dz = s·dy·B [T, Σr]."""
        dz_all = _empty(dys[0].shape[0], sum(pair.a.shape[0] for _, pair, _ in adapted))
        for (i, pair, cols) in adapted:
            name = items[i][1]
            self.k.lora_factor_backward(dys[i], zs[i], np.ascontiguousarray(pair.b.T), self.lora.scale(name),
                                        dz_all, cols.start, grads.pairs[name].b)
        return dz_all

    def _input_factor_gradients(self, x, items, adapted, dz_all, grads: Grads) -> None:
        """dA += dzᵀ·x for each adapter (x_kept = M ⊙ x with input dropout M, the mask drawn again,
        identical); x may be bfloat16 bits (a compact kept array)."""
        if self.dropout is None:
            da_all = np.zeros((dz_all.shape[1], x.shape[1]), np.float32)
            self.k.lora_outer(dz_all, x, da_all)                       # dA += dzᵀ·x   [r, n_in]
            for (i, pair, cols) in adapted:
                grads.pairs[items[i][1]].a += da_all[cols]
            return
        x = widen(self.k, x)
        for (i, pair, cols) in adapted:
            name = items[i][1]
            x_kept = np.ascontiguousarray(x * self.dropout.mask(name, x.shape))
            da = np.zeros_like(pair.a)
            self.k.lora_outer(np.ascontiguousarray(dz_all[:, cols]), x_kept, da)
            grads.pairs[name].a += da                                  # dA += dzᵀ·x_kept

    def _dropout_input_term(self, items, adapted, dz_all, dx) -> None:
        """dx += M ⊙ (dz·A) for each adapter, M its input dropout mask (drawn again, identical)."""
        for (i, pair, cols) in adapted:
            dx_lora = np.zeros_like(dx)
            self.k.lora_expand(np.ascontiguousarray(dz_all[:, cols]), pair.a, dx_lora)
            dx += dx_lora * self.dropout.mask(items[i][1], dx.shape)

    def _scaled_b_t(self, pair, name: str) -> np.ndarray:
        """s·Bᵀ [r, n_out], contiguous: the matmul's up-projection with s folded in (a scale of 1
        lets its kernel broadcast z straight from memory)."""
        s = self.lora.scale(name)
        # a new array whenever s != 1: at rank 1, B.T is contiguous already and is B's own memory
        return np.ascontiguousarray(pair.b.T * np.float32(s) if s != 1.0 else pair.b.T)

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

    def has_adapter(self, name: str) -> bool:
        return name in self.lora.pairs


class Graph:
    """Forward / backward over one batch for a loaded model and a LoRA set."""

    def __init__(self, weights, lora: LoraSet, *, precision: str = "auto", head_chunk: int = 256,
                 kernels=_core, kept=None):
        self.k = kernels  # ggtune._core, or profile.Profiler.wrap(ggtune._core) to time every call
        self.model = weights  # gguf_io.ModelWeights
        self.hp = weights.hparams
        self.lora = lora
        self.precision = precision
        self.head_chunk = head_chunk
        self._logits = None  # the head's [chunk, V] buffer, kept from step to step (logits_buffer)
        self.linears = LoraLinears(lora, kernels, precision)
        # dtype of the compact kept activations (block.COMPACT); None: the precision's (kept_dtype)
        self.block = Block(weights, self.linears, kernels, attention_tiles=attention_tiles(precision, weights),
                           kept=kept_dtype(precision) if kept is None else kept)

    # ----------------------------------------------------------------- embeddings and head
    @property
    def dropout(self):
        """The LoRA dropout masks of the current training pass (None: evaluation, no dropout)."""
        return self.linears.dropout

    @dropout.setter
    def dropout(self, masks) -> None:
        self.linears.dropout = masks

    def embed_forward(self, ids: np.ndarray) -> np.ndarray:
        """ids int32 [T] -> x0 [T, C] = e·(E[ids] + s·B[ids]·A), e the family's embedding scale."""
        emb = self.model.token_embd
        x = _empty(ids.shape[0], self.hp.n_embd)
        self.k.get_rows(emb.data, emb.ggml_type, ids, x)
        pair = self.lora.get("token_embd.weight")
        if pair is not None:
            x += self.lora.scale("token_embd.weight") * (pair.b[ids] @ pair.a)
        scale = self.model.arch.embedding_scale
        if scale != 1.0:
            x *= np.float32(scale)
        return x

    def embed_backward(self, ids: np.ndarray, dx: np.ndarray, grads: Grads) -> None:
        pair = self.lora.get("token_embd.weight")
        if pair is None:
            return
        s, g = self.lora.scale("token_embd.weight"), grads.pairs["token_embd.weight"]
        s *= self.model.arch.embedding_scale
        g.a += s * (pair.b[ids].T @ dx)
        self.k.embedding_backward(np.ascontiguousarray(s * (dx @ pair.a.T), np.float32), ids, g.b)

    def head_name(self) -> str:
        return "token_embd.weight" if self.model.tied_embeddings else "output.weight"

    def logits_buffer(self, rows: int, vocab: int) -> np.ndarray:
        """The head's [rows, V] logits buffer, one for every chunk of every step: at 50 MB (SmolLM2's
        chunk) it is beyond malloc's heap blocks (32 MiB at most), so a fresh one per chunk was mapped
        and page-faulted anew (6-100 ms each, measured), and one per step still cost its page
        zeroing, ~1.3% of a step (perf). memory.py counts it among the work buffers."""
        if self._logits is None or self._logits.shape[0] < rows or self._logits.shape[1] != vocab:
            self._logits = None  # the old one goes before the new one is allocated
            self._logits = _empty(rows, vocab)
        return self._logits[:rows]

    def head(self, x: np.ndarray, targets: np.ndarray, grads: Grads | None, loss_scale: float):
        """Final norm, output matmul and cross-entropy over row chunks.

        Returns (sum of token losses, dL/dx [T, C] or None). With grads, each chunk's logits
        are turned into their gradient in place (scaled by loss_scale) right after the loss.
        """
        hp, model, lin = self.hp, self.model, self.linears
        w_on = lin.norm_weight(model.output_norm, "output_norm.weight")
        h, rstd = self.block._rms_norm(x, w_on)
        name, weight = self.head_name(), model.output
        T = x.shape[0]
        dh = _empty(T, hp.n_embd) if grads is not None else None
        loss_sum = 0.0
        logits_buffer = self.logits_buffer(min(T, self.head_chunk), weight.n_out)
        for r0 in range(0, T, self.head_chunk):
            r1 = min(T, r0 + self.head_chunk)
            hc, tc = h[r0:r1], targets[r0:r1]
            logits, z = lin.forward(hc, [(weight, name)], [logits_buffer[: r1 - r0]])[0]
            loss = _empty(r1 - r0)
            if grads is None:
                self.k.cross_entropy_forward(logits, tc, loss)
            else:  # the loss from the backward's own pass over the logits
                self.k.cross_entropy_backward(logits, tc, loss_scale, logits, loss)
                lin.backward(hc, [(weight, name)], [logits], [z], grads, dh[r0:r1])
            loss_sum += float(loss.sum(dtype=np.float64))
        if grads is None:
            return loss_sum, None
        return loss_sum, self.block._norm_backward(dh, x, w_on, rstd, "output_norm.weight", grads)

    # ----------------------------------------------------------------- whole model
    def loss_and_grads(self, inputs: np.ndarray, targets: np.ndarray, grads: Grads | None,
                       *, checkpointing: bool = True, keep_layers: int = 0,
                       loss_scale: float | None = None, positions: np.ndarray | None = None,
                       first_key: np.ndarray | None = None):
        """inputs, targets int32 [B, S] (target < 0: masked). Returns (loss_sum, n_kept).

        positions int32 [B, S]: each token's rope position (default 0..S-1 per row; packed
        samples restart theirs). first_key int32 [B, S]: the first key index (within the row)
        token (b, i) may attend (default 0: plain causal); packing passes each sample's start,
        and sliding-window layers narrow it further.

        With grads, adds d(loss_scale · loss_sum)/dθ into them; loss_scale defaults to 1/n_kept
        (the mean over unmasked positions). With checkpointing, the last keep_layers layers keep
        their intermediates from the forward (the first ones the backward needs) and only the
        others are recomputed."""
        B, S = inputs.shape
        tokens = Tokens.rows(B, S, positions, first_key)
        ids = np.ascontiguousarray(inputs.reshape(-1), np.int32)
        tgt = np.ascontiguousarray(targets.reshape(-1), np.int32)
        n_kept = int((tgt >= 0).sum())
        if loss_scale is None:
            loss_scale = 1.0 / max(n_kept, 1)
        n_layer = self.hp.n_layer
        first_kept = n_layer - (n_layer if not checkpointing else keep_layers)
        x = self.embed_forward(ids)
        layer_inputs, saved = [], []
        for li in range(n_layer):
            layer_inputs.append(x)
            x, s = self.block.forward(li, x, tokens, keep=grads is not None and li >= first_kept)
            saved.append(s)
        loss_sum, dx = self.head(x, tgt, grads, loss_scale)
        if grads is None:
            return loss_sum, n_kept
        for li in reversed(range(n_layer)):
            s = saved[li]
            if s is None:  # checkpointing: recompute this layer, keeping its intermediates
                _, s = self.block.forward(li, layer_inputs[li], tokens, keep=True)
            dx = self.block.backward(li, s, dx, grads)
            saved[li] = layer_inputs[li] = None
        self.embed_backward(ids, dx, grads)
        return loss_sum, n_kept
