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
                wrap: bool = True, start_with_bos: bool = True):
    """Rows of packed samples from shuffled position ``first`` on (wrapping around the epoch when
    ``wrap``, else stopping after the last sample). Each sample is laid out as make_batch lays out
    a row: BOS first (or, without ``start_with_bos``, its own first token as input only).

    Returns inputs, targets, positions, first_key (int32 [B, T] each) and the samples used."""
    inputs = np.full((n_batch, n_ctx), eos_id, np.int32)     # [B, T]
    targets = np.full((n_batch, n_ctx), IGNORE, np.int32)    # [B, T]
    positions = np.zeros((n_batch, n_ctx), np.int32)         # [B, T]
    first_key = np.zeros((n_batch, n_ctx), np.int32)         # [B, T]
    end_target = eos_id if samples.trainable is None else IGNORE
    used, count = 0, samples.count
    row, at = 0, 0  # the row being filled and its first free position
    lead = 1 if start_with_bos else 0
    while row < n_batch and (wrap or first + used < count):
        idx = shuffled.order[(first + used) % count]
        begin, size = int(samples.begins[idx]), int(samples.sizes[idx])
        length = min(size + lead, n_ctx)  # (BOS +) the tokens, cut to one row
        if at + length > n_ctx:  # does not fit: the rest of this row is padding
            _pad(positions[row], first_key[row], at)
            row, at = row + 1, 0
            continue
        _place(samples, begin, size, length, end_target, bos_id if lead else None, inputs[row], targets[row], at)
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


def _place(samples, begin: int, size: int, length: int, end_target: int, bos_id: int | None, inputs,
           targets, at: int) -> None:
    """One sample at row positions [at, at + length): inputs BOS (unless bos_id is None) then its
    tokens, targets the next token of each, the end target after the last (when not cut)."""
    tokens = samples.tokens[begin: begin + size]
    wanted = tokens if samples.trainable is None else \
        np.where(samples.trainable[begin: begin + size], tokens, IGNORE)
    if bos_id is not None:
        tokens, wanted = np.concatenate([[bos_id], tokens]), np.concatenate([wanted, [end_target]])
    else:
        wanted = np.concatenate([wanted[1:], [end_target]])
    inputs[at: at + length] = tokens[:length]
    targets[at: at + length] = wanted[:length]


def _pad(positions, first_key, at: int) -> None:
    """Padding from ``at`` to the row's end: its own segment, never attended from a sample."""
    n = len(positions) - at
    if n > 0:
        positions[at:] = np.arange(n, dtype=np.int32)
        first_key[at:] = at
