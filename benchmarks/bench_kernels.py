"""GFLOP/s of the quantized-weight matmul on SmolLM2-135M's shapes, beside numpy float32.

    PYTHONPATH=python python benchmarks/bench_kernels.py [--tokens 1024] [--precision auto]
        [--types Q4_1,Q8_0,F32] [--repeats 5]

For each weight shape (in -> out) and weight type it times the forward Y = X @ W.T and the
backward dX = dY @ W, and numpy's float32 matmul of the same shapes in the same run; the
ratio ggtune/numpy is what counts on a shared machine. A FLOP is 2 * T * in * out. Figures
go in notes, never in tests.
"""

import argparse
import time

import numpy as np
from gguf import GGMLQuantizationType, quants

from ggtune import _core

SHAPES = [(576, 576), (576, 192), (576, 1536), (1536, 576), (576, 49152)]  # (in, out)


def best_seconds(fn, repeats):
    fn()  # warm-up: page faults, thread start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def weight_bytes(w, qtype):
    if qtype == GGMLQuantizationType.F32:
        return w.view(np.uint8)
    return np.ascontiguousarray(quants.quantize(w, qtype))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--precision", default="auto", choices=["auto", "f32", "bf16"])
    parser.add_argument("--types", default="Q4_1,Q8_0,F32")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    types = [GGMLQuantizationType[name] for name in args.types.split(",")]
    rng = np.random.default_rng(0)
    T = args.tokens
    print(f"isa {_core.active_isa()}, threads {_core.num_threads()}, T = {T}, "
          f"precision {args.precision}; GFLOP/s (ratio to numpy float32 in this run)")
    totals = {}
    for n_in, n_out in SHAPES:
        gflop = 2 * T * n_in * n_out / 1e9
        x = rng.standard_normal((T, n_in), dtype=np.float32)
        dy = rng.standard_normal((T, n_out), dtype=np.float32)
        w = rng.standard_normal((n_out, n_in), dtype=np.float32)
        y, dx = np.empty((T, n_out), np.float32), np.empty((T, n_in), np.float32)
        np_fwd = best_seconds(lambda: np.matmul(x, w.T, out=y), args.repeats)
        np_bwd = best_seconds(lambda: np.matmul(dy, w, out=dx), args.repeats)
        print(f"{n_in:>5} -> {n_out:<6} numpy   fwd {gflop / np_fwd:6.1f}          "
              f"bwd {gflop / np_bwd:6.1f}")
        for qtype in types:
            wq = weight_bytes(w, qtype)
            fwd = best_seconds(lambda: _core.matmul(x, wq, int(qtype), y, precision=args.precision),
                               args.repeats)
            bwd = best_seconds(
                lambda: _core.matmul_backward(dy, wq, int(qtype), dx, precision=args.precision),
                args.repeats)
            print(f"{'':>15} {qtype.name:<7} fwd {gflop / fwd:6.1f} ({np_fwd / fwd:4.2f}x)  "
                  f"bwd {gflop / bwd:6.1f} ({np_bwd / bwd:4.2f}x)")
            sums = totals.setdefault(qtype.name, [0.0, 0.0, 0.0, 0.0])
            for i, v in enumerate((np_fwd, fwd, np_bwd, bwd)):
                sums[i] += v
    print("all shapes (time-weighted ratio to numpy):")
    for name, (np_fwd, fwd, np_bwd, bwd) in totals.items():
        print(f"  {name:<7} fwd {np_fwd / fwd:4.2f}x  bwd {np_bwd / bwd:4.2f}x")


if __name__ == "__main__":
    main()
