"""LoRA dropout (``--lora-dropout P``): the adapter's input is dropped, the frozen path is not.

With dropout each adapted linear computes, in training only,

    Y = X·Wᵀ + s·((M ⊙ X)·Aᵀ)·Bᵀ,    M[t, i] = Bernoulli(1 - P) / (1 - P)

as PEFT does (its ``lora_dropout`` acts on the adapter's input). Every adapter draws its own mask.
The mask is a pure function of (seed, iteration, pass within the iteration, tensor name), never of
an RNG's running state: the checkpointed backward recomputes exactly the forward's mask, and a run
resumed from a checkpoint draws the masks an uninterrupted run would have drawn.
"""

from __future__ import annotations

import zlib

import numpy as np


class LoraDropout:
    """Dropout probability and seed of a run; ``for_pass`` gives the masks of one forward/backward."""

    def __init__(self, p: float, seed: int):
        if not 0.0 <= p < 1.0:
            raise ValueError(f"--lora-dropout: expected a probability in [0, 1), got {p}")
        self.p, self.seed = float(p), int(seed) & 0xFFFFFFFF

    def for_pass(self, iteration: int, pass_index: int) -> "DropoutPass | None":
        return DropoutPass(self.p, (self.seed, iteration, pass_index)) if self.p > 0 else None


class DropoutPass:
    def __init__(self, p: float, key: tuple[int, int, int]):
        self.p, self.key = p, key

    def mask(self, name: str, shape: tuple[int, int]) -> np.ndarray:
        """float32 [T, n_in]: 0 where dropped, 1/(1-p) where kept (the expectation stays X)."""
        entropy = [*self.key, zlib.crc32(name.encode())]
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(entropy)))
        keep = rng.random(shape, dtype=np.float32) >= self.p
        return keep.astype(np.float32) * np.float32(1.0 / (1.0 - self.p))
