"""Held-out evaluation during training: the validation set, its loss, early stopping and the best adapter.

The validation set comes from ``--val-data`` (read like the training data) or ``--val-split F``
(a seeded fraction of the training samples held out). Plain text without ``--sample-start`` has one
sample starting at every token, so a random subset would overlap the training windows: there the
last F of the tokens are held out instead, as consecutive windows.

Evaluation is the training graph's forward without gradients (the chunked head, so the [T, V]
logits never exist at once), over every held-out sample in a fixed order, one sample per row (or
packed with ``--pack``). The tokens scored are those training takes its loss on (every token of
plain text, the answers of chat, completion and instruction data), never padding: the figure is the
mean cross-entropy per held-out token, comparable with the training loss, and the perplexity its
exponential.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from . import data as data_io

SPLIT_SEED = 0x5EED  # the split's seed when --seed is -1: a resumed run must hold out the same samples


@dataclass
class ValidationResult:
    loss: float  # mean cross-entropy, nats per scored token
    n_tokens: int

    @property
    def perplexity(self) -> float:
        return math.exp(min(self.loss, 700.0))


def split_samples(samples: data_io.Samples, fraction: float, seed: int, *, n_ctx: int,
                  contiguous_text: bool) -> tuple[data_io.Samples, data_io.Samples, str]:
    """(training samples, held-out samples, a note saying what was held out)."""
    if contiguous_text:
        return _split_text_tail(samples, fraction, n_ctx)
    count = samples.count
    n_val = max(1, int(round(fraction * count)))
    if n_val >= count:
        raise data_io.DataError(f"--val-split {fraction:g}: {samples.source} has {count} samples, too few to "
                                "hold out a fraction and still train; lower --val-split or pass --val-data")
    rng = np.random.default_rng(SPLIT_SEED if seed < 0 else seed)
    held = np.zeros(count, bool)
    held[rng.choice(count, n_val, replace=False)] = True
    note = f"validation: {n_val} of {count} samples held out (--val-split {fraction:g}, seeded)"
    return _subset(samples, ~held), _subset(samples, held), note


def _subset(samples: data_io.Samples, keep: np.ndarray) -> data_io.Samples:
    # the token array is shared: a sample is only its (begin, size) into it
    return data_io.Samples(source=samples.source, tokens=samples.tokens, begins=samples.begins[keep],
                           sizes=samples.sizes[keep], trainable=samples.trainable)


def _split_text_tail(samples: data_io.Samples, fraction: float, n_ctx: int):
    n = len(samples.tokens)
    cut = int(n * (1.0 - fraction))
    if cut < n_ctx + 1 or n - cut < 2:
        raise data_io.DataError(f"--val-split {fraction:g}: {samples.source} has {n} tokens; holding out "
                                f"the last {n - cut} leaves fewer than one context (n_ctx={n_ctx}) to train on")
    train_begins = np.concatenate([[0], np.arange(1, max(cut - n_ctx, 1))]).astype(np.int64)
    train = data_io.Samples(source=samples.source, tokens=samples.tokens, begins=train_begins,
                            sizes=np.full(len(train_begins), n_ctx, np.int64))
    val_begins = np.arange(cut, n - 1, n_ctx, dtype=np.int64)
    val = data_io.Samples(source=samples.source, tokens=samples.tokens, begins=val_begins,
                          sizes=np.minimum(n_ctx, n - val_begins).astype(np.int64))
    note = (f"validation: the last {n - cut} of {n} tokens held out as {len(val_begins)} windows "
            f"(--val-split {fraction:g}; plain text is split at a token, not at random)")
    return train, val, note


def non_overlapping(samples: data_io.Samples, n_ctx: int) -> data_io.Samples:
    """Plain text read as training data has a window at every token; scoring needs each token once."""
    keep = np.zeros(samples.count, bool)
    keep[::n_ctx] = True
    return _subset(samples, keep)


class Evaluator:
    """Mean held-out cross-entropy under the current adapters; ``graph`` is the training Graph."""

    def __init__(self, graph, samples: data_io.Samples, *, n_ctx: int, n_batch: int, bos_id: int,
                 eos_id: int, pack: bool = False, start_with_bos: bool = True):
        self.graph = graph
        # the tokens training takes its loss on (all of plain text, the answers of chat and
        # completion data), never the padding: text data would otherwise score its EOS padding
        mask = samples.trainable if samples.trainable is not None else np.ones(len(samples.tokens), bool)
        scored = data_io.Samples(source=samples.source, tokens=samples.tokens, begins=samples.begins,
                                 sizes=samples.sizes, trainable=mask)
        layout = dict(pack=pack, start_with_bos=start_with_bos)  # rows laid out as training lays them
        self.batches = _fixed_batches(scored, n_ctx, n_batch, bos_id, eos_id, layout)
        self.n_samples = samples.count

    def evaluate(self) -> ValidationResult:
        loss_sum, n_scored = 0.0, 0
        for batch in self.batches:
            loss, kept = self.graph.loss_and_grads(batch.inputs, batch.targets, None,
                                                   **data_io.attention_layout(batch))
            loss_sum += loss
            n_scored += kept
        return ValidationResult(loss=loss_sum / max(n_scored, 1), n_tokens=n_scored)


def _fixed_batches(samples: data_io.Samples, n_ctx: int, n_batch: int, bos_id: int, eos_id: int,
                   layout: dict) -> list[data_io.Batch]:
    """Every sample once, in file order: the batches are built once and reused at every evaluation."""
    in_order = data_io.Shuffled(order=np.arange(samples.count, dtype=np.int64),
                                offsets=np.zeros(samples.count, np.int64), next_rng_state="")
    batches, first = [], 0
    while first < samples.count:
        rows = n_batch if layout["pack"] else min(n_batch, samples.count - first)  # unpacked: a row a sample
        opts = data_io.BatchOptions(n_ctx=n_ctx, n_batch=rows, **layout)
        batch = data_io.build_batch(samples, in_order, first, opts, bos_id, eos_id, wrap=False)
        batches.append(batch)
        first += batch.used_samples
    return batches


class BestTracker:
    """The best validation loss so far and how many evaluations have not beaten it (--early-stop K)."""

    def __init__(self, patience: int, best: float | None = None, since_best: int = 0):
        self.patience, self.best, self.since_best = patience, best, since_best

    def update(self, loss: float) -> bool:
        """Records an evaluation; True when it is the best so far."""
        if self.best is None or loss < self.best:
            self.best, self.since_best = loss, 0
            return True
        self.since_best += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.since_best >= self.patience


def best_name(lora_out: str, pattern_it: str = "ITERATION") -> str:
    """The best adapter's file: the iteration placeholder replaced by BEST (like LATEST), or
    ``-BEST`` before the extension when the name has no placeholder."""
    if pattern_it and pattern_it in lora_out:
        return lora_out.replace(pattern_it, "BEST", 1)
    stem, ext = _split_ext(lora_out)
    return f"{stem}-BEST{ext}"


def _split_ext(path: str) -> tuple[str, str]:
    import os

    return os.path.splitext(path)


def check_watch_options(opts) -> None:
    """ValueError naming the option for validation, metrics, packing and LoRA values that cannot work."""
    import os

    from .lora_options import parse_targets

    if not 0.0 <= opts.val_split < 1.0:
        raise ValueError(f"--val-split: expected a fraction in [0, 1), got {opts.val_split}")
    if opts.val_split and opts.val_data:
        raise ValueError("--val-split and --val-data: give one source of validation data, not both")
    if opts.val_data and not os.path.isfile(opts.val_data):
        raise ValueError(f"--val-data: {opts.val_data}: no such file")
    for name in ("eval_every", "early_stop"):
        if getattr(opts, name) < 0:
            raise ValueError(f"--{name.replace('_', '-')}: expected >= 0, got {getattr(opts, name)}")
    if opts.early_stop and not (opts.val_data or opts.val_split):
        raise ValueError("--early-stop: needs validation data (--val-data or --val-split)")
    if opts.early_stop and not opts.eval_every:
        raise ValueError("--early-stop: needs --eval-every N to evaluate during training")
    if not 0.0 <= opts.lora_dropout < 1.0:
        raise ValueError(f"--lora-dropout: expected a probability in [0, 1), got {opts.lora_dropout}")
    if opts.lora_targets:
        parse_targets(opts.lora_targets)
    if opts.pack and (opts.fill_with_next_samples or opts.sample_random_offsets):
        other = "--fill-with-next-samples" if opts.fill_with_next_samples else "--sample-random-offsets"
        raise ValueError(f"--pack and {other}: packing places whole samples itself; use one of them")


def held_out(opts, samples: data_io.Samples, load) -> tuple[data_io.Samples, data_io.Samples | None, list[str]]:
    """(training samples, validation samples or None, notes) for --val-data / --val-split;
    ``load(path)`` reads a file like the training data."""
    contiguous = not opts.sample_start and samples.trainable is None and _every_token(samples)
    if opts.val_split:
        train, val, note = split_samples(samples, opts.val_split, opts.seed, n_ctx=opts.ctx,
                                         contiguous_text=contiguous)
        return train, val, [note]
    if opts.val_data:
        val = load(opts.val_data)
        if val.trainable is None and not opts.sample_start and _every_token(val):
            val = non_overlapping(val, opts.ctx)
        return samples, val, [*val.notes, f"validation: {val.count} samples from {opts.val_data}"]
    return samples, None, []


def _every_token(samples: data_io.Samples) -> bool:
    """Plain text without --sample-start: a window starting at every token."""
    return samples.count > 1 and int(samples.begins[1] - samples.begins[0]) == 1
