"""A one-line progress bar on stderr (redrawn in place on a terminal, plain lines otherwise)."""

from __future__ import annotations

import sys
import time


def format_seconds(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class Progress:
    """`update(done, total=None, **fields)` redraws `label [#####.....] done/total  k=v ...  ETA mm:ss`;
    a total given to update() replaces the one given at construction."""

    def __init__(self, total: int, label: str, *, enabled: bool = True, stream=None, width: int = 24):
        self.total, self.label, self.enabled, self.width = max(total, 1), label, enabled, width
        self.stream = stream if stream is not None else sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.start = time.perf_counter()
        self._last_line = ""

    def update(self, done: int, total: int | None = None, **fields) -> None:
        if total is not None:
            self.total = max(total, 1)
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self.start
        eta = elapsed / done * (self.total - done) if done else 0.0
        filled = int(self.width * done / self.total)
        bar = "#" * filled + "." * (self.width - filled)
        extra = "  ".join(f"{k}={_fmt(v)}" for k, v in fields.items())
        line = f"{self.label} [{bar}] {done}/{self.total}  {extra}  ETA {format_seconds(eta)}"
        if self.tty:
            self.stream.write("\r" + line.ljust(len(self._last_line)))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
        self._last_line = line

    def close(self) -> None:
        if self.enabled and self.tty and self._last_line:
            self.stream.write("\n")
            self.stream.flush()


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
