"""The metrics log of a training run: one JSON object per optimizer iteration (JSON Lines).

Each line is written and flushed as soon as its iteration ends, so ``tail -f`` and a crashed run
both see every finished iteration. A fresh run starts the file anew; a resumed run appends, so one
file holds the whole history of an adapter. Keys (docs/formats.md):

    iteration      global optimizer iteration (1 for the first step of a fresh run)
    epoch          epochs completed so far, fractional: samples consumed / samples per epoch
    samples        training samples consumed so far (a packed row holds several)
    loss           mean training cross-entropy of the step (nats per trained token)
    lr             learning rate the step used
    grad_norm      global L2 norm of the gradient before clipping
    tokens_per_s   positions processed per second (ctx x batch x grad_acc / step time)
    elapsed        seconds since this run started
    val_loss, val_ppl  held-out mean cross-entropy and perplexity, on iterations that evaluated

A fresh run with validation data starts with one record of iteration 0 holding only ``elapsed``,
``val_loss`` and ``val_ppl``: the base model's held-out loss, before any step.
"""

from __future__ import annotations

import json
import math
import os
from typing import IO, Iterator

METRICS_SUFFIX = ".metrics.jsonl"


def default_metrics_path(lora_out: str, pattern_it: str = "ITERATION") -> str:
    """The log next to the adapter: ``ggml-lora-ITERATION-f32.gguf`` -> ``ggml-lora-f32.metrics.jsonl``."""
    directory, name = os.path.split(lora_out)
    if pattern_it:
        name = name.replace(pattern_it, "")
    for doubled in ("--", "__", "..", "-.", "_."):
        while doubled in name:
            name = name.replace(doubled, doubled[-1])
    stem = os.path.splitext(name)[0].strip("-_.") or "ggtune"
    return os.path.join(directory, stem + METRICS_SUFFIX)


def resolve_metrics_path(metrics: str | None, lora_out: str, pattern_it: str) -> str:
    """None -> the default next to the adapter; '' -> '' (no log); anything else as given."""
    if metrics is None:
        return default_metrics_path(lora_out, pattern_it) if lora_out else ""
    return metrics


class MetricsLog:
    """Appends one JSON line per record; a no-op when the path is ''."""

    def __init__(self, path: str, *, append: bool):
        self.path = path
        self._file: IO[str] | None = None
        if path:
            try:
                os.makedirs(os.path.dirname(path) or ".", exist_ok=True)  # as the adapter's directory is
                self._file = open(path, "a" if append else "w", encoding="utf-8")
            except OSError as e:
                raise ValueError(f"--metrics {path}: cannot open for writing: {e.strerror}") from None

    def write(self, record: dict) -> None:
        if self._file is None:
            return
        self._file.write(json.dumps({k: _json_number(v) for k, v in record.items()}) + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> "MetricsLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _json_number(value):
    """NaN and infinities are not JSON: written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def read_metrics(path: str) -> list[dict]:
    """Every record of a metrics log; ValueError naming the file and line for a bad one. A last line
    cut short (a run killed mid-write) is skipped."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().split("\n")
    except OSError as e:
        raise ValueError(f"{path}: cannot read the metrics log: {e.strerror}") from None
    records = []
    for number, line in _numbered(lines):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            if number == len(lines) or (number == len(lines) - 1 and not lines[-1]):
                continue  # the last line of a run that was killed while writing it
            raise ValueError(f"{path}:{number}: not a JSON metrics record ({e.msg})") from None
        if not isinstance(record, dict) or "iteration" not in record:
            raise ValueError(f"{path}:{number}: a metrics record needs an 'iteration'")
        records.append(record)
    if not records:
        raise ValueError(f"{path}: the metrics log has no records")
    return records


def _numbered(lines: list[str]) -> Iterator[tuple[int, str]]:
    for number, line in enumerate(lines, start=1):
        if line.strip():
            yield number, line
