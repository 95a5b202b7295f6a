"""``ggtune plot METRICS.jsonl -o curves.png``: the training curves of a metrics log (metrics.py).

Three panels sharing the iteration axis: training loss (each iteration, and an exponential moving
average that shows the trend through the noise of small batches) with the validation loss where it
was computed; the learning rate; tokens per second. matplotlib is an optional dependency
(``pip install 'ggtune[plot]'``); without it the command says so and exits.
"""

from __future__ import annotations

import os

MISSING = "the plot needs matplotlib: pip install 'ggtune[plot]' (or pip install matplotlib)"


class PlotUnavailable(RuntimeError):
    """matplotlib is not installed."""


def smoothed(values: list[float], weight: float | None = None) -> list[float]:
    """Bias-corrected exponential moving average (TensorBoard's smoothing, debiased at the start);
    by default about a tenth of the run long (weight 0.9 at 100 points), so short runs still show."""
    if weight is None:
        weight = min(0.95, max(0.0, 1.0 - 10.0 / max(len(values), 1)))
    out, average = [], 0.0
    for i, v in enumerate(values, start=1):
        average = weight * average + (1 - weight) * v
        out.append(average / (1 - weight ** i))
    return out


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise PlotUnavailable(MISSING) from None
    matplotlib.use("Agg")  # files only: never needs a display
    import matplotlib.pyplot as plt

    return plt


def _series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    pairs = [(r["iteration"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
    return [p[0] for p in pairs], [float(p[1]) for p in pairs]


def last_run(records: list[dict]) -> list[dict]:
    """A log appended over resumes is one history; a restart from scratch in the same file would
    repeat iterations: keep, for each iteration, its latest record."""
    latest = {r["iteration"]: r for r in records}
    return [latest[k] for k in sorted(latest)]


def plot_metrics(records: list[dict], output: str, title: str = "") -> str:
    """Draws the curves of ``records`` into ``output`` (format from its extension); returns output."""
    from .atomic import atomic_path

    plt = _pyplot()
    records = last_run(records)
    fig, (ax_loss, ax_lr, ax_speed) = plt.subplots(3, 1, figsize=(8, 8), sharex=True,
                                                   gridspec_kw={"height_ratios": [3, 1, 1]})
    it, loss = _series(records, "loss")
    ax_loss.plot(it, loss, color="tab:blue", alpha=0.3, linewidth=1, label="training loss")
    ax_loss.plot(it, smoothed(loss), color="tab:blue", linewidth=2, label="training loss (smoothed)")
    val_it, val = _series(records, "val_loss")
    if val:
        ax_loss.plot(val_it, val, "o-", color="tab:orange", linewidth=2, markersize=4, label="validation loss")
        best = min(range(len(val)), key=val.__getitem__)
        ax_loss.annotate(f"best {val[best]:.3f}", (val_it[best], val[best]), textcoords="offset points",
                         xytext=(0, -14), ha="center", color="tab:orange", fontsize=8)
    ax_loss.set_ylabel("cross-entropy (nats)")
    ax_loss.legend(loc="upper right", fontsize=8)
    ax_loss.grid(alpha=0.3)
    ax_loss.set_title(title or "ggtune training")
    lr_it, lr = _series(records, "lr")
    ax_lr.plot(lr_it, lr, color="tab:green")
    ax_lr.set_ylabel("learning rate")
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    # From 0 (a cosine's first steps would otherwise look like a cliff) to a tenth above the peak
    # (a flat schedule's line would otherwise lie on the frame and vanish).
    ax_lr.set_ylim(0, 1.1 * max(lr) if len(lr) and max(lr) > 0 else 1.0)
    ax_lr.grid(alpha=0.3)
    sp_it, speed = _series(records, "tokens_per_s")
    ax_speed.plot(sp_it, speed, color="tab:purple")
    ax_speed.set_ylabel("tokens/s")
    ax_speed.set_xlabel("iteration")
    ax_speed.set_ylim(bottom=0)
    ax_speed.grid(alpha=0.3)
    fig.tight_layout()
    ext = os.path.splitext(output)[1].lstrip(".") or "png"
    with atomic_path(output) as tmp:
        fig.savefig(tmp, dpi=110, format=ext)
    plt.close(fig)
    return output


def add_cli(subparsers) -> None:
    p = subparsers.add_parser("plot", help="draw the curves of a training metrics log (needs matplotlib)",
                              description="Training loss (raw and smoothed), validation loss, learning rate "
                                          "and tokens/s of a metrics log written by ggtune finetune. "
                                          + MISSING.capitalize() + ".")
    p.add_argument("metrics", help="metrics log (JSON lines), e.g. ggml-lora-f32.metrics.jsonl")
    p.add_argument("-o", "--output", default="curves.png", help="image to write; the format follows the "
                                                                "extension (.png, .svg, .pdf; default curves.png)")
    p.add_argument("--title", default="", help="title above the loss panel (default: the log's name)")
    p.set_defaults(func=_cli_plot)


def _cli_plot(args) -> int:
    from .cli import CliError, require_file
    from .metrics import read_metrics

    require_file(args.metrics, "metrics")
    records = read_metrics(args.metrics)
    try:
        plot_metrics(records, args.output, args.title or os.path.basename(args.metrics))
    except PlotUnavailable as e:
        raise CliError(str(e), code=1) from None
    print(f"wrote {args.output} ({len(records)} iterations)")
    return 0
