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


def _dequantize(reader_tensor, rows: slice | np.ndarray | None = None) -> np.ndarray:
    """float64 numpy array in numpy order (n_out, n_in) or (n,); `rows`: only those rows of a matrix."""
    t = reader_tensor
    shape = tuple(int(n) for n in reversed(t.shape))
    data = t.data if rows is None else t.data[rows]
    values = np.asarray(gguf.quants.dequantize(data, t.tensor_type), dtype=np.float64)
    return values.reshape(shape if rows is None else (-1,) + shape[1:])


class Weights:
    """The model's tensors by name, dequantized to float64 on first use (plus LoRA deltas), so a
    262k-row embedding or head is never expanded whole: `rows` and `row_chunks` read parts of it.
    A mapping otherwise: tests read, replace (w[name] = array) and delete tensors."""

    def __init__(self, reader: gguf.GGUFReader | None, deltas: dict[str, list[tuple[np.ndarray, np.ndarray, float]]]):
        self._source = {t.name: t for t in reader.tensors} if reader is not None else {}
        self._types = {name: int(t.tensor_type) for name, t in self._source.items()}
        self._deltas = deltas  # name -> [(A, B, scale)], applied when a source tensor is read
        self._cache: dict[str, np.ndarray] = {}
        self._aliases: dict[str, str] = {}

    def replaced_by(self, arrays: dict[str, np.ndarray]) -> "Weights":
        """Weights holding exactly `arrays` (already final), with this file's tensor types."""
        out = Weights(None, {})
        out._types, out._cache = dict(self._types), dict(arrays)
        return out

    def alias(self, name: str, target: str) -> None:
        """`name` reads `target` (a tied head): the same array object, as a tied model shares it."""
        self._aliases[name] = target
        self._types[name] = self._types[target]

    def keys(self) -> list[str]:
        return list(dict.fromkeys([*self._source, *self._aliases, *self._cache]))

    def __iter__(self):
        return iter(self.keys())

    def __contains__(self, name: str) -> bool:
        return name in self._cache or name in self._source or name in self._aliases

    def __delitem__(self, name: str) -> None:
        for table in (self._source, self._cache, self._aliases):
            table.pop(name, None)

    def _resolve(self, name: str) -> str:
        return name if name in self._cache else self._aliases.get(name, name)

    def __setitem__(self, name: str, value: np.ndarray) -> None:
        self._cache[name] = value

    def type_of(self, name: str) -> int:
        return self._types.get(name, int(gguf.GGMLQuantizationType.F32))

    def get(self, name: str, default=None):
        return self[name] if name in self else default

    def __getitem__(self, name: str) -> np.ndarray:
        name = self._resolve(name)
        if name not in self._cache:
            self._cache[name] = self._with_delta(name, _dequantize(self._source[name]), slice(None))
        return self._cache[name]

    def rows(self, name: str, index) -> np.ndarray:
        name = self._resolve(name)
        if name in self._cache:
            return self._cache[name][index]
        return self._with_delta(name, _dequantize(self._source[name], index), index)

    def n_rows(self, name: str) -> int:
        name = self._resolve(name)
        return len(self._cache[name]) if name in self._cache else int(self._source[name].shape[-1])

    def row_chunks(self, name: str, size: int = 16384):
        """(start, float64 rows [start, start + size)) over a matrix."""
        n = self.n_rows(name)
        for start in range(0, n, size):
            yield start, self.rows(name, slice(start, min(n, start + size)))

    def _with_delta(self, name: str, value: np.ndarray, rows) -> np.ndarray:
        for a, b, scale in self._deltas.get(name, ()):
            value = value + scale * (b[rows].astype(np.float64) @ a.astype(np.float64))
        return value


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def gelu_ggml_f32(x: np.ndarray) -> np.ndarray:
    """ggml_gelu_f32 in float32 as x86 builds compile it: 0.5 x (1 + tanhf(sqrt(2/pi) x c)) with
    c = 1 + 0.044715 x^2 one fused multiply-add (the product is exact in float64, so rounding the
    float64 sum once to float32 is the fma but for double-rounding ties); tanh in float64 rounded."""
    f = np.float32
    x = np.asarray(x, f)
    c = ((f(0.044715) * x).astype(np.float64) * x + 1.0).astype(f)
    t = np.tanh((f(0.7978845608028654) * x * c).astype(np.float64)).astype(f)
    return f(0.5) * x * (f(1.0) + t)


def gelu_ggml_table(x: np.ndarray) -> np.ndarray:
    """ggml-cpu's GELU (GGML_GELU_FP16): x rounded to float16, looked up in a float16 table of
    gelu_ggml_f32; 0 below -10 and x above 10, where the table is skipped."""
    table = gelu_ggml_f32(x.astype(np.float16)).astype(np.float16).astype(np.float64)
    return np.where(x <= -10.0, 0.0, np.where(x >= 10.0, x, table))


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


_Q = gguf.GGMLQuantizationType
# ggml-cpu's vec_dot_type: the type a weight's activations are rounded to before the product
# (type_traits_cpu); F32 weights multiply float32 activations.
_ACTIVATION_ROUNDING = {
    **dict.fromkeys((_Q.Q4_0, _Q.Q5_0, _Q.Q8_0, _Q.IQ4_NL), "q8_0"), **dict.fromkeys((_Q.Q4_1, _Q.Q5_1), "q8_1"),
    **dict.fromkeys((_Q.Q2_K, _Q.Q3_K, _Q.Q4_K, _Q.Q5_K, _Q.Q6_K, _Q.IQ4_XS), "q8_k"),
    _Q.F16: "f16", _Q.BF16: "bf16",
}


def round_activations(x: np.ndarray, weight_type: int) -> np.ndarray:
    """x [.., n] as ggml-cpu rounds it before a product with a weight of `weight_type`: 8-bit blocks of
    32 with a float16 scale (q8_0, q8_1), blocks of 256 scaled by their signed extreme (q8_k,
    quantize_row_q8_K_ref), float16 or bfloat16; unchanged for F32 weights."""
    kind = _ACTIVATION_ROUNDING.get(_Q(weight_type))
    if kind is None:
        return x
    if kind == "f16":
        return x.astype(np.float16).astype(np.float64)
    if kind == "bf16":
        bits = x.astype(np.float32).view(np.uint32).astype(np.uint64)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16 << 16  # round to nearest even
        return bits.astype(np.uint32).view(np.float32).astype(np.float64)
    block = 256 if kind == "q8_k" else 32
    b = x.astype(np.float32).reshape(-1, block).astype(np.float64)
    if kind == "q8_k":
        extreme = b[np.arange(len(b)), np.abs(b).argmax(axis=1)][:, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            iscale = np.where(extreme != 0, -127.0 / extreme, 0.0)
            q = np.minimum(127, np.rint(iscale * b))
            out = np.where(extreme != 0, q / iscale, 0.0)
    else:
        d = np.abs(b).max(axis=1, keepdims=True) / 127.0
        with np.errstate(divide="ignore", invalid="ignore"):
            q = np.where(d > 0, np.rint(b / d), 0.0)
        out = q * d.astype(np.float16).astype(np.float64)
    return out.reshape(x.shape)


class ReferenceModel:
    """Reads a GGUF model of a supported family (plus optional LoRA pairs) and runs the forward pass
    in float64: the exact math by default. Two of llama.cpp's CPU roundings can be reproduced, to tell
    them apart from errors: ggml_gelu, its float16 GELU table (about 2e-3 of the logits' std on the
    tiny gemma3 and on Gemma 3 270M); ggml_activations, activations rounded to 8-bit blocks (or
    float16) before each product with a quantized weight. The latter reproduces llama.cpp to 1e-6
    for K-quant, Q5_0 and head weights, but not its repacked Q4_0/Q4_1/Q8_0/F16 layer products (a
    mean KL near 1e-5 remains on the tiny models)."""

    def __init__(self, path: str, lora: list[tuple[dict[str, tuple[np.ndarray, np.ndarray]], float]] = (),
                 ggml_gelu: bool = False, ggml_activations: bool = False):
        """lora: [(pairs {base name: (A [r, n_in], B [n_out, r])}, scale)], applied as W + scale * B @ A."""
        reader = gguf.GGUFReader(path)
        meta = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("tokenizer.ggml.")}
        self.arch = meta["general.architecture"]
        if self.arch not in FAMILIES:
            raise ValueError(f"{path}: architecture {self.arch!r} not in the reference ({', '.join(FAMILIES)})")
        deltas: dict[str, list] = {}
        for pairs, scale in lora:
            for name, (a, b) in pairs.items():
                deltas.setdefault(name, []).append((a, b, scale))
        self._w = Weights(reader, deltas)
        if "output.weight" not in self.w:
            self.w.alias("output.weight", "token_embd.weight")
        self._read_hparams(meta)
        self.ggml_activations = ggml_activations
        self.act = (gelu_ggml_table if ggml_gelu else gelu_tanh) if self.arch == "gemma3" else silu

    @property
    def w(self) -> Weights:
        return self._w

    @w.setter
    def w(self, arrays) -> None:
        """Tests swap in modified weights: a plain {name: array} keeps the file's tensor types."""
        self._w = arrays if isinstance(arrays, Weights) else self._w.replaced_by(arrays)

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
        self.n_vocab = self.w.n_rows("token_embd.weight")
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

    def rounded(self, x: np.ndarray, weight: str) -> np.ndarray:
        return round_activations(x, self.w.type_of(weight)) if self.ggml_activations else x

    def linear(self, x: np.ndarray, name: str) -> np.ndarray:
        """x @ W.T (+ bias when the file has one)."""
        y = self.rounded(x, name + ".weight") @ self.w[name + ".weight"].T
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

    def hidden(self, tokens, trace: dict | None = None) -> np.ndarray:
        """tokens [T] -> the final norm's output float64 [T, C]. trace: filled with every layer's output
        ("blk.{i}.out"), names as llama.cpp's graph callbacks give them."""
        tokens = np.asarray(tokens)
        pos = np.arange(len(tokens), dtype=np.float64)
        w = self.w
        x = w.rows("token_embd.weight", tokens) * self.embd_scale
        for i in range(self.n_layer):
            p = f"blk.{i}."
            att = self.attention_block(self.rms_norm(x, w[p + "attn_norm.weight"]), i, pos)
            x = x + self._post_norm(att, p + "post_attention_norm.weight")
            ffn = self.ffn_block(self.rms_norm(x, w[p + "ffn_norm.weight"]), i)
            x = x + self._post_norm(ffn, p + "post_ffw_norm.weight")
            if trace is not None:
                trace[p + "out"] = x
        return self.rms_norm(x, w["output_norm.weight"])

    def logits(self, tokens, trace: dict | None = None, positions=None) -> np.ndarray:
        """tokens [T] -> float64 [T, V], or [len(positions), V] for those positions only."""
        x = self.hidden(tokens, trace)
        if positions is not None:
            x = x[np.asarray(positions)]
        out = np.empty((len(x), self.n_vocab))
        x = self.rounded(x, "output.weight")
        for start, rows in self.w.row_chunks("output.weight"):
            out[:, start:start + len(rows)] = x @ rows.T
        return self.softcap * np.tanh(out / self.softcap) if self.softcap else out

    def token_losses(self, tokens) -> np.ndarray:
        """-log p(tokens[t+1] | tokens[:t+1]) for t < T-1, float64 [T-1], without a [T, V] matrix."""
        tokens = np.asarray(tokens)
        x = self.rounded(self.hidden(tokens)[:-1], "output.weight")
        m = np.full(len(x), -np.inf)
        total = np.zeros(len(x))
        target = np.empty(len(x))
        for start, rows in self.w.row_chunks("output.weight"):
            z = x @ rows.T
            if self.softcap:
                z = self.softcap * np.tanh(z / self.softcap)
            new_m = np.maximum(m, z.max(axis=1))
            total = total * np.exp(m - new_m) + np.exp(z - new_m[:, None]).sum(axis=1)
            m = new_m
            inside = (tokens[1:] >= start) & (tokens[1:] < start + len(rows))
            target[inside] = z[inside, tokens[1:][inside] - start]
        return m + np.log(total) - target

    def cross_entropy(self, tokens) -> float:
        """Mean next-token cross-entropy (nats) of tokens [T]."""
        return float(np.mean(self.token_losses(tokens)))


ReferenceLlama = ReferenceModel  # the name the llama-only tests know


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def mean_kl(reference: np.ndarray, other: np.ndarray) -> float:
    """Mean over positions of KL(softmax(reference) || softmax(other)), in nats."""
    p, q = log_softmax(reference), log_softmax(other)
    return float((np.exp(p) * (p - q)).sum(axis=-1).mean())
