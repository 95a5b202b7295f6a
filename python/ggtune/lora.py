"""LoRA parameters: which tensors are adapted, their ranks, initialisation and layout.

Orientation (the modern one, as PEFT and the GGUF adapter store it): for a base weight W of
numpy shape (n_out, n_in) the pair is A (r, n_in) and B (n_out, r), and the adapted weight is

    W' = W + s · (B @ A),   s = alpha / r   (alpha / sqrt(r) with rslora, see lora_options.py).

Norm weights are vectors (n_embd,): treated as a (1, n_embd) matrix, so B is (1, r).
A starts from a seeded random draw and B at zero, so an untrained adapter changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .lora_options import lora_scale
from .model import LoraPair  # a (r, n_in), b (n_out, r), scale

from .names import ALL_KINDS, NORM_KINDS, kind_of, lora_base_names


@dataclass
class LoraSet:
    """All adapters of a model, keyed by base tensor name, with one alpha for all (alpha/r per pair,
    alpha/sqrt(r) with rslora)."""

    alpha: float
    pairs: dict[str, LoraPair] = field(default_factory=dict)
    rslora: bool = False

    def scale(self, name: str) -> float:
        return self.pairs[name].scale

    def add(self, name: str, a: np.ndarray, b: np.ndarray) -> None:
        """Adopts (a, b) as float32 C-contiguous arrays with scale alpha / r (alpha / sqrt(r) with rslora)."""
        a, b = (np.ascontiguousarray(t, np.float32) for t in (a, b))
        self.pairs[name] = LoraPair(a, b, lora_scale(self.alpha, a.shape[0], self.rslora))

    def ranks_by_kind(self) -> dict[str, int]:
        """Every kind of ALL_KINDS -> its rank (0 where nothing is adapted)."""
        ranks = dict.fromkeys(ALL_KINDS, 0)
        for name, pair in self.pairs.items():
            ranks[kind_of(name)] = pair.a.shape[0]
        return ranks

    def get(self, name: str) -> LoraPair | None:
        return self.pairs.get(name)

    def parameters(self) -> dict[str, np.ndarray]:
        """Flat parameter dict in a fixed order (the checkpoint's), names '<base>.lora_a/.lora_b'."""
        return flat_arrays(self.pairs)

    def n_parameters(self) -> int:
        return sum(p.size for p in self.parameters().values())


def flat_arrays(pairs: dict) -> dict[str, np.ndarray]:
    """{base: pair with .a and .b} -> {'<base>.lora_a': a, '<base>.lora_b': b}, in the same order."""
    flat = {}
    for name, pair in pairs.items():
        flat[name + ".lora_a"] = pair.a
        flat[name + ".lora_b"] = pair.b
    return flat


def target_shapes(weights, ranks: dict[str, int]) -> dict[str, tuple[int, int, int]]:
    """name -> (rank, n_out, n_in) for every tensor of `weights` (gguf_io.ModelWeights) whose kind
    has rank > 0, in checkpoint order (token_embd, output_norm, output, then per layer)."""
    hp, matrices = weights.hparams, weights.weights_by_name()
    shapes: dict[str, tuple[int, int, int]] = {}
    for name in lora_base_names(hp.n_layer, ranks):
        rank = ranks[kind_of(name)]
        if kind_of(name) in NORM_KINDS:
            shapes[name] = (rank, 1, hp.n_embd)
        elif name in matrices:  # output.weight is absent on tied-embedding models
            shapes[name] = (rank, matrices[name].n_out, matrices[name].n_in)
    return shapes


def init_lora(weights, ranks: dict[str, int], alpha: float, seed: int, rslora: bool = False) -> LoraSet:
    """Fresh adapters: A ~ N(0, 1/n_in) clamped at two standard deviations (seeded), B = 0."""
    rng = np.random.default_rng(seed)
    lora = LoraSet(alpha=float(alpha), rslora=rslora)
    for name, (rank, n_out, n_in) in target_shapes(weights, ranks).items():
        std = 1.0 / np.sqrt(n_in)
        a = np.clip(rng.normal(0.0, std, size=(rank, n_in)), -2 * std, 2 * std)
        lora.add(name, a, np.zeros((n_out, rank)))
    return lora
