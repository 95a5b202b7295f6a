"""Packing on short chat data: conversation tokens trained per second, one sample per row vs packed.

    PYTHONPATH=python python benchmarks/bench_packing.py [--ctx 256] [--batch 4] [--iters 6] [--warmup 1]
        [--conversations 600] [--threads 2] [--rounds 1] [--model PATH]

Data: `--conversations` short two-turn chats (a question and a one- or two-sentence answer about
arithmetic, capitals, colours, opposites and spelling), made up deterministically by this script
and rendered through SmolLM2-135M-Instruct's chat template (ggtune --train-format chat; the
template adds its default system line, so a conversation is 50-80 tokens). Training: ggtune.finetune()
with rank-4 LoRA on the seven attention/FFN matrices, ctx and batch as given, the same seed, once
without packing (each row holds one conversation, the rest is padding) and once with --pack
(rows hold as many whole conversations as fit, attention kept inside each). The figure is
conversation tokens (BOS + the conversation, padding excluded) per second over the timed iterations,
from the metrics log's sample counts and elapsed times; positions per second are shown beside it.
With --rounds N the two runs alternate N times and each keeps its best round, so a change in the
machine's load does not favour one of them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "python"))

CAPITALS = [("France", "Paris"), ("Japan", "Tokyo"), ("Kenya", "Nairobi"), ("Peru", "Lima"), ("Italy", "Rome"),
            ("Canada", "Ottawa"), ("Egypt", "Cairo"), ("Norway", "Oslo"), ("Chile", "Santiago"), ("Spain", "Madrid")]
OPPOSITES = [("hot", "cold"), ("up", "down"), ("early", "late"), ("light", "dark"), ("full", "empty"),
             ("fast", "slow"), ("open", "closed"), ("wet", "dry"), ("loud", "quiet"), ("high", "low")]
COLOURS = [("the sky on a clear day", "blue"), ("fresh grass", "green"), ("a ripe banana", "yellow"),
           ("snow", "white"), ("coal", "black"), ("a ripe tomato", "red")]


def conversation(rng: np.random.Generator) -> list[dict]:
    kind = rng.integers(5)
    if kind == 0:
        a, b = (int(v) for v in rng.integers(2, 99, size=2))
        q, ans = f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}."
    elif kind == 1:
        country, city = CAPITALS[rng.integers(len(CAPITALS))]
        q, ans = f"What is the capital of {country}?", f"The capital of {country} is {city}."
    elif kind == 2:
        word, other = OPPOSITES[rng.integers(len(OPPOSITES))]
        q, ans = f"Give the opposite of '{word}'.", f"The opposite of '{word}' is '{other}'."
    elif kind == 3:
        thing, colour = COLOURS[rng.integers(len(COLOURS))]
        q, ans = f"What colour is {thing}?", f"{thing[0].upper() + thing[1:]} is {colour}. It is a common example."
    else:
        word = ["river", "garden", "window", "planet", "candle", "market"][rng.integers(6)]
        q, ans = f"Spell the word {word}, one letter at a time.", " ".join(word.upper()) + "."
    return [{"role": "user", "content": q}, {"role": "assistant", "content": ans}]


def write_dataset(path: str, n: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(n):
            f.write(json.dumps({"messages": conversation(rng)}) + "\n")


def train(model: str, data: str, workdir: str, pack: bool, args) -> dict:
    import ggtune
    from ggtune.metrics import read_metrics

    tag = "packed" if pack else "unpacked"
    result = ggtune.finetune(
        model, data, lora_out=os.path.join(workdir, f"lora-{tag}.gguf"), checkpoint_in="", checkpoint_out="",
        metrics=os.path.join(workdir, f"{tag}.metrics.jsonl"), ctx=args.ctx, batch=args.batch, lora_r=4,
        adam_iter=args.warmup + args.iters, adam_alpha=1e-3, warmup=0, seed=1, threads=args.threads,
        pack=pack, verbose=False, rank_att_norm=0, rank_ffn_norm=0, rank_out_norm=0, rank_tok_embd=0, rank_out=0)
    records = read_metrics(result.metrics_path)
    start, end = records[args.warmup - 1], records[-1]
    seconds = end["elapsed"] - start["elapsed"]
    samples = end["samples"] - start["samples"]
    positions = args.ctx * args.batch * args.iters
    return {"tag": tag, "seconds": seconds, "samples": samples, "positions_per_s": positions / seconds,
            "samples_per_s": samples / seconds, "loss": result.losses[-1]}


def mean_conversation_tokens(model: str, data: str, ctx: int) -> tuple[float, int]:
    """(mean positions a conversation occupies in a row: BOS + its tokens, cut at ctx; count)."""
    from ggtune.model import load_model
    from ggtune.trainer import _token_text
    from ggtune import data as data_io

    m = load_model(model)
    tok = m.tokenizer
    samples = data_io.load_training_data(data, tok, n_ctx=ctx, train_format="chat",
                                         chat_template=m.weights.metadata["tokenizer.chat_template"],
                                         bos_token=_token_text(tok, tok.bos_id), eos_token=_token_text(tok, tok.eos_id))
    return float(np.minimum(samples.sizes + 1, ctx).mean()), samples.count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ctx", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--iters", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--conversations", type=int, default=600)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1, help="alternate the two runs N times, best of each")
    parser.add_argument("--model", default=None, help="default: SmolLM2-135M-Instruct Q4_1 (fetched)")
    args = parser.parse_args()
    if args.warmup < 1:
        parser.error("--warmup: at least 1 (the timing starts after it)")
    from ggtune.fetch import smollm2_path

    model = args.model or str(smollm2_path())
    with tempfile.TemporaryDirectory() as workdir:
        data = os.path.join(workdir, "chat.jsonl")
        write_dataset(data, args.conversations)
        per_sample, count = mean_conversation_tokens(model, data, args.ctx)
        print(f"{count} conversations, {per_sample:.1f} positions each on average (BOS + tokens); "
              f"ctx {args.ctx}, batch {args.batch}, {args.iters} timed iterations after {args.warmup}")
        best = {}
        for _ in range(args.rounds):
            for pack in (False, True):
                r = train(model, data, workdir, pack, args)
                if r["tag"] not in best or r["samples_per_s"] > best[r["tag"]]["samples_per_s"]:
                    best[r["tag"]] = r
        rows = [best["unpacked"], best["packed"]]
    print(f"{'':9} {'positions/s':>12} {'conversations/s':>16} {'conversation tokens/s':>22} {'padding':>8}")
    for r in rows:
        useful = r["samples_per_s"] * per_sample
        print(f"{r['tag']:9} {r['positions_per_s']:12.0f} {r['samples_per_s']:16.2f} {useful:22.0f} "
              f"{1 - useful / r['positions_per_s']:8.0%}")
    gain = rows[1]["samples_per_s"] / rows[0]["samples_per_s"]
    print(f"packing trains {gain:.2f}x the conversation tokens per second")
    return 0


if __name__ == "__main__":
    sys.exit(main())
