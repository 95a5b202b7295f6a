"""Attention forward and backward, float32 and bf16 tiles, on the models' head shapes.

    PYTHONPATH=python python benchmarks/bench_attention.py [--window 512] [--seqs 512,2048]
        [--cache 4096] [--repeats 5] [--threads N] [--cpu-time]

1. Training shapes (ctx 128, batch 8): SmolLM2-135M (9 query heads over 3 KV heads, head dim 64)
   and Gemma 3 270M (4 over 1, head dim 256). Each line gives milliseconds per call and the
   GFLOP/s of the useful causal work (forward: QK^T and PV over the keys each query sees, 2 S^2 D
   per head at S^2/2 pairs; backward: five such products), beside the machine's register-only
   peaks (`_core.peak_rate`: float32 FMA and bf16 vdpbf16ps).
2. Gemma 3's long sequences (batch 1, --seqs): causal, then with first_key = max(0, i - window + 1)
   (its local layers; key tiles below a query tile's window are skipped, so the windowed time grows
   like S * window instead of S^2 / 2).
3. The decode step: one query over a cache of --cache keys, global and windowed.
Tiles: "f32" (exact float32 products) and "bf16" (operands rounded to bf16, float32 accumulation:
vdpbf16ps on avx512; other tiers run float32 tiles for it). --cpu-time: one thread, timed by the
process's CPU time (for a machine shared with other jobs). Figures go in notes, never in tests.
"""

import argparse
import time

import numpy as np

from bench_kernels import best_seconds
from ggtune import _core

TRAINING_SHAPES = {"SmolLM2-135M": (8, 128, 9, 3, 64), "Gemma-3-270M": (8, 128, 4, 1, 256)}
GEMMA_HEADS = (4, 1, 256)
TILES = ("f32", "bf16")


def attention_calls(B, S, Skv, Hq, Hkv, D, window, tiles, rng):
    """(forward, backward) callables for one shape; window None = plain causal."""
    q = rng.standard_normal((B, S, Hq, D)).astype(np.float32)
    k, v = (rng.standard_normal((B, Skv, Hkv, D)).astype(np.float32) for _ in range(2))
    own = np.arange(S) + (Skv - S)
    bounds = None if window is None else np.tile(np.maximum(own - window + 1, 0).astype(np.int32), (B, 1))
    out, lse = np.empty_like(q), np.empty((B, Hq, S), np.float32)
    grads = (np.empty_like(q), np.empty_like(k), np.empty_like(v))
    scale = 1.0 / np.sqrt(D)

    def forward():
        _core.attention_forward(q, k, v, scale, out, lse, first_key=bounds, tiles=tiles)

    def backward():
        _core.attention_backward(q, q, k, v, out, lse, scale, *grads, first_key=bounds, tiles=tiles)

    forward()
    return forward, backward


def causal_flops(B, S, Skv, Hq, D, window=None):
    """Flops of one product over the (query, key) pairs attention computes: 2 D per pair."""
    own = np.arange(S) + (Skv - S)
    lo = np.zeros(S) if window is None else np.maximum(own - window + 1, 0)
    return 2.0 * D * B * Hq * float((own - lo + 1).sum())


def timed(fns, args, burst):
    clocks = {name: time.process_time for name in fns} if args.cpu_time else None
    return best_seconds(fns, args.repeats, burst=burst, settle=0.05, clocks=clocks)


def training_shapes(args, rng):
    for model, (B, S, Hq, Hkv, D) in TRAINING_SHAPES.items():
        fns = {}
        for tiles in TILES:
            fns[f"{tiles} forward"], fns[f"{tiles} backward"] = attention_calls(B, S, S, Hq, Hkv, D, None, tiles, rng)
        best = timed(fns, args, burst=4)
        flops = causal_flops(B, S, S, Hq, D)
        line = ", ".join(f"{name} {t * 1e3:.2f} ms ({(2 if 'forward' in name else 5) * flops / t / 1e9:.0f} GFLOP/s)"
                         for name, t in best.items())
        print(f"{model} B {B} S {S} heads {Hq}/{Hkv} D {D}: {line}")
        print(f"  bf16 / f32 speed-up: forward {best['f32 forward'] / best['bf16 forward']:.2f}x, "
              f"backward {best['f32 backward'] / best['bf16 backward']:.2f}x")


def gemma_sequences(args, rng):
    Hq, Hkv, D = GEMMA_HEADS
    for S in [int(s) for s in args.seqs.split(",")]:
        for tiles in TILES:
            fns = {}
            for label, window in (("causal", None), ("window", args.window)):
                fns[f"{label} forward"], fns[f"{label} backward"] = attention_calls(1, S, S, Hq, Hkv, D, window, tiles, rng)
            best = timed(fns, args, burst=2)
            print(f"S {S} {tiles}: " + ", ".join(f"{name} {t * 1e3:.2f} ms" for name, t in best.items()))


def decode(args, rng):
    Hq, Hkv, D = GEMMA_HEADS
    fns = {}
    for tiles in TILES:
        for label, window in (("causal", None), ("window", args.window)):
            fns[f"{tiles} {label}"] = attention_calls(1, 1, args.cache, Hq, Hkv, D, window, tiles, rng)[0]
    best = timed(fns, args, burst=8)
    print(f"decode 1 query over {args.cache} keys: " +
          ", ".join(f"{name} {t * 1e3:.3f} ms" for name, t in best.items()))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--seqs", default="512,2048")
    parser.add_argument("--cache", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="ggtune threads (0: all cores)")
    parser.add_argument("--cpu-time", action="store_true", help="one thread, timed by process CPU time")
    args = parser.parse_args()
    _core.set_num_threads(1 if args.cpu_time else args.threads)
    n = _core.num_threads()
    peaks = {kind: _core.peak_rate(kind, n, 0.3, cpu_time=args.cpu_time) / 1e9
             for kind in (("f32", "bf16") if _core.active_isa() == "avx512" else ("f32",))}
    print(f"isa {_core.active_isa()}, {n} threads{' (CPU time)' if args.cpu_time else ''}, peaks: " +
          ", ".join(f"{kind} {rate:.0f} GFLOP/s" for kind, rate in peaks.items()))
    rng = np.random.default_rng(0)
    training_shapes(args, rng)
    gemma_sequences(args, rng)
    decode(args, rng)


if __name__ == "__main__":
    main()
