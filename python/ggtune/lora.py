"""LoRA parameters: which tensors are adapted, their ranks, initialisation and layout.

Orientation (the modern one, as PEFT and the GGUF adapter store it): for a base weight W of
numpy shape (n_out, n_in) the pair is A (r, n_in) and B (n_out, r), and the adapted weight is

    W' = W + s · (B @ A),   s = alpha / r.

Norm weights are vectors (n_embd,): treated as a (1, n_embd) matrix, so B is (1, r).
A starts from a seeded random draw and B at zero, so an untrained adapter changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# The tensor kinds of the original finetune (spec section A), with their per-kind flag names.
LAYER_KINDS = ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output",
               "ffn_norm", "ffn_gate", "ffn_down", "ffn_up")
MODEL_KINDS = ("token_embd", "output_norm", "output")
ALL_KINDS = MODEL_KINDS + LAYER_KINDS
NORM_KINDS = ("attn_norm", "ffn_norm", "output_norm")
MATRIX_KINDS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_down", "ffn_up")

# spec option name -> tensor kind
RANK_OPTIONS = {
    "rank_att_norm": "attn_norm", "rank_ffn_norm": "ffn_norm", "rank_out_norm": "output_norm",
    "rank_tok_embd": "token_embd", "rank_out": "output",
    "rank_wq": "attn_q", "rank_wk": "attn_k", "rank_wv": "attn_v", "rank_wo": "attn_output",
    "rank_w1": "ffn_gate", "rank_w2": "ffn_down", "rank_w3": "ffn_up",
}


def tensor_name(kind: str, layer: int | None) -> str:
    """GGUF base-tensor name of a kind, e.g. ('attn_q', 3) -> 'blk.3.attn_q.weight'."""
    return f"{kind}.weight" if layer is None else f"blk.{layer}.{kind}.weight"


def kind_of(name: str) -> str:
    """Inverse of tensor_name: 'blk.3.attn_q.weight' -> 'attn_q'."""
    return name.split(".")[-2]


@dataclass
class LoraPair:
    """One adapted tensor: A (r, n_in), B (n_out, r), float32, updated in place by the optimizer."""

    a: np.ndarray
    b: np.ndarray

    @property
    def rank(self) -> int:
        return self.a.shape[0]


@dataclass
class LoraSet:
    """All adapters of a model, keyed by base tensor name, with one alpha for all (alpha/r per pair)."""

    alpha: float
    pairs: dict[str, LoraPair] = field(default_factory=dict)

    def scale(self, name: str) -> float:
        return self.alpha / self.pairs[name].rank

    def get(self, name: str) -> LoraPair | None:
        return self.pairs.get(name)

    def parameters(self) -> dict[str, np.ndarray]:
        """Flat parameter dict in a fixed order (the checkpoint's), names '<base>.lora_a/.lora_b'."""
        params = {}
        for name, pair in self.pairs.items():
            params[name + ".lora_a"] = pair.a
            params[name + ".lora_b"] = pair.b
        return params

    def n_parameters(self) -> int:
        return sum(p.size for p in self.parameters().values())


def target_shapes(model, ranks: dict[str, int]) -> dict[str, tuple[int, int, int]]:
    """name -> (rank, n_out, n_in) for every tensor whose kind has rank > 0, in checkpoint order
    (token_embd, output_norm, output, then per layer in LAYER_KINDS order)."""
    hp = model.hparams
    shapes: dict[str, tuple[int, int, int]] = {}

    def add(kind: str, layer: int | None, n_out: int, n_in: int) -> None:
        if ranks.get(kind, 0) > 0:
            shapes[tensor_name(kind, layer)] = (ranks[kind], n_out, n_in)

    add("token_embd", None, hp.n_vocab, hp.n_embd)
    add("output_norm", None, 1, hp.n_embd)
    if not model.tied_embeddings:
        add("output", None, hp.n_vocab, hp.n_embd)
    for layer_index, layer in enumerate(model.layers):
        for kind in LAYER_KINDS:
            if kind in NORM_KINDS:
                add(kind, layer_index, 1, hp.n_embd)
            else:
                w = getattr(layer, kind)
                add(kind, layer_index, w.n_out, w.n_in)
    return shapes


def init_lora(model, ranks: dict[str, int], alpha: float, seed: int) -> LoraSet:
    """Fresh adapters: A ~ N(0, 1/n_in) clamped to ±2σ-like bounds (seeded), B = 0."""
    rng = np.random.default_rng(seed)
    lora = LoraSet(alpha=float(alpha))
    for name, (rank, n_out, n_in) in target_shapes(model, ranks).items():
        std = 1.0 / np.sqrt(n_in)
        a = np.clip(rng.normal(0.0, std, size=(rank, n_in)), -2 * std, 2 * std).astype(np.float32)
        lora.pairs[name] = LoraPair(a=a, b=np.zeros((n_out, rank), np.float32))
    return lora
