"""The test oracle: a float64 numpy forward pass of every family ggtune trains (llama, qwen2, qwen3,
gemma3), written from llama.cpp's graph definitions (src/models/<arch>.cpp, ggml's rope and
attention mask), sharing no code with ggtune. Weights are dequantized with gguf.quants, independently
of ggtune.

What the families differ in, as llama.cpp builds them:
- llama: rope on adjacent pairs (mode 0), optional per-pair frequency divisors (rope_freqs.weight,
  Llama 3.1), rope.scaling.type linear or yarn.
- qwen2: q/k/v biases; rope on the halves (neox).
- qwen3: RMSNorm of every q and k head ([head_dim] weights) before rope; attention.key_length may
  differ from n_embd / n_head; neox.
- gemma3: embeddings times sqrt(n_embd); q/k norms; RMSNorm after attention and after the FFN
  (sandwich); GELU(tanh) gate; sliding-window layers (all but every sliding_window_pattern-th, default
  6) with their own rope base (rope.freq_base_swa, default 10000) and no rope scaling; neox; tied head.

Legend: T tokens, C n_embd, H heads, Hkv kv heads, D head dim, F n_ff, V vocab.
"""

from __future__ import annotations

import math

import numpy as np

import gguf

FAMILIES = ("llama", "qwen2", "qwen3", "gemma3")
# ggml's YaRN defaults (llama_hparams.yarn_beta_fast / yarn_beta_slow).
YARN_BETA_FAST, YARN_BETA_SLOW = 32.0, 1.0


def _dequantize(reader_tensor) -> np.ndarray:
    """float64 numpy array in numpy order (n_out, n_in) or (n,)."""
    t = reader_tensor
    values = gguf.quants.dequantize(t.data, t.tensor_type)
    return np.asarray(values, dtype=np.float64).reshape(tuple(int(n) for n in reversed(t.shape)))


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def gelu_ggml_table(x: np.ndarray) -> np.ndarray:
    """ggml-cpu's GELU: x rounded to float16, looked up in a float16 table (GGML_GELU_FP16), so the
    result is gelu_tanh of the rounded input, rounded to float16; exact outside [-10, 10]."""
    table = gelu_tanh(x.astype(np.float16).astype(np.float64)).astype(np.float16).astype(np.float64)
    return np.where(x <= -10.0, 0.0, np.where(x >= 10.0, x, table))


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


class ReferenceModel:
    """Reads a GGUF model of a supported family (plus optional LoRA pairs) and runs the forward pass
    in float64. ggml_gelu_table=True reproduces llama.cpp's float16 GELU table (for diagnosing where
    llama.cpp and an exact forward part)."""

    def __init__(self, path: str, lora: list[tuple[dict[str, tuple[np.ndarray, np.ndarray]], float]] = (),
                 ggml_gelu_table: bool = False):
        """lora: [(pairs {base name: (A [r, n_in], B [n_out, r])}, scale)], applied as W + scale * B @ A."""
        reader = gguf.GGUFReader(path)
        meta = {k: f.contents() for k, f in reader.fields.items()}
        self.arch = meta["general.architecture"]
        if self.arch not in FAMILIES:
            raise ValueError(f"{path}: architecture {self.arch!r} not in the reference ({', '.join(FAMILIES)})")
        self.w = {t.name: _dequantize(t) for t in reader.tensors}
        for pairs, scale in lora:
            for name, (a, b) in pairs.items():
                self.w[name] = self.w[name] + scale * (b.astype(np.float64) @ a.astype(np.float64))
        if "output.weight" not in self.w:
            self.w["output.weight"] = self.w["token_embd.weight"]
        self._read_hparams(meta)
        self.act = (gelu_ggml_table if ggml_gelu_table else gelu_tanh) if self.arch == "gemma3" else silu

    def _read_hparams(self, meta: dict) -> None:
        """The hyper-parameters as llama_model_base::load_hparams and the arch's load_arch_hparams read them."""
        g = lambda k, d=None: meta.get(f"{self.arch}.{k}", d)  # noqa: E731
        self.n_embd = g("embedding_length")
        self.n_head = g("attention.head_count")
        self.n_head_kv = g("attention.head_count_kv", self.n_head)
        self.n_layer = g("block_count")
        self.head_dim = g("attention.key_length", self.n_embd // self.n_head)
        self.n_rot = g("rope.dimension_count", self.head_dim)
        self.eps = g("attention.layer_norm_rms_epsilon", 1e-5)
        self.freq_base = g("rope.freq_base", 10000.0)
        factor = g("rope.scaling.factor", g("rope.scale_linear", 0.0))
        self.freq_scale = 1.0 / factor if factor else 1.0
        self.scaling_type = g("rope.scaling.type", "linear")
        if self.scaling_type not in ("none", "linear", "yarn"):
            raise ValueError(f"rope.scaling.type {self.scaling_type!r} not in the reference")
        if self.scaling_type == "none":
            self.freq_scale = 1.0
        self.n_ctx_orig = g("rope.scaling.original_context_length", g("context_length"))
        self.rope_attn_factor = g("rope.scaling.attn_factor", 1.0)
        self.neox = self.arch != "llama"
        self.rope_factors = self.w.get("rope_freqs.weight")
        self.n_swa = g("attention.sliding_window", 0) if self.arch == "gemma3" else 0
        pattern = g("attention.sliding_window_pattern", 6)
        # llama_hparams::set_swa_pattern (dense last): layer il slides unless il % pattern == pattern - 1
        self.is_swa = [bool(self.n_swa) and (pattern == 0 or il % pattern < pattern - 1) for il in range(self.n_layer)]
        self.freq_base_swa = g("rope.freq_base_swa", 10000.0)
        self.embd_scale = math.sqrt(self.n_embd) if self.arch == "gemma3" else 1.0
        # gemma3's f_attention_scale: 1/sqrt(head_dim), but 1/sqrt(n_embd/n_head) for the 27B (62 layers)
        per_head = self.n_embd // self.n_head if (self.arch == "gemma3" and self.n_layer == 62) else self.head_dim
        self.attn_scale = 1.0 / math.sqrt(per_head)
        self.softcap = g("final_logit_softcapping", 0.0) if self.arch == "gemma3" and not self.n_swa else 0.0
        if self.arch == "gemma3" and not self.n_swa and not self.softcap:
            raise ValueError("gemma3 without attention.sliding_window nor final_logit_softcapping: not in the reference")

    # ------------------------------------------------------------------------------------- ops
    def rms_norm(self, x: np.ndarray, weight: np.ndarray) -> np.ndarray:
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.eps) * weight

    def rope_angles(self, pos: np.ndarray, swa: bool) -> tuple[np.ndarray, np.ndarray]:
        """(cos, sin) [T, n_rot/2] of ggml_rope_ext with this layer's base and scale (ggml-cpu
        rope_yarn: theta = interpolated / extrapolated mix, both times mscale)."""
        base = self.freq_base_swa if swa else self.freq_base
        freq_scale = 1.0 if swa else self.freq_scale  # rope_freq_scale_train_swa is 1
        half = self.n_rot // 2
        pairs = np.arange(half)
        theta_extrap = pos[:, None] * base ** (-2.0 * pairs / self.n_rot)
        if self.rope_factors is not None:
            theta_extrap = theta_extrap / self.rope_factors[None, :half]
        theta = freq_scale * theta_extrap
        mscale = self.rope_attn_factor
        if self.scaling_type == "yarn" and not swa:
            ramp = self._yarn_ramp(pairs, base)  # 1: extrapolate (high frequencies), 0: interpolate
            theta = theta * (1 - ramp) + theta_extrap * ramp
            # llama_context divides yarn_attn_factor by this very factor, so cos/sin carry it once
            mscale *= 1.0 + 0.1 * math.log(1.0 / freq_scale) if freq_scale < 1.0 else 1.0
        return np.cos(theta) * mscale, np.sin(theta) * mscale

    def _yarn_ramp(self, pairs: np.ndarray, base: float) -> np.ndarray:
        def corr_dim(n_rotations: float) -> float:
            return self.n_rot * math.log(self.n_ctx_orig / (n_rotations * 2 * math.pi)) / (2 * math.log(base))

        low = max(0.0, math.floor(corr_dim(YARN_BETA_FAST)))
        high = min(self.n_rot - 1.0, math.ceil(corr_dim(YARN_BETA_SLOW)))
        y = (pairs - low) / max(0.001, high - low)
        return 1.0 - np.clip(y, 0.0, 1.0)

    def rope(self, x: np.ndarray, pos: np.ndarray, swa: bool = False) -> np.ndarray:
        """x [T, H, D]: rotates pairs of the first n_rot dims, adjacent (2i, 2i+1) for llama (mode 0),
        (i, i + n_rot/2) for the neox families."""
        cos, sin = (a[:, None, :] for a in self.rope_angles(pos, swa))
        half = self.n_rot // 2
        if self.neox:
            i0, i1 = np.arange(half), np.arange(half) + half
        else:
            i0, i1 = np.arange(0, self.n_rot, 2), np.arange(1, self.n_rot, 2)
        out = x.copy()
        x0, x1 = x[..., i0], x[..., i1]
        out[..., i0] = x0 * cos - x1 * sin
        out[..., i1] = x0 * sin + x1 * cos
        return out

    def mask(self, n: int, swa: bool) -> np.ndarray:
        """bool [T, T]: query i sees key j when j <= i, and on sliding layers when i - j < n_swa."""
        i, j = np.arange(n)[:, None], np.arange(n)[None, :]
        visible = j <= i
        return visible & (i - j < self.n_swa) if swa else visible

    def attention(self, q: np.ndarray, k: np.ndarray, v: np.ndarray, swa: bool = False) -> np.ndarray:
        """q [T, H, D], k and v [T, Hkv, D] -> [T, H*D]; kv head = q head // (H / Hkv)."""
        group = self.n_head // self.n_head_kv
        k = np.repeat(k, group, axis=1)
        v = np.repeat(v, group, axis=1)
        scores = np.einsum("thd,shd->hts", q, k) * self.attn_scale
        scores = np.where(self.mask(q.shape[0], swa), scores, -np.inf)
        p = np.exp(scores - scores.max(axis=-1, keepdims=True))
        p /= p.sum(axis=-1, keepdims=True)
        return np.einsum("hts,shd->thd", p, v).reshape(q.shape[0], -1)

    def linear(self, x: np.ndarray, name: str) -> np.ndarray:
        """x @ W.T (+ bias when the file has one)."""
        y = x @ self.w[name + ".weight"].T
        bias = self.w.get(name + ".bias")
        return y if bias is None else y + bias

    # ------------------------------------------------------------------------------------- model
    def attention_block(self, h: np.ndarray, i: int, pos: np.ndarray) -> np.ndarray:
        p, n = f"blk.{i}.", len(h)
        q = self.linear(h, p + "attn_q").reshape(n, self.n_head, self.head_dim)
        k = self.linear(h, p + "attn_k").reshape(n, self.n_head_kv, self.head_dim)
        v = self.linear(h, p + "attn_v").reshape(n, self.n_head_kv, self.head_dim)
        if p + "attn_q_norm.weight" in self.w:
            q = self.rms_norm(q, self.w[p + "attn_q_norm.weight"])
            k = self.rms_norm(k, self.w[p + "attn_k_norm.weight"])
        swa = self.is_swa[i]
        att = self.attention(self.rope(q, pos, swa), self.rope(k, pos, swa), v, swa)
        return self.linear(att, p + "attn_output")

    def ffn_block(self, h: np.ndarray, i: int) -> np.ndarray:
        p = f"blk.{i}."
        return self.linear(self.act(self.linear(h, p + "ffn_gate")) * self.linear(h, p + "ffn_up"), p + "ffn_down")

    def _post_norm(self, y: np.ndarray, name: str) -> np.ndarray:
        weight = self.w.get(name)
        return y if weight is None else self.rms_norm(y, weight)

    def logits(self, tokens, trace: dict | None = None) -> np.ndarray:
        """tokens [T] -> float64 [T, V]. trace: filled with every layer's output ("blk.{i}.out") and the
        final norm's ("result_norm"), names as llama.cpp's graph callbacks give them."""
        tokens = np.asarray(tokens)
        pos = np.arange(len(tokens), dtype=np.float64)
        w = self.w
        x = w["token_embd.weight"][tokens] * self.embd_scale
        for i in range(self.n_layer):
            p = f"blk.{i}."
            att = self.attention_block(self.rms_norm(x, w[p + "attn_norm.weight"]), i, pos)
            x = x + self._post_norm(att, p + "post_attention_norm.weight")
            ffn = self.ffn_block(self.rms_norm(x, w[p + "ffn_norm.weight"]), i)
            x = x + self._post_norm(ffn, p + "post_ffw_norm.weight")
            if trace is not None:
                trace[p + "out"] = x
        x = self.rms_norm(x, w["output_norm.weight"])
        if trace is not None:
            trace["result_norm"] = x
        out = x @ w["output.weight"].T
        return self.softcap * np.tanh(out / self.softcap) if self.softcap else out

    def cross_entropy(self, tokens) -> float:
        """Mean next-token cross-entropy (nats) of tokens [T]."""
        logits = self.logits(tokens)[:-1]
        m = logits.max(axis=-1, keepdims=True)
        lse = (m + np.log(np.exp(logits - m).sum(axis=-1, keepdims=True)))[:, 0]
        targets = np.asarray(tokens)[1:]
        return float(np.mean(lse - logits[np.arange(len(targets)), targets]))


ReferenceLlama = ReferenceModel  # the name the llama-only tests know
