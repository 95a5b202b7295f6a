"""Packing: several short samples in one ctx row, each seeing only itself.

Without packing a row holds one sample and the rest is padding: a chat dataset of 60-token
conversations trained at ctx 512 spends most of its compute on padding. A packed row holds
consecutive samples (in shuffled order), each laid out exactly as it would be alone at the start of
a row,

    inputs  [BOS, s0 .. s(n-1)]     targets [s0 .. s(n-1), end]     positions [0 .. n]

where ``end`` is EOS for plain text (the original's first padding target) and no target for chat
data. Two per-token arrays keep the samples apart: ``positions`` restart at 0 in each sample
(rope), and ``first_key[b, i]`` is the row index where token i's sample starts, so attention lets
query (b, i) see keys first_key[b, i] <= j <= i only. Each sample's loss and gradient are then those
of the same sample trained alone (tests/test_packing.py checks this to float32 rounding).

A sample that does not fit the rest of a row starts the next row; one longer than a row is cut, as
unpacked. The tail of a row is padding (no targets) in a segment of its own.
"""

from __future__ import annotations

import numpy as np

IGNORE = -1


def packed_rows(samples, shuffled, first: int, n_ctx: int, n_batch: int, bos_id: int, eos_id: int,
                wrap: bool = True):
    """Rows of packed samples from shuffled position ``first`` on (wrapping around the epoch when
    ``wrap``, else stopping after the last sample).

    Returns inputs, targets, positions, first_key (int32 [B, T] each) and the samples used."""
    inputs = np.full((n_batch, n_ctx), eos_id, np.int32)     # [B, T]
    targets = np.full((n_batch, n_ctx), IGNORE, np.int32)    # [B, T]
    positions = np.zeros((n_batch, n_ctx), np.int32)         # [B, T]
    first_key = np.zeros((n_batch, n_ctx), np.int32)         # [B, T]
    end_target = eos_id if samples.trainable is None else IGNORE
    used, count = 0, samples.count
    row, at = 0, 0  # the row being filled and its first free position
    while row < n_batch and (wrap or first + used < count):
        idx = shuffled.order[(first + used) % count]
        begin, size = int(samples.begins[idx]), int(samples.sizes[idx])
        length = min(size + 1, n_ctx)  # BOS + the tokens, cut to one row
        if at + length > n_ctx:  # does not fit: the rest of this row is padding
            _pad(positions[row], first_key[row], at)
            row, at = row + 1, 0
            continue
        _place(samples, begin, size, length, end_target, bos_id, inputs[row], targets[row], at)
        positions[row, at: at + length] = np.arange(length, dtype=np.int32)
        first_key[row, at: at + length] = at
        used += 1
        at += length
        if at == n_ctx:
            row, at = row + 1, 0
    if row < n_batch:
        _pad(positions[row], first_key[row], at)
        for rest in range(row + 1, n_batch):
            _pad(positions[rest], first_key[rest], 0)
    return inputs, targets, positions, first_key, used


def _place(samples, begin: int, size: int, length: int, end_target: int, bos_id: int, inputs, targets,
           at: int) -> None:
    """One sample at row positions [at, at + length): inputs BOS then its tokens, targets its tokens
    then the end target (when the sample was not cut)."""
    tokens = samples.tokens[begin: begin + min(size, length)]
    inputs[at] = bos_id
    inputs[at + 1: at + length] = tokens[: length - 1]
    if samples.trainable is not None:
        tokens = np.where(samples.trainable[begin: begin + len(tokens)], tokens, IGNORE)
    targets[at: at + len(tokens)] = tokens
    if len(tokens) < length:
        targets[at + len(tokens)] = end_target


def _pad(positions, first_key, at: int) -> None:
    """Padding from ``at`` to the row's end: its own segment, never attended from a sample."""
    n = len(positions) - at
    if n > 0:
        positions[at:] = np.arange(n, dtype=np.int32)
        first_key[at:] = at
