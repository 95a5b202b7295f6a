"""Attention with and without a sliding window (first_key), on Gemma 3 270M's head shapes.

    PYTHONPATH=python python benchmarks/bench_attention.py [--window 512] [--seqs 512,2048]
        [--cache 4096] [--repeats 5] [--threads N]

For each sequence length S (batch 1, 4 query heads over 1 KV head, head dim 256, as Gemma 3
270M) it times the forward and the backward of causal attention, then the same with
first_key = max(0, i - window + 1) (Gemma 3's local layers); the key tiles below a query tile's
window are skipped, so the windowed time grows like S * window instead of S^2 / 2. Then the
decode step: one query over a cache of --cache keys, global and windowed. Figures go in notes,
never in tests.
"""

import argparse

import numpy as np

from bench_kernels import best_seconds
from ggtune import _core

HQ, HKV, D = 4, 1, 256


def attention_calls(S, Skv, window, rng):
    """(forward, backward) callables for one shape; window None = plain causal."""
    q = rng.standard_normal((1, S, HQ, D)).astype(np.float32)
    k, v = (rng.standard_normal((1, Skv, HKV, D)).astype(np.float32) for _ in range(2))
    own = np.arange(S) + (Skv - S)
    first_key = None if window is None else np.maximum(own - window + 1, 0).astype(np.int32)[None]
    out, lse = np.empty_like(q), np.empty((1, HQ, S), np.float32)
    grads = (np.empty_like(q), np.empty_like(k), np.empty_like(v))
    scale = 1.0 / np.sqrt(D)

    def forward():
        _core.attention_forward(q, k, v, scale, out, lse, first_key=first_key)

    def backward():
        _core.attention_backward(q, q, k, v, out, lse, scale, *grads, first_key=first_key)

    forward()
    return forward, backward


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--seqs", default="512,2048")
    parser.add_argument("--cache", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="ggtune threads (0: all cores)")
    args = parser.parse_args()
    _core.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    print(f"isa {_core.active_isa()}, {_core.num_threads()} threads, heads {HQ}/{HKV}, D {D}, "
          f"window {args.window}")
    for S in [int(s) for s in args.seqs.split(",")]:
        fns = {}
        for label, window in (("causal", None), ("window", args.window)):
            fns[f"{label} forward"], fns[f"{label} backward"] = attention_calls(S, S, window, rng)
        best = best_seconds(fns, args.repeats, burst=2, settle=0.05)
        line = ", ".join(f"{name} {t * 1e3:.2f} ms" for name, t in best.items())
        print(f"S {S}: {line}")
    fns = {}
    for label, window in (("causal", None), ("window", args.window)):
        fns[f"decode {label}"] = attention_calls(1, args.cache, window, rng)[0]
    best = best_seconds(fns, args.repeats, burst=8, settle=0.05)
    print(f"decode 1 query over {args.cache} keys: " +
          ", ".join(f"{name} {t * 1e3:.3f} ms" for name, t in best.items()))


if __name__ == "__main__":
    main()
