"""The test oracle: a float64 numpy llama forward pass, written from the math, sharing no code
with ggtune's kernels. Weights are dequantized with gguf.quants, independently of ggtune.

Legend: T tokens, C n_embd, H heads, Hkv kv heads, D head dim, F n_ff, V vocab.
"""

from __future__ import annotations

import numpy as np

import gguf


def _dequantize(reader_tensor) -> np.ndarray:
    """float64 numpy array in numpy order (n_out, n_in) or (n,)."""
    t = reader_tensor
    values = gguf.quants.dequantize(t.data, t.tensor_type)
    return np.asarray(values, dtype=np.float64).reshape(tuple(int(n) for n in reversed(t.shape)))


class ReferenceLlama:
    """Reads a llama GGUF (plus optional LoRA pairs) and runs the forward pass in float64."""

    def __init__(self, path: str, lora: list[tuple[dict[str, tuple[np.ndarray, np.ndarray]], float]] = ()):
        """lora: [(pairs {base name: (A [r, n_in], B [n_out, r])}, scale)], applied as W + scale * B @ A."""
        reader = gguf.GGUFReader(path)
        meta = {k: f.contents() for k, f in reader.fields.items()}
        self.w = {t.name: _dequantize(t) for t in reader.tensors}
        for pairs, scale in lora:
            for name, (a, b) in pairs.items():
                self.w[name] = self.w[name] + scale * (b.astype(np.float64) @ a.astype(np.float64))
        if "output.weight" not in self.w:
            self.w["output.weight"] = self.w["token_embd.weight"]
        g = lambda k, d=None: meta.get(f"llama.{k}", d)  # noqa: E731
        self.n_embd = g("embedding_length")
        self.n_head = g("attention.head_count")
        self.n_head_kv = g("attention.head_count_kv", self.n_head)
        self.n_layer = g("block_count")
        self.head_dim = self.n_embd // self.n_head
        self.n_rot = g("rope.dimension_count", self.head_dim)
        self.freq_base = g("rope.freq_base", 10000.0)
        self.freq_scale = 1.0 / g("rope.scaling.factor", g("rope.scale_linear", 1.0))
        self.eps = g("attention.layer_norm_rms_epsilon", 1e-5)

    def rms_norm(self, x: np.ndarray, weight: np.ndarray) -> np.ndarray:
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.eps) * weight

    def rope(self, x: np.ndarray, pos: np.ndarray) -> np.ndarray:
        """x [T, H, D]; llama.cpp mode 0: rotates adjacent pairs (2i, 2i+1) of the first n_rot dims."""
        half = self.n_rot // 2
        theta = self.freq_scale * pos[:, None] * self.freq_base ** (-2.0 * np.arange(half) / self.n_rot)  # [T, half]
        cos, sin = np.cos(theta)[:, None, :], np.sin(theta)[:, None, :]
        out = x.copy()
        x0, x1 = x[..., 0:self.n_rot:2], x[..., 1:self.n_rot:2]
        out[..., 0:self.n_rot:2] = x0 * cos - x1 * sin
        out[..., 1:self.n_rot:2] = x0 * sin + x1 * cos
        return out

    def attention(self, q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
        """q [T, H, D], k and v [T, Hkv, D] -> [T, H*D], causal, kv head = q head // (H / Hkv)."""
        T = q.shape[0]
        group = self.n_head // self.n_head_kv
        k = np.repeat(k, group, axis=1)
        v = np.repeat(v, group, axis=1)
        scores = np.einsum("thd,shd->hts", q, k) / np.sqrt(self.head_dim)
        scores = np.where(np.tril(np.ones((T, T), dtype=bool)), scores, -np.inf)
        p = np.exp(scores - scores.max(axis=-1, keepdims=True))
        p /= p.sum(axis=-1, keepdims=True)
        return np.einsum("hts,shd->thd", p, v).reshape(T, -1)

    def logits(self, tokens) -> np.ndarray:
        """tokens [T] -> float64 [T, V]."""
        tokens = np.asarray(tokens)
        pos = np.arange(len(tokens), dtype=np.float64)
        w = self.w
        x = w["token_embd.weight"][tokens]
        for i in range(self.n_layer):
            p = f"blk.{i}."
            h = self.rms_norm(x, w[p + "attn_norm.weight"])
            q = (h @ w[p + "attn_q.weight"].T).reshape(len(tokens), self.n_head, self.head_dim)
            k = (h @ w[p + "attn_k.weight"].T).reshape(len(tokens), self.n_head_kv, self.head_dim)
            v = (h @ w[p + "attn_v.weight"].T).reshape(len(tokens), self.n_head_kv, self.head_dim)
            att = self.attention(self.rope(q, pos), self.rope(k, pos), v)
            x = x + att @ w[p + "attn_output.weight"].T
            h = self.rms_norm(x, w[p + "ffn_norm.weight"])
            gate = h @ w[p + "ffn_gate.weight"].T
            up = h @ w[p + "ffn_up.weight"].T
            x = x + (gate / (1.0 + np.exp(-gate)) * up) @ w[p + "ffn_down.weight"].T
        return self.rms_norm(x, w["output_norm.weight"]) @ w["output.weight"].T

    def cross_entropy(self, tokens) -> float:
        """Mean next-token cross-entropy (nats) of tokens [T]."""
        logits = self.logits(tokens)[:-1]
        m = logits.max(axis=-1, keepdims=True)
        lse = (m + np.log(np.exp(logits - m).sum(axis=-1, keepdims=True)))[:, 0]
        targets = np.asarray(tokens)[1:]
        return float(np.mean(lse - logits[np.arange(len(targets)), targets]))
