"""`ggtune demo`: the whole product in one command.

Fetches SmolLM2-135M-Instruct into the cache, finetunes rank-4 adapters briefly on the first 80%
(by tokens) of a text the package ships (the Apache-2.0 licence), and prints the held-out mean
cross-entropy and perplexity of the last 20% before and after, then where the adapter went. The
held-out part is also the run's validation data (scored every few iterations), so the metrics log
beside the adapter has both curves; with matplotlib installed they are drawn into a PNG too.
"""

from __future__ import annotations

import os
import tempfile
from importlib import resources

from .evaluate import perplexity
from .fetch import smollm2_path
from .model import load_model
from .trainer import finetune


def split_by_tokens(model, text: str, fraction: float) -> tuple[str, list[int]]:
    """(text of the first `fraction` of the tokens, the remaining token ids)."""
    tokens = model.tokenize(text)
    cut = int(len(tokens) * fraction)
    return model.detokenize(tokens[:cut]), tokens[cut:]


def heldout_cross_entropy(model_path: str, heldout: list[int], ctx: int, lora: str | None = None) -> float:
    """Mean cross-entropy over non-overlapping ctx-token windows of `heldout`."""
    model = load_model(model_path, lora=[(lora, 1.0)] if lora else None)
    return perplexity(model, heldout, ctx).mean_ce


def run_demo(iterations: int = 30, lora_out: str = "ggtune-demo-lora.gguf", ctx: int = 64,
             text_path: str | None = None, model_path: str | None = None, verbose: bool = True) -> dict:
    model_path = model_path or str(smollm2_path(verbose=verbose))
    if text_path is None:
        text = resources.files("ggtune").joinpath("data/demo.txt").read_text(encoding="utf-8")
    else:
        with open(text_path, encoding="utf-8") as f:
            text = f.read()
    train_text, heldout = split_by_tokens(load_model(model_path), text, 0.8)
    before = heldout_cross_entropy(model_path, heldout, ctx)
    print(f"held-out cross-entropy before: {before:.4f} nats (perplexity {_exp(before):.2f})", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        train_file, val_file = os.path.join(tmp, "train.txt"), os.path.join(tmp, "heldout.txt")
        with open(train_file, "w", encoding="utf-8") as f:
            f.write(train_text)
        with open(val_file, "w", encoding="utf-8") as f:
            f.write(load_model(model_path).detokenize(heldout))
        result = finetune(model_path, train_file, lora_out=lora_out, checkpoint_in="", checkpoint_out="",
                          ctx=ctx, batch=4, lora_r=4, adam_iter=iterations, adam_alpha=2e-3, warmup=0,
                          adam_decay=0.0, seed=1, verbose=verbose, val_data=val_file,
                          eval_every=max(1, iterations // 6))
    after = heldout_cross_entropy(model_path, heldout, ctx, lora=lora_out)
    print(f"held-out cross-entropy after:  {after:.4f} nats (perplexity {_exp(after):.2f})")
    print(f"adapter written to {lora_out} (load it with llama.cpp --lora or ggtune --lora)")
    picture = _draw_curves(result.metrics_path)
    return {"before": before, "after": after, "result": result, "curves": picture}


def _draw_curves(metrics_path: str) -> str | None:
    """The training curves next to the metrics log, when matplotlib is there to draw them."""
    from .metrics import read_metrics
    from .plot import PlotUnavailable, plot_metrics

    if not metrics_path:
        return None
    picture = os.path.splitext(metrics_path.removesuffix(".metrics.jsonl"))[0] + "-curves.png"
    try:
        plot_metrics(read_metrics(metrics_path), picture, "ggtune demo: SmolLM2-135M on the Apache-2.0 licence")
    except PlotUnavailable:
        print(f"metrics in {metrics_path} (pip install 'ggtune[plot]' to draw them)")
        return None
    print(f"training curves drawn in {picture} (metrics in {metrics_path})")
    return picture


def _exp(x: float) -> float:
    import math

    return math.exp(x)


def add_cli(subparsers) -> None:
    p = subparsers.add_parser("demo", help="fetch SmolLM2, finetune it briefly on a bundled text, "
                                           "print held-out perplexity before and after")
    p.add_argument("--iterations", type=int, default=30, help="optimizer iterations (default 30)")
    p.add_argument("--lora-out", default="ggtune-demo-lora.gguf", help="adapter output path")
    p.add_argument("--text", default=None, help="train on this UTF-8 text instead of the bundled one")
    p.add_argument("--model", default=None, help="use this GGUF instead of fetching SmolLM2")
    p.set_defaults(func=_cli_demo)


def _cli_demo(args) -> int:
    run_demo(iterations=args.iterations, lora_out=args.lora_out, text_path=args.text, model_path=args.model)
    return 0
