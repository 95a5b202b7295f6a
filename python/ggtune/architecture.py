"""What a model computes, read from its GGUF metadata: hyper-parameters and a family description.

A *family* (`general.architecture`) says how its transformer block differs from LLaMA's, as
llama.cpp builds it (src/models/<family>.cpp, the hparams loading of src/llama-model.cpp):

| family | norms                         | q/k/v          | activation | embedding  | rope  | attention |
|--------|-------------------------------|----------------|------------|------------|-------|-----------|
| llama  | pre                           | plain          | SwiGLU     | as stored  | norm* | causal    |
| qwen2  | pre                           | + bias         | SwiGLU     | as stored  | neox  | causal    |
| qwen3  | pre; RMSNorm per q/k head     | plain          | SwiGLU     | as stored  | neox  | causal    |
| gemma3 | pre + post (sandwich); q/k    | plain          | GELU-tanh  | ·sqrt(C)   | neox  | 5 sliding : 1 global |

(*) llama's converter permutes the q/k rows so that GGUF's adjacent-pair rope equals the
Hugging Face half-split one; llama may carry `rope_freqs.weight` (Llama 3.x frequency factors).
Gemma's converter already stores its norm weights as 1 + w. The block (block.py) reads only this
description: adding a family means adding a `Family` here (and any kernel it needs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

ROPE_NORMAL, ROPE_NEOX = 0, 2  # ggml rope modes: adjacent pairs, or the two halves of a head

DEFAULT_CONTEXT_LENGTH = 2048
DEFAULT_ROPE_FREQ_BASE = 10000.0
DEFAULT_RMS_EPS = 1e-5


class GGUFError(ValueError):
    """A GGUF file that ggtune cannot use; the message names the file (and key or tensor)."""


@dataclass
class HParams:
    """A model's hyper-parameters (also what a training checkpoint records about its base)."""

    n_vocab: int  # 0 where unknown (a training checkpoint does not record it)
    n_ctx_train: int  # the training context (a checkpoint's: the one it was trained with)
    n_embd: int
    n_ff: int
    n_head: int
    n_head_kv: int
    n_layer: int
    n_rot: int  # rotated dimensions per head (rope.dimension_count)
    rope_freq_base: float
    rope_freq_scale: float  # 1 / linear scaling factor
    rms_eps: float
    head_dim: int = 0  # attention.key_length; 0: n_embd / n_head
    rope_scaling: str = "none"  # rope.scaling.type: none, linear or yarn
    n_ctx_orig: int = 0  # rope.scaling.original_context_length (yarn)
    yarn_beta_fast: float = 32.0
    yarn_beta_slow: float = 1.0
    yarn_attn_factor: float = 1.0
    n_swa: int = 0  # sliding window of the local layers (0: none)
    rope_freq_base_swa: float = 0.0  # rope base of the sliding-window layers
    swa_layers: tuple = ()  # per layer: True where the layer attends through the sliding window

    def __post_init__(self):
        if not self.head_dim:
            self.head_dim = self.n_embd // self.n_head

    @property
    def n_embd_q(self) -> int:
        return self.head_dim * self.n_head

    @property
    def n_embd_kv(self) -> int:
        return self.head_dim * self.n_head_kv


@dataclass(frozen=True)
class Family:
    """How one GGUF architecture's block differs from the LLaMA block (table above)."""

    name: str
    rope_mode: int
    qkv_bias: bool = False  # blk.N.attn_{q,k,v}.bias added after the products
    qk_norm: bool = False  # blk.N.attn_{q,k}_norm: RMSNorm over each head before rope
    post_norms: bool = False  # blk.N.post_attention_norm / post_ffw_norm before the residual adds
    activation: str = "swiglu"  # "swiglu" (SiLU gate) or "geglu" (GELU-tanh gate)
    embedding_scale: bool = False  # token embeddings times sqrt(n_embd)
    rope_freqs: bool = False  # may carry rope_freqs.weight (frequency factors, all layers)
    sliding_window: bool = False  # interleaved sliding-window layers (attention.sliding_window)
    swa_pattern: int = 0  # default pattern: every swa_pattern-th layer is global
    swa_rope_base: float = 0.0  # rope base of the sliding-window layers (rope.freq_base_swa overrides it)
    permuted_qk: bool = False  # the HF -> GGUF converter permuted q/k rows (PEFT export undoes it)


FAMILIES = {f.name: f for f in (
    Family("llama", ROPE_NORMAL, rope_freqs=True, permuted_qk=True),
    Family("qwen2", ROPE_NEOX, qkv_bias=True),
    Family("qwen3", ROPE_NEOX, qk_norm=True),
    Family("gemma3", ROPE_NEOX, qk_norm=True, post_norms=True, activation="geglu", embedding_scale=True,
           sliding_window=True, swa_pattern=6, swa_rope_base=10000.0),
)}
SUPPORTED = tuple(FAMILIES)


@dataclass(frozen=True, eq=False)
class Rope:
    """One rope variant (ggml_rope_ext's parameters) applied to x [T, heads, D] in place."""

    n_rot: int
    freq_base: float
    freq_scale: float
    mode: int
    freq_factors: Optional[np.ndarray] = None  # f32 [n_rot / 2]: theta_i divided by factor_i
    ext_factor: float = 0.0  # yarn: 1
    attn_factor: float = 1.0
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    n_ctx_orig: int = 0

    def apply(self, kernels, x: np.ndarray, pos: np.ndarray, backward: bool = False) -> None:
        """x f32 [T, H, D] rotated in place (backward: by the transposed rotation); pos int32 [T]."""
        fn = kernels.rope_backward if backward else kernels.rope_forward
        fn(x, pos, self.n_rot, self.freq_base, self.freq_scale, self.mode, x, freq_factors=self.freq_factors,
           ext_factor=self.ext_factor, attn_factor=self.attn_factor, beta_fast=self.beta_fast,
           beta_slow=self.beta_slow, n_ctx_orig=self.n_ctx_orig)


@dataclass
class Architecture:
    """A model's family and hyper-parameters: everything the block needs to know."""

    family: Family
    hp: HParams
    rope_freqs: Optional[np.ndarray] = None  # f32 [n_rot / 2] (llama 3.x), else None

    @property
    def name(self) -> str:
        return self.family.name

    @property
    def attention_scale(self) -> float:
        """Scale of q·k. Gemma 3 uses 1/sqrt(query_pre_attn_scalar), which llama.cpp derives
        from the size: n_embd/n_head for the 27B (62 layers), key_length for the others."""
        hp = self.hp
        if self.family.name == "gemma3" and hp.n_layer == 62:
            return 1.0 / math.sqrt(hp.n_embd // hp.n_head)
        return 1.0 / math.sqrt(hp.head_dim)

    @property
    def embedding_scale(self) -> float:
        return math.sqrt(self.hp.n_embd) if self.family.embedding_scale else 1.0

    def window(self, layer: int) -> int:
        """Sliding window of a layer (a query sees the last `window` positions), 0: all before it."""
        hp = self.hp
        return hp.n_swa if hp.swa_layers and hp.swa_layers[layer] else 0

    def rope(self, layer: int) -> Rope:
        hp = self.hp
        if self.window(layer):  # llama.cpp: local layers have their own base and no scaling
            return Rope(hp.n_rot, hp.rope_freq_base_swa, 1.0, self.family.rope_mode)
        yarn = hp.rope_scaling == "yarn"
        return Rope(hp.n_rot, hp.rope_freq_base, hp.rope_freq_scale, self.family.rope_mode,
                    freq_factors=self.rope_freqs, ext_factor=1.0 if yarn else 0.0,
                    attn_factor=hp.yarn_attn_factor if yarn else 1.0, beta_fast=hp.yarn_beta_fast,
                    beta_slow=hp.yarn_beta_slow, n_ctx_orig=hp.n_ctx_orig or hp.n_ctx_train)


def family_of(path: str, meta: dict[str, Any]) -> Family:
    arch = meta.get("general.architecture")
    if arch not in FAMILIES:
        raise GGUFError(f"{path}: general.architecture is {arch!r}; ggtune runs "
                                f"{', '.join(repr(a) for a in SUPPORTED)} models")
    return FAMILIES[arch]


def read_hparams(path: str, meta: dict[str, Any], n_vocab_default: int) -> HParams:
    """The hyper-parameters of a model file, with llama.cpp's defaults for optional keys."""
    family = family_of(path, meta)
    prefix = family.name

    def key(name: str, default: Any = None) -> Any:
        full = f"{prefix}.{name}"
        if full in meta:
            return meta[full]
        if default is None:
            raise GGUFError(f"{path}: missing metadata key '{full}'")
        return default

    n_embd = int(key("embedding_length"))
    n_head = int(key("attention.head_count"))
    if n_head <= 0 or n_embd <= 0:
        raise GGUFError(f"{path}: embedding_length {n_embd} and head_count {n_head} must be positive")
    head_dim = int(key("attention.key_length", n_embd // n_head))
    if head_dim <= 0 or ("attention.key_length" not in _keys(meta, prefix) and n_embd % n_head):
        raise GGUFError(f"{path}: embedding_length {n_embd} is not a multiple of head_count {n_head} "
                                f"(and no {prefix}.attention.key_length says the head size)")
    if int(key("attention.value_length", head_dim)) != head_dim:
        raise GGUFError(f"{path}: {prefix}.attention.value_length differs from key_length {head_dim}; "
                                "ggtune needs equal key and value head sizes")
    n_head_kv = int(key("attention.head_count_kv", n_head))
    if n_head_kv <= 0 or n_head % n_head_kv:
        raise GGUFError(f"{path}: head_count {n_head} is not a multiple of head_count_kv {n_head_kv}")
    tokens = meta.get("tokenizer.ggml.tokens")
    n_vocab = int(key("vocab_size", len(tokens) if tokens else n_vocab_default))
    n_rot = int(key("rope.dimension_count", head_dim))
    if n_rot > head_dim or n_rot % 2:
        raise GGUFError(f"{path}: rope.dimension_count {n_rot} must be even and <= head size {head_dim}")
    scaling = str(key("rope.scaling.type", "none"))
    if scaling not in ("none", "linear", "yarn"):
        raise GGUFError(f"{path}: {prefix}.rope.scaling.type {scaling!r} is not supported "
                                "(ggtune implements none, linear and yarn)")
    factor = float(key("rope.scaling.factor", key("rope.scale_linear", 1.0)))
    n_layer = int(key("block_count"))
    n_ctx_train = int(key("context_length", DEFAULT_CONTEXT_LENGTH))
    n_swa, swa_layers = _sliding_window(path, meta, family, n_layer)
    return HParams(
        n_vocab=n_vocab, n_ctx_train=n_ctx_train, n_embd=n_embd, n_ff=int(key("feed_forward_length")),
        n_head=n_head, n_head_kv=n_head_kv, n_layer=n_layer, n_rot=n_rot,
        rope_freq_base=float(key("rope.freq_base", DEFAULT_ROPE_FREQ_BASE)),
        rope_freq_scale=1.0 / factor if factor else 1.0,
        rms_eps=float(key("attention.layer_norm_rms_epsilon", DEFAULT_RMS_EPS)),
        head_dim=head_dim, rope_scaling=scaling,
        n_ctx_orig=int(key("rope.scaling.original_context_length", n_ctx_train)),
        yarn_beta_fast=float(key("rope.scaling.yarn_beta_fast", 32.0)),
        yarn_beta_slow=float(key("rope.scaling.yarn_beta_slow", 1.0)),
        yarn_attn_factor=float(key("rope.scaling.yarn_attn_factor", key("rope.scaling.attn_factor", 1.0))),
        n_swa=n_swa, swa_layers=swa_layers,
        rope_freq_base_swa=float(key("rope.freq_base_swa", family.swa_rope_base)) if n_swa else 0.0)


def _keys(meta: dict[str, Any], prefix: str) -> set[str]:
    return {k[len(prefix) + 1:] for k in meta if k.startswith(prefix + ".")}


def _sliding_window(path: str, meta: dict[str, Any], family: Family, n_layer: int) -> tuple[int, tuple]:
    """(window, per-layer flags) as llama.cpp sets them: layer i slides unless i % pattern == pattern - 1;
    `attention.sliding_window_pattern` (an int, or one bool per layer) overrides the family's pattern."""
    if not family.sliding_window:
        return 0, ()
    prefix = family.name
    window = meta.get(f"{prefix}.attention.sliding_window")
    if not isinstance(window, int) or window <= 0:
        raise GGUFError(f"{path}: {prefix}.attention.sliding_window must be a positive integer, "
                                f"got {window!r}")
    pattern = meta.get(f"{prefix}.attention.sliding_window_pattern", family.swa_pattern)
    if isinstance(pattern, list):
        if len(pattern) != n_layer:
            raise GGUFError(f"{path}: {prefix}.attention.sliding_window_pattern has {len(pattern)} "
                                    f"entries for {n_layer} layers")
        return window, tuple(bool(p) for p in pattern)
    pattern = int(pattern)
    return window, tuple(pattern == 0 or i % pattern < pattern - 1 for i in range(n_layer))
