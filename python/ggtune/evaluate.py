"""Perplexity over a text, and the `ggtune perplexity` command.

The text's tokens are cut into consecutive chunks of `ctx` tokens (the last may be shorter); each
chunk is scored on its own (every token after the first is predicted from those before it in its
chunk), full chunks in batches. The result is the mean cross-entropy over every prediction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np

from .model import Model

DEFAULT_BATCH_TOKENS = 512
MAX_EXP_ARGUMENT = 709.0  # exp() of more overflows a float64: no working model is that far off  # tokens per forward batch, like llama.cpp's n_batch


@dataclass
class PerplexityResult:
    mean_ce: float  # nats per predicted token
    n_predictions: int

    @property
    def perplexity(self) -> float:
        return math.exp(self.mean_ce)


def chunk_tokens(tokens: Sequence[int], ctx: int) -> list[np.ndarray]:
    """Consecutive chunks of ctx tokens; a last chunk shorter than 2 tokens predicts nothing and is dropped."""
    ids = np.asarray(tokens, dtype=np.int32)
    return [ids[i:i + ctx] for i in range(0, len(ids), ctx) if len(ids[i:i + ctx]) >= 2]


def perplexity(model: Model, tokens: Sequence[int], ctx: int, batch_tokens: int = DEFAULT_BATCH_TOKENS,
               progress: Optional[Callable[[int, int], None]] = None) -> PerplexityResult:
    """Mean next-token cross-entropy of `tokens` scored in chunks of ctx; progress(done, total) in tokens."""
    if ctx < 2:
        raise ValueError(f"ctx: need at least 2 tokens per chunk, got {ctx}")
    chunks = chunk_tokens(tokens, ctx)
    if not chunks:
        raise ValueError("text: fewer than 2 tokens, nothing to predict")
    per_batch = max(1, batch_tokens // ctx)
    total = sum(len(c) for c in chunks)
    loss_sum, count, done = 0.0, 0, 0
    i = 0
    while i < len(chunks):
        # equal-length chunks share a batch; only the last chunk can be shorter
        group = [c for c in chunks[i:i + per_batch] if len(c) == len(chunks[i])]
        losses = model.token_losses(np.stack(group))
        loss_sum += float(losses.sum(dtype=np.float64))
        count += losses.size
        done += sum(len(c) for c in group)
        i += len(group)
        if progress:
            progress(done, total)
    if not math.isfinite(loss_sum) or loss_sum / count > MAX_EXP_ARGUMENT:
        raise ValueError(non_finite_output_message(model))
    return PerplexityResult(loss_sum / count, count)


def non_finite_output_message(model) -> str:
    adapters = f" or its adapters ({len(model.lora)} tensors)" if model.lora else ""
    return (f"{model.weights.path}: the model computes non-finite logits (NaN or infinity) or an "
            f"overflowing perplexity: its weights"
            f"{adapters} hold values no trained model has; refusing to report a result")


def add_cli(subparsers) -> None:
    p = subparsers.add_parser("perplexity", help="mean cross-entropy and perplexity of a model on a text")
    p.add_argument("--model", "-m", required=True, help="GGUF model (llama, qwen2, qwen3 or gemma3)")
    p.add_argument("--text", "-f", required=True, help="UTF-8 text file")
    p.add_argument("--ctx", "-c", type=int, default=512, help="tokens per scored chunk (default 512)")
    p.add_argument("--lora", action="append", default=[], help="GGUF LoRA adapter (repeatable)")
    p.add_argument("--lora-scale", type=float, action="append", default=[],
                   help="scale of the matching --lora (default 1.0)")
    p.add_argument("--threads", "-t", type=int, default=None, help="kernel threads (default: all cores)")
    p.set_defaults(func=run)


def run(args) -> int:
    from .cli import load_model_from_args, require_file
    from .data import read_text
    from .options import PERPLEXITY_RANGES, check_ranges
    from .progress import Progress

    check_ranges(args, PERPLEXITY_RANGES)
    require_file(args.text, "--text")
    text = read_text(args.text, "the text")
    model = load_model_from_args(args)
    ctx = min(args.ctx, model.hparams.n_ctx_train)
    tokens = model.tokenize(text)
    bar = Progress(0, "perplexity")
    result = perplexity(model, tokens, ctx, progress=bar.update)
    bar.close()
    print(f"tokens {len(tokens)}, ctx {ctx}, predictions {result.n_predictions}")
    print(f"mean cross-entropy {result.mean_ce:.4f} nats, perplexity {result.perplexity:.4f}")
    return 0
