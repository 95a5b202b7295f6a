"""GFLOP/s of the quantized-weight matmul on SmolLM2-135M's shapes, beside numpy float32.

    PYTHONPATH=python python benchmarks/bench_kernels.py [--tokens 1024] [--precision auto]
        [--types Q4_1,Q8_0,F32] [--repeats 7] [--threads N]

On the 2-vCPU VMs ggtune is tuned on, a thread pool that slept through the 0.25 s settle time
sometimes wakes its worker on the master's CPU and the two share it for several milliseconds
(seen in /proc/<pid>/task/*/stat: every slow burst had both on one CPU), which makes short
shapes measure 2-4x slow at random. Threads that keep spinning through the pauses take that
out of the measurement:
    GOMP_SPINCOUNT=2000000 PYTHONPATH=python python benchmarks/bench_kernels.py

On a loaded machine a one-core comparison is steadier:
    OPENBLAS_NUM_THREADS=1 PYTHONPATH=python python benchmarks/bench_kernels.py --threads 1

For each weight shape (in -> out) and weight type it times the forward Y = X @ W.T and the
backward dX = dY @ W, and numpy's float32 matmul of the same shapes in the same run, taking
turns; the ratio to numpy (numpy time / ggtune time) is what counts on a shared machine. A FLOP is 2 * T * in * out. Figures
go in notes, never in tests.
"""

import argparse
import time

import numpy as np
from gguf import GGMLQuantizationType, quants

from ggtune import _core

SHAPES = [(576, 576), (576, 192), (576, 1536), (1536, 576), (576, 49152)]  # (in, out)


def best_seconds(fns, repeats, burst=4, settle=0.25):
    """Best time per call of each callable; they take turns, so a burst of load on the shared
    machine hits all of them alike. Each turn waits `settle` seconds, then times `burst` calls in a
    row: numpy's OpenBLAS threads keep spinning on the cores for about 0.1 s after a call (and
    ggtune's OpenMP threads sleep), so a call timed right after the other library's would measure
    the hand-over between thread pools, not the kernel."""
    for fn in fns.values():
        fn()  # warm-up: page faults, thread start
    best = {name: float("inf") for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            time.sleep(settle)
            start = time.perf_counter()
            for _ in range(burst):
                fn()
            best[name] = min(best[name], (time.perf_counter() - start) / burst)
    return best


def weight_bytes(w, qtype):
    if qtype == GGMLQuantizationType.F32:
        return w.view(np.uint8)
    return np.ascontiguousarray(quants.quantize(w, qtype))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--precision", default="auto", choices=["auto", "f32", "bf16", "int8"])
    parser.add_argument("--types", default="Q4_1,Q8_0,F32")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=0, help="ggtune threads (0: all cores)")
    args = parser.parse_args()
    _core.set_num_threads(args.threads)
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
        fns = {"np fwd": lambda: np.matmul(x, w.T, out=y), "np bwd": lambda: np.matmul(dy, w, out=dx)}
        for qtype in types:
            wq, t = weight_bytes(w, qtype), int(qtype)
            fns[(qtype.name, "fwd")] = lambda wq=wq, t=t: _core.matmul(
                x, wq, t, y, precision=args.precision)
            fns[(qtype.name, "bwd")] = lambda wq=wq, t=t: _core.matmul_backward(
                dy, wq, t, dx, precision=args.precision)
        best = best_seconds(fns, args.repeats)
        np_fwd, np_bwd = best["np fwd"], best["np bwd"]
        print(f"{n_in:>5} -> {n_out:<6} numpy   fwd {gflop / np_fwd:6.1f}          "
              f"bwd {gflop / np_bwd:6.1f}")
        for qtype in types:
            fwd, bwd = best[(qtype.name, "fwd")], best[(qtype.name, "bwd")]
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
