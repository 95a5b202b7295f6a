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
4. --iteration: one SmolLM2 training iteration (ctx 128, batch 8, LoRA rank 4 on the seven matrices,
   checkpointing, precision auto) with each tile precision in turn, one thread, timed by CPU time:
   the whole iteration and its attention calls.
Tiles: "f32" (exact float32 products) and "bf16" (operands rounded to bf16, float32 accumulation:
vdpbf16ps on avx512; other tiers run float32 tiles for it). --cpu-time: one thread, timed by the
thread's CPU time (for a machine shared with other jobs). Figures go in notes, never in tests.
"""

import argparse
import os
import time

# numpy's BLAS on the calling thread: its workers keep spinning after a call, which would count in
# CPU time and take a core from the one timed.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

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
    clocks = {name: time.thread_time for name in fns} if args.cpu_time else None
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


class AttentionClock:
    """A proxy of ggtune._core that adds up the CPU time of the attention calls."""

    def __init__(self):
        self.seconds, self.calls = 0.0, 0

    def __getattr__(self, name):
        fn = getattr(_core, name)
        if not name.startswith("attention_"):
            return fn

        def timed_call(*args, **kwargs):
            start = time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds += time.thread_time() - start
                self.calls += 1
        return timed_call


def iteration(args):
    """Training iterations with float32 and bf16 attention tiles, taking turns (precision auto)."""
    from ggtune.fetch import smollm2_path
    from ggtune.graph import Grads, Graph
    from ggtune.lora import init_lora
    from ggtune.model import load_model

    model = load_model(str(smollm2_path()), n_threads=1)  # (load_model sets the thread count)
    kinds = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
    lora = init_lora(model.weights, {kind: 4 for kind in kinds}, 4.0, seed=0)
    clock = AttentionClock()
    graph = Graph(model.weights, lora, precision="auto", kernels=clock)
    grads = Grads.like(lora)
    tokens = np.random.default_rng(0).integers(0, model.hparams.n_vocab, (8, 129)).astype(np.int32)
    best = {}
    for _ in range(args.repeats):
        for tiles in TILES:
            graph.block.attention_tiles = tiles
            clock.seconds = clock.calls = 0
            start = time.thread_time()
            graph.loss_and_grads(tokens[:, :-1], tokens[:, 1:], grads)
            total = time.thread_time() - start
            if total < best.get(tiles, (np.inf,))[0]:
                best[tiles] = (total, clock.seconds, clock.calls)
    for tiles, (total, att, calls) in best.items():
        print(f"iteration, {tiles} tiles: {total * 1e3:.0f} ms CPU, attention {att * 1e3:.0f} ms "
              f"({100 * att / total:.1f}%, {calls} calls)")
    print(f"  bf16 tiles save {(best['f32'][0] - best['bf16'][0]) * 1e3:.0f} ms of the iteration "
          f"({100 * (1 - best['bf16'][0] / best['f32'][0]):.1f}%)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--seqs", default="512,2048")
    parser.add_argument("--cache", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="ggtune threads (0: all cores)")
    parser.add_argument("--cpu-time", action="store_true", help="one thread, timed by its CPU time")
    parser.add_argument("--iteration", action="store_true",
                        help="only: SmolLM2 training iterations with either tiles (one thread, CPU time)")
    args = parser.parse_args()
    if args.iteration:
        _core.set_num_threads(1)
        iteration(args)
        return
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
