"""Inference over GGUF weights: the model object, its KV cache and LoRA adapters at inference.

The layers run block.Block, the same forward training uses.

Legend: B sequences, S tokens per sequence, T = B*S tokens, C n_embd, H heads, Hkv kv heads,
D head dim, F n_ff, V vocab, r LoRA rank.

Every matrix product goes through `linear`, which applies LoRA adapters as
y = x @ W.T + scale * (x @ A.T) @ B.T, never materialising W + scale * B @ A.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from . import _core
from .architecture import HParams
from .block import Block, Tokens
from .gguf_io import GGUFError, ModelWeights, Weight, read_model_gguf

LOGITS_ROWS_PER_CHUNK = 256  # rows of [rows, V] logits computed at once by cross_entropy
KV_TYPES = ("f16", "f32")  # the KV caches precision "ggml" reproduces (llama.cpp's default: f16)


@dataclass
class LoraPair:
    """One adapter on one weight: W_eff = W + scale * b @ a (never formed)."""

    a: np.ndarray  # f32 [r, n_in]
    b: np.ndarray  # f32 [n_out, r]
    scale: float


def linear(x: np.ndarray, weight: Weight, lora: Optional[Sequence[LoraPair]] = None,
           out: Optional[np.ndarray] = None, precision: str = "auto") -> np.ndarray:
    """out f32 [T, N] = x @ W.T + sum over adapters of scale * (x @ A.T) @ B.T.

    x: f32 [T, K] with K = weight.n_in. W stays in its stored type; the matmul kernel dequantizes
    tiles on the fly. precision "ggml" first rounds x as llama.cpp's CPU backend does next to W's
    type (8-bit blocks for quantized weights), then multiplies exactly; adapters see the exact x,
    as in llama.cpp, whose adapter tensors are float32.
    """
    if out is None:
        out = np.empty((x.shape[0], weight.n_out), dtype=np.float32)
    xw = x
    if precision == "ggml":
        xw = np.empty_like(x)
        _core.round_activations(x, weight.ggml_type, xw)
    _core.matmul(xw, weight.data, weight.ggml_type, out, precision="f32" if precision == "ggml" else precision)
    add_lora(x, lora, out)
    return out


def add_lora(x: np.ndarray, lora: Optional[Sequence[LoraPair]], out: np.ndarray) -> None:
    """out f32 [T, N] += sum over adapters of scale * (x @ A.T) @ B.T, x f32 [T, K]."""
    for pair in lora or ():
        xa = np.empty((x.shape[0], pair.a.shape[0]), dtype=np.float32)  # [T, r]
        _core.gemm(x, pair.a, xa, trans_b=True)
        _core.gemm(xa, pair.b, out, trans_b=True, alpha=pair.scale, beta=1.0)


def add_embedding_lora(x: np.ndarray, ids: np.ndarray, pairs: Optional[Sequence[LoraPair]]) -> None:
    """x f32 [T, C] += scale * B[ids] @ A for each token_embd adapter (A [r, C], B [V, r]): the rows
    of W + scale * B @ A, as llama.cpp's input embedding applies them (untied models only)."""
    for pair in pairs or ():
        x += np.float32(pair.scale) * (pair.b[ids] @ pair.a)


class InferenceLinears:
    """The block's matrix products at inference: `linear` with every adapter loaded on a weight
    (llama.cpp ignores norm adapters, and so does read_adapter: norms pass unchanged)."""

    def __init__(self, lora: dict[str, list[LoraPair]], precision: str):
        self.lora, self.precision = lora, precision

    def forward(self, x, items, outs=None):
        """[(weight, name), ...] reading x [T, n_in] -> [(y [T, n_out], None), ...]. The base products
        of weights sharing x (q/k/v, gate/up) run as one _core.matmul_many call: when decoding, one
        parallel region for all of them (csrc/gemm/qgemv.h); the adapters are added after."""
        outs = outs or [None] * len(items)
        if self.precision == "ggml" or len(items) == 1:
            return [(linear(x, w, self.lora.get(name), out=out, precision=self.precision), None)
                    for (w, name), out in zip(items, outs)]
        outs = [np.empty((x.shape[0], w.n_out), dtype=np.float32) if out is None else out
                for (w, _), out in zip(items, outs)]
        _core.matmul_many(x, [w.data for w, _ in items], [w.ggml_type for w, _ in items], outs,
                          precision=self.precision)
        for (_, name), out in zip(items, outs):
            add_lora(x, self.lora.get(name), out)
        return [(out, None) for out in outs]

    def norm_weight(self, weight: np.ndarray, name: str) -> np.ndarray:
        return weight

    def has_adapter(self, name: str) -> bool:
        return False


class KVCache:
    """Keys and values of past tokens, per layer: [B, n_max, Hkv, D] each."""

    def __init__(self, hp: HParams, n_max: int, n_seq: int = 1):
        shape = (n_seq, n_max, hp.n_head_kv, hp.head_dim)
        self.k = [np.zeros(shape, dtype=np.float32) for _ in range(hp.n_layer)]
        self.v = [np.zeros(shape, dtype=np.float32) for _ in range(hp.n_layer)]
        self.n_max = n_max
        self.n_past = 0

    def store(self, layer: int, k: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Appends k, v [B, S, Hkv, D] at n_past; returns all keys and values so far [B, n_past+S, Hkv, D]."""
        end = self.n_past + k.shape[1]
        if end > self.n_max:
            raise ValueError(f"KV cache full: {end} tokens, room for {self.n_max}")
        self.k[layer][:, self.n_past:end] = k
        self.v[layer][:, self.n_past:end] = v
        return (np.ascontiguousarray(self.k[layer][:, :end]), np.ascontiguousarray(self.v[layer][:, :end]))


class Model:
    """A GGUF model ready to run: weights (memory-mapped), adapters, tokenizer."""

    def __init__(self, weights: ModelWeights, lora: Optional[dict[str, list[LoraPair]]] = None,
                 precision: str = "auto", kv_type: str = "f16"):
        if kv_type not in KV_TYPES:
            raise ValueError(f"kv_type: expected one of {', '.join(KV_TYPES)} (llama.cpp's type_k/type_v), "
                             f"got {kv_type!r}")
        self.weights = weights
        self.hparams = weights.hparams
        self.lora = lora or {}  # {GGUF tensor name: [LoraPair, ...]}
        self.precision = precision
        self._tokenizer = None
        ggml = precision == "ggml"
        # "ggml": q, k, v rounded to F16 as llama.cpp's F16 KV cache and K·Q product see them (an F32
        # cache keeps them); GELU read from ggml-cpu's float16 table
        self.block = Block(weights, InferenceLinears(self.lora, precision), _core,
                           round_kv_f16=ggml and kv_type == "f16", ggml_gelu=ggml)

    # ----- tokens -----
    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from .tokenizer import Tokenizer

            try:
                self._tokenizer = Tokenizer.from_metadata(self.weights.metadata)
            except ValueError as e:  # a vocabulary that cannot work; the message names the key
                raise GGUFError(f"{self.weights.path}: {e}") from None
        return self._tokenizer

    def tokenize(self, text: str, add_bos: Optional[bool] = None, special: bool = False) -> list[int]:
        return self.tokenizer.tokenize(text, add_bos=add_bos, special=special)

    def detokenize(self, ids: Sequence[int]) -> str:
        return self.tokenizer.detokenize(ids)

    # ----- forward -----
    def hidden(self, tokens: np.ndarray, cache: Optional[KVCache] = None) -> np.ndarray:
        """tokens int [B, S] -> final normed hidden states f32 [B*S, C]; appends to `cache` if given."""
        hp = self.hparams
        B, S = tokens.shape
        ids = np.ascontiguousarray(tokens, dtype=np.int32).reshape(B * S)
        if ids.min() < 0 or ids.max() >= hp.n_vocab:
            raise ValueError(f"tokens: ids must be in [0, {hp.n_vocab}), got {ids.min()}..{ids.max()}")
        where = Tokens.rows(B, S, n_past=cache.n_past if cache else 0)
        x = np.empty((B * S, hp.n_embd), dtype=np.float32)  # the residual stream [T, C]
        _core.get_rows(self.weights.token_embd.data, self.weights.token_embd.ggml_type, ids, x)
        add_embedding_lora(x, ids, self.lora.get("token_embd.weight"))
        scale = self.weights.arch.embedding_scale
        if scale != 1.0:
            x *= np.float32(scale)
        for i in range(hp.n_layer):
            x, _ = self.block.forward(i, x, where, cache=cache)
        if cache is not None:
            cache.n_past += S
        h, _ = self.block._rms_norm(x, self.weights.output_norm)
        return h

    def output_logits(self, h: np.ndarray) -> np.ndarray:
        """h f32 [T, C] (normed hidden states) -> logits f32 [T, V]."""
        return linear(np.ascontiguousarray(h), self.weights.output, self.lora.get("output.weight"),
                      precision=self.precision)

    def logits(self, tokens) -> np.ndarray:
        """tokens int [S] -> f32 [S, V], or [B, S] -> f32 [B, S, V]."""
        batch = self._as_batch(tokens)
        out = self.output_logits(self.hidden(batch))
        return out.reshape(batch.shape + (-1,)) if np.ndim(tokens) == 2 else out

    def token_losses(self, tokens) -> np.ndarray:
        """Next-token cross-entropy (nats) of each prediction: tokens [B, S] (or [S]) -> f32 [B, S-1]."""
        batch = self._as_batch(tokens)
        B, S = batch.shape
        if S < 2:
            raise ValueError("tokens: need at least 2 tokens per sequence to predict one")
        h = self.hidden(batch).reshape(B, S, -1)[:, :-1].reshape(B * (S - 1), -1)
        targets = np.ascontiguousarray(batch[:, 1:].reshape(-1), dtype=np.int32)
        losses = np.empty(len(targets), dtype=np.float32)
        for start in range(0, len(targets), LOGITS_ROWS_PER_CHUNK):  # bounds the [rows, V] buffer
            end = min(start + LOGITS_ROWS_PER_CHUNK, len(targets))
            _core.cross_entropy_forward(self.output_logits(h[start:end]), targets[start:end], losses[start:end])
        return losses.reshape(B, S - 1)

    def cross_entropy(self, tokens) -> float:
        """Mean next-token cross-entropy in nats of tokens [S] or [B, S]."""
        return float(np.mean(self.token_losses(tokens), dtype=np.float64))

    def new_cache(self, n_max: Optional[int] = None, n_seq: int = 1) -> KVCache:
        return KVCache(self.hparams, n_max or self.hparams.n_ctx_train, n_seq)

    def _as_batch(self, tokens) -> np.ndarray:
        batch = np.asarray(tokens)
        if batch.ndim == 1:
            batch = batch[None, :]
        if batch.ndim != 2 or batch.shape[1] == 0 or not np.issubdtype(batch.dtype, np.integer):
            raise ValueError(f"tokens: expected integer ids [S] or [B, S] with S >= 1, got shape {batch.shape}")
        if batch.shape[1] > self.hparams.n_ctx_train:
            raise ValueError(f"tokens: {batch.shape[1]} tokens per sequence exceed the model's "
                             f"context of {self.hparams.n_ctx_train}")
        return batch


def read_adapter(path: str | os.PathLike, user_scale: float, weights: ModelWeights) -> dict[str, LoraPair]:
    """A GGUF LoRA adapter checked against the model: {tensor name: LoraPair}.

    scale = user_scale * alpha / r, or user_scale when the adapter has no alpha (gguf-lora-adapter.md).
    Norm adapters are ignored, as llama.cpp ignores them.
    """
    from .adapters import read_gguf_adapter

    path = os.fspath(path)
    alpha, pairs = read_gguf_adapter(path, architecture=weights.arch.name)
    targets = weights.weights_by_name()
    adapted = {}
    for name, (a, b) in pairs.items():
        if name.endswith("_norm.weight"):
            continue
        if name == "token_embd.weight" and weights.tied_embeddings:
            raise GGUFError(f"{path}: an adapter on token_embd.weight of a tied-embedding model (llama.cpp "
                            "aborts on it: the output layer shares the tensor); merge it into the model instead")
        w = targets.get(name)
        if w is None:
            raise GGUFError(f"{path}: adapter tensor '{name}' has no matching weight in {weights.path}")
        r = a.shape[0]
        if a.shape != (r, w.n_in) or b.shape != (w.n_out, r):
            raise GGUFError(f"{path}: adapter for '{name}' has A {a.shape} and B {b.shape}, the weight "
                            f"needs A (r, {w.n_in}) and B ({w.n_out}, r)")
        scale = user_scale * (alpha / r if alpha is not None else 1.0)
        adapted[name] = LoraPair(np.ascontiguousarray(a, dtype=np.float32),
                                 np.ascontiguousarray(b, dtype=np.float32), float(scale))
    return adapted


def load_model(path: str | os.PathLike, n_threads: Optional[int] = None,
               lora: Optional[Sequence[tuple[str, float]]] = None, precision: str = "auto",
               kv_type: str = "f16") -> Model:
    """Loads a GGUF model of a supported family (architecture.SUPPORTED), memory-mapped (weights stay in their stored type).

    n_threads: kernel threads (None: every core). lora: [(adapter path, user scale), ...], applied
    at inference as llama.cpp does. precision: the matmul precision, "auto", "f32", "bf16" or "int8"
    (see _core.matmul: "auto" is int8 for quantized weights on AVX512-VNNI CPUs, activations
    rounded to 8 bits per 32 values as llama.cpp does, else f32), or "ggml": activations rounded
    exactly as llama.cpp's CPU backend rounds them (Q8_0/Q8_1/Q8_K blocks before quantized
    weights, F16 keys/values/queries as its default KV cache, GELU from its float16 table), which
    reproduces llama.cpp's perplexities closely; "f32" computes the exact products. kv_type: with
    "ggml", the KV cache llama.cpp runs with, "f16" (its default) or "f32" (type_k = type_v = 0);
    the other precisions keep keys and values in float32.
    """
    _core.set_num_threads(int(n_threads or 0))  # 0: every core
    weights = read_model_gguf(path)
    adapters: dict[str, list[LoraPair]] = {}
    for adapter_path, scale in lora or ():
        for name, pair in read_adapter(adapter_path, scale, weights).items():
            adapters.setdefault(name, []).append(pair)
    return Model(weights, adapters, precision, kv_type)
