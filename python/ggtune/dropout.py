"""LoRA dropout (``--lora-dropout P``): the adapter's input is dropped, the frozen path is not.

With dropout each adapted linear computes, in training only,

    Y = X·Wᵀ + s·((M ⊙ X)·Aᵀ)·Bᵀ,    M[t, i] = Bernoulli(1 - P) / (1 - P)

as PEFT does (its ``lora_dropout`` acts on the adapter's input). Every adapter draws its own mask.
The mask of each batch row is a pure function of (seed, iteration, pass within the iteration, tensor
name, row of the global batch), never of an RNG's running state: the checkpointed backward
recomputes exactly the forward's mask, a run resumed from a checkpoint draws the masks an
uninterrupted run would have drawn, and data-parallel ranks (each holding some rows) draw the
masks one process would.
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

    def for_pass(self, iteration: int, pass_index: int, first_row: int = 0,
                 row_tokens: int | None = None) -> "DropoutPass | None":
        """The masks of one forward/backward whose T tokens are rows first_row, first_row + 1, ...
        of the global batch, row_tokens each (None: the T tokens are one row)."""
        if self.p <= 0:
            return None
        return DropoutPass(self.p, (self.seed, iteration, pass_index), first_row, row_tokens)


class DropoutPass:
    def __init__(self, p: float, key: tuple[int, int, int], first_row: int = 0, row_tokens: int | None = None):
        self.p, self.key, self.first_row, self.row_tokens = p, key, first_row, row_tokens

    def mask(self, name: str, shape: tuple[int, int]) -> np.ndarray:
        """float32 [T, n_in]: 0 where dropped, 1/(1-p) where kept (the expectation stays X)."""
        T, n_in = shape
        S = self.row_tokens or T
        tensor = zlib.crc32(name.encode())
        keep = np.empty(shape, bool)
        for r in range(T // S):  # [S, n_in] per row of the global batch
            entropy = [*self.key, tensor, self.first_row + r]
            rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(entropy)))
            keep[r * S:(r + 1) * S] = rng.random((S, n_in), dtype=np.float32) >= self.p
        return keep.astype(np.float32) * np.float32(1.0 / (1.0 - self.p))
