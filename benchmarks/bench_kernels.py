"""The quantized-weight matmul on SmolLM2-135M's shapes, as a fraction of this machine's own peaks.

    PYTHONPATH=python python benchmarks/bench_kernels.py [--tokens 1024] [--precision auto]
        [--types Q4_1,Q8_0,F32] [--repeats 7] [--threads N] [--no-numpy] [--no-decode]
        [--decode-only] [--model M] [--lora-only] [--rank 4]

1. Peaks: `_core.peak_rate` runs register-only loops of vpdpbusd (int8), vdpbf16ps (bf16) and float32
   FMA on 1 thread and on N (the widest instruction the tier has; csrc/bench/peaks.h), and on avx512
   the int8 engine's ceilings: each micro-kernel (affine, symmetric, column-scaled) on one tile whose
   operands stay in L1, so only its own instruction mix limits it.
2. Kernels: for each weight shape (in -> out) and type, the forward Y = X @ W.T and the backward
   dX = dY @ W on 1 thread and on N, each as GOP/s, as a fraction of its engine's peak at the same
   thread count (int8 engine: the int8 peak; f32 engine: the f32 peak) and, for int8, of the ceiling
   of the micro-kernel it runs (what packing, quantization and caches cost), and the parallel efficiency
   rate(N) / (N * rate(1)). numpy float32 of the same shapes runs in the same turns (ratio numpy time /
   ggtune time). An op is a multiply or an add: 2 * T * in * out per product.
3. Decode: the products of one generated token (T = 1) of SmolLM2 with its real weights (every layer's
   q, k, v, o, gate, up, down and the tied head), replayed through `matmul` one call per weight and
   through `matmul_many` (q/k/v and gate/up in one call each), as ms per token.
4. LoRA (--lora-only): on the same shapes with rank --rank (Q4_1 weight), the product alone, the
   product then `lora_expand` of its up-projection (a pass of its own over the output, as graph.py
   did), and the product with the up-projection fused (`lora=(z, b, 1.0)`: graph.py folds the scale into
   b), forward and backward, as ms per call at 1 and N threads.

Timing: calls run in bursts, the callables take turns, and the best burst counts, so a load spike on
the shared machine hits all of them alike. On the 2-vCPU VMs ggtune is tuned on, a thread pool that slept
through a pause sometimes wakes its worker on the master's CPU and the two share it for several
milliseconds (seen in /proc/<pid>/task/*/stat), so short shapes can measure 2-4x slow at random;
`GOMP_SPINCOUNT=2000000` keeps the threads spinning through the pauses. Figures go in notes, never in tests.
"""

import argparse
import os
import time

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader, quants

from ggtune import _core

SHAPES = [(576, 576), (576, 192), (576, 1536), (1536, 576), (576, 49152)]  # (in, out)
LARGE = {(576, 1536), (1536, 576), (576, 49152)}  # the "large shapes" (>= 75% of peak)
LAYER_WEIGHTS = ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"]


def best_seconds(fns, repeats, burst=4, settle=0.25, clocks=None):
    """Best time per call of each callable; they take turns. Each turn waits `settle` seconds, then
    times `burst` calls in a row: numpy's OpenBLAS threads keep spinning on the cores for about 0.1 s
    after a call, so a call timed right after the other library's would measure the hand-over between
    thread pools, not the kernel. clocks: {name: clock function} for callables timed by another clock
    than time.perf_counter (--cpu-time)."""
    for fn in fns.values():
        fn()  # warm-up: page faults, thread start
    best = {name: float("inf") for name in fns}
    clocks = clocks or {}
    for _ in range(repeats):
        for name, fn in fns.items():
            if settle:
                time.sleep(settle)
            clock = clocks.get(name, time.perf_counter)
            start = clock()
            for _ in range(burst):
                fn()
            best[name] = min(best[name], (clock() - start) / burst)
    return best


def weight_bytes(w, qtype):
    if qtype == GGMLQuantizationType.F32:
        return w.view(np.uint8)
    return np.ascontiguousarray(quants.quantize(w, qtype))


def with_threads(n, fn):
    def call():
        _core.set_num_threads(n)
        fn()
    return call


CEILINGS = ["int8_affine", "int8_symmetric", "int8_column_scaled"]
# Types whose forward runs the affine micro-kernel (offsets of their own); every other int8 forward
# is symmetric, every int8 backward column-scaled (csrc/gemm/qgemm.h).
AFFINE = {GGMLQuantizationType.Q4_1, GGMLQuantizationType.Q5_1, GGMLQuantizationType.Q4_K,
          GGMLQuantizationType.Q5_K}


def measure_peaks(thread_counts, cpu_time=False):
    """{(kind, threads): ops/s} for the kinds the active tier has (1 thread: per CPU second with
    cpu_time): the instruction peaks, and on avx512 the int8 micro-kernels' own ceilings (each on
    one L1-resident tile, so only its instruction mix limits it)."""
    kinds = ["int8", "bf16", "f32"] + CEILINGS if _core.active_isa() == "avx512" else ["f32"]
    # The best of three passes over the kinds: the VM's clock moves between minutes (int8 peak
    # 430-470 GOP/s on one thread in one afternoon), and a kernel's fraction of a low peak reads high.
    peaks = {}
    for _ in range(3):
        for k in kinds:
            for n in thread_counts:
                rate = _core.peak_rate(k, n, 0.5, cpu_time=cpu_time and n == 1)
                peaks[k, n] = max(peaks.get((k, n), 0.0), rate)
    line = lambda ks: ", ".join(f"{k} " + " / ".join(f"{peaks[k, n] / 1e9:.0f}" for n in thread_counts)
                                for k in ks)
    counts = " / ".join(map(str, thread_counts))
    print(f"peaks (register-only loops, GOP/s): {line([k for k in kinds if k not in CEILINGS])}  at {counts} threads")
    if _core.active_isa() == "avx512":
        one = thread_counts[0]
        shares = " / ".join(f"{100 * peaks[k, one] / peaks['int8', one]:.0f}%" for k in CEILINGS)
        print(f"int8 kernel ceilings (the micro-kernel on L1-resident operands, GOP/s): {line(CEILINGS)}"
              f"  = {shares} of the int8 peak at {one} thread")
    return peaks


def ceiling_of(qtype, direction):
    if direction == "bwd":
        return "int8_column_scaled"
    return "int8_affine" if qtype in AFFINE else "int8_symmetric"


def engine_of(qtype, precision):
    quantized = qtype not in (GGMLQuantizationType.F32, GGMLQuantizationType.F16, GGMLQuantizationType.BF16)
    if precision == "auto":
        return "int8" if quantized and _core.active_isa() == "avx512" else "f32"
    return precision


def bench_shapes(args, types, thread_counts, peaks):
    rng = np.random.default_rng(0)
    T, full = args.tokens, thread_counts[-1]
    print(f"\nT = {T}, precision {args.precision}; GOP/s and % of the engine's peak at "
          f"{' / '.join(map(str, thread_counts))} threads{' (1 thread: CPU time)' if args.cpu_time else ''}, "
          f"parallel efficiency{', ratio to numpy float32' if args.numpy else ''}")
    fractions = {}
    for n_in, n_out in SHAPES:
        gop = 2 * T * n_in * n_out / 1e9
        x = rng.standard_normal((T, n_in), dtype=np.float32)
        dy = rng.standard_normal((T, n_out), dtype=np.float32)
        w = rng.standard_normal((n_out, n_in), dtype=np.float32)
        y, dx = np.empty((T, n_out), np.float32), np.empty((T, n_in), np.float32)
        fns = {}
        if args.numpy:
            fns["np", "fwd"] = lambda: np.matmul(x, w.T, out=y)
            fns["np", "bwd"] = lambda: np.matmul(dy, w, out=dx)
        for qtype in types:
            wq, t = weight_bytes(w, qtype), int(qtype)
            for n in thread_counts:
                fns[qtype.name, "fwd", n] = with_threads(n, lambda wq=wq, t=t: _core.matmul(
                    x, wq, t, y, precision=args.precision))
                fns[qtype.name, "bwd", n] = with_threads(n, lambda wq=wq, t=t: _core.matmul_backward(
                    dy, wq, t, dx, precision=args.precision))
        clocks = {name: time.thread_time for name in fns if args.cpu_time and name[-1] == 1}
        # Without numpy in the turn, no pause: a sleep lets ggtune's own OpenMP workers fall asleep,
        # and the next burst's first call then measures waking a halted vCPU (about 1 ms on the
        # benchmark VM: a 0.4 ms product at two threads read as 0.23 efficiency), not the kernel.
        best = best_seconds(fns, args.repeats, settle=0.25 if args.numpy else 0.0, clocks=clocks)
        _core.set_num_threads(full)
        if args.numpy:
            print(f"{n_in:>5} -> {n_out:<6} numpy   fwd {gop / best['np', 'fwd']:6.1f}   "
                  f"bwd {gop / best['np', 'bwd']:6.1f}")
        else:
            print(f"{n_in:>5} -> {n_out:<6}")
        for qtype in types:
            engine = engine_of(qtype, args.precision)
            cells = []
            for d in ("fwd", "bwd"):
                rates = [gop / best[qtype.name, d, n] for n in thread_counts]
                fracs = [r * 1e9 / peaks.get((engine, n), float("nan")) for r, n in zip(rates, thread_counts)]
                eff = rates[-1] / (full * rates[0]) if len(rates) > 1 else 1.0
                for n, f in zip(thread_counts, fracs):
                    fractions.setdefault((qtype.name, d, (n_in, n_out) in LARGE, n), []).append(f)
                ratio = f" {best['np', d] / best[qtype.name, d, full]:4.2f}x np" if args.numpy else ""
                ceiling = ""
                if engine == "int8" and (ceiling_of(qtype, d), full) in peaks:
                    of = [r * 1e9 / peaks[ceiling_of(qtype, d), n] for r, n in zip(rates, thread_counts)]
                    ceiling = f" ({' / '.join(f'{100 * f:3.0f}%' for f in of)} of ceiling)"
                cells.append(f"{d} {' / '.join(f'{r:4.0f}' for r in rates)} "
                             f"{' / '.join(f'{100 * f:3.0f}%' for f in fracs)}{ceiling} eff {eff:4.2f}{ratio}")
            print(f"{'':>15} {qtype.name:<5} {engine:<4} " + "   ".join(cells))
    print(f"\nmean fraction of peak at {' / '.join(map(str, thread_counts))} threads "
          f"(issue target: >= 75% large shapes, >= 60% 576-wide):")
    for qtype in types:
        parts = []
        for d in ("fwd", "bwd"):
            for large, label in ((True, "large"), (False, "576-wide")):
                v = [100 * np.mean(fractions.get((qtype.name, d, large, n), [np.nan])) for n in thread_counts]
                parts.append(f"{d} {label} " + " / ".join(f"{x:3.0f}%" for x in v))
        print(f"  {qtype.name:<5} " + ", ".join(parts))


def bench_lora(args, thread_counts):
    """ms per call: product, product + lora_expand, fused, per shape and direction."""
    rng = np.random.default_rng(0)
    T, r, qtype = args.tokens, args.rank, GGMLQuantizationType.Q4_1
    print(f"\nLoRA up-projection, T = {T}, rank {r}, Q4_1, precision {args.precision}: ms per call at "
          f"{' / '.join(map(str, thread_counts))} threads{' (1 thread: CPU time)' if args.cpu_time else ''}")
    totals = {}
    for n_in, n_out in SHAPES[:4]:
        w = weight_bytes(rng.standard_normal((n_out, n_in), dtype=np.float32), qtype)
        x, dy = (rng.standard_normal((T, n), dtype=np.float32) for n in (n_in, n_out))
        y, dx = np.empty((T, n_out), np.float32), np.empty((T, n_in), np.float32)
        z = rng.standard_normal((T, r), dtype=np.float32)
        b_t, a = (rng.standard_normal((r, n), dtype=np.float32) for n in (n_out, n_in))
        calls = {
            "fwd": (lambda: _core.matmul(x, w, int(qtype), y, precision=args.precision),
                    lambda: _core.lora_expand(z, b_t, y, 1.0),
                    lambda: _core.matmul(x, w, int(qtype), y, precision=args.precision, lora=(z, b_t, 1.0))),
            "bwd": (lambda: _core.matmul_backward(dy, w, int(qtype), dx, precision=args.precision),
                    lambda: _core.lora_expand(z, a, dx, 1.0),
                    lambda: _core.matmul_backward(dy, w, int(qtype), dx, precision=args.precision,
                                                  lora=(z, a, 1.0))),
        }
        fns = {}
        for d, (product, expand, fused) in calls.items():
            for n in thread_counts:
                fns[d, "product", n] = with_threads(n, product)
                fns[d, "+ expand", n] = with_threads(n, lambda product=product, expand=expand: (product(), expand()))
                fns[d, "fused", n] = with_threads(n, fused)
        clocks = {name: time.thread_time for name in fns if args.cpu_time and name[-1] == 1}
        best = best_seconds(fns, args.repeats, burst=4, settle=0.02, clocks=clocks)
        for d in calls:
            cells = []
            for kind in ("product", "+ expand", "fused"):
                ms = [1e3 * best[d, kind, n] for n in thread_counts]
                for n, v in zip(thread_counts, ms):
                    totals[kind, n] = totals.get((kind, n), 0.0) + v
                cells.append(f"{kind} {' / '.join(f'{v:6.3f}' for v in ms)}")
            print(f"{n_in:>5} -> {n_out:<5} {d}  " + "   ".join(cells))
    for n in thread_counts:
        extra = totals["+ expand", n] - totals["product", n]
        fused = totals["fused", n] - totals["product", n]
        print(f"  {n} thread(s), all 8 products: the up-projection adds {extra:.3f} ms as its own pass, "
              f"{fused:.3f} ms fused")
    _core.set_num_threads(thread_counts[-1])


def model_path(arg):
    if arg:
        return arg
    from ggtune.fetch import smollm2_path
    return str(smollm2_path())


def token_products(path):
    """One token's products: [(name, weight bytes, ggml type, n_in, n_out)] in forward order."""
    reader = GGUFReader(path)
    tensors = {t.name: t for t in reader.tensors}
    n_layer = 1 + max(int(name.split(".")[1]) for name in tensors if name.startswith("blk."))
    order = [f"blk.{i}.{w}.weight" for i in range(n_layer) for w in LAYER_WEIGHTS]
    order.append("output.weight" if "output.weight" in tensors else "token_embd.weight")
    out = []
    for name in order:
        t = tensors[name]
        n_in, n_out = int(t.shape[0]), int(t.shape[1])
        out.append((name, np.ascontiguousarray(t.data).view(np.uint8).reshape(n_out, -1), int(t.tensor_type),
                    n_in, n_out))
    return out


def bench_decode(args, thread_counts):
    """ms per token of one generated token's products, one call per weight and grouped."""
    products = token_products(model_path(args.model))
    rng = np.random.default_rng(0)
    xs = {n_in: rng.standard_normal((1, n_in), dtype=np.float32) for _, _, _, n_in, _ in products}
    outs = [np.empty((1, n_out), np.float32) for *_, n_out in products]
    macs = sum(n_in * n_out for *_, n_in, n_out in products)

    def one_by_one():
        for (name, w, t, n_in, _), out in zip(products, outs):
            _core.matmul(xs[n_in], w, t, out, precision=args.precision)

    # q/k/v and gate/up share their input: one call each (the rest one call per weight).
    groups, i = [], 0
    while i < len(products):
        name = products[i][0]
        size = 3 if name.endswith("attn_q.weight") else 2 if name.endswith("ffn_gate.weight") else 1
        groups.append(list(range(i, i + size)))
        i += size

    def grouped():
        for g in groups:
            n_in = products[g[0]][3]
            _core.matmul_many(xs[n_in], [products[j][1] for j in g], [products[j][2] for j in g],
                              [outs[j] for j in g], precision=args.precision)

    fns = {}
    for n in thread_counts:
        fns["one call per weight", n] = with_threads(n, one_by_one)
        if hasattr(_core, "matmul_many"):
            fns["q/k/v, gate/up grouped", n] = with_threads(n, grouped)
    clocks = {name: time.thread_time for name in fns if args.cpu_time and name[-1] == 1}
    best = best_seconds(fns, args.repeats, burst=8, settle=0.02, clocks=clocks)
    _core.set_num_threads(thread_counts[-1])
    print(f"\ndecode: one token's {len(products)} products of {os.path.basename(model_path(args.model))} "
          f"({macs / 1e6:.0f} M multiply-adds, {sum(w.nbytes for _, w, *_ in products) / 2**20:.0f} MiB of weights), "
          f"precision {args.precision}: ms per token at {' / '.join(map(str, thread_counts))} threads"
          f"{' (1 thread: CPU time)' if args.cpu_time else ''}")
    for label in dict.fromkeys(name for name, _ in fns):
        ms = [1e3 * best[label, n] for n in thread_counts]
        print(f"  {label:<24} " + " / ".join(f"{v:6.2f}" for v in ms) +
              f"   ({' / '.join(f'{1e3 / v:.0f}' for v in ms)} tokens/s of products alone)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--precision", default="auto", choices=["auto", "f32", "bf16", "int8"])
    parser.add_argument("--types", default="Q4_1,Q8_0,F32")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=0, help="ggtune threads besides 1 (0: all cores)")
    parser.add_argument("--no-numpy", dest="numpy", action="store_false", help="skip the numpy comparison")
    parser.add_argument("--no-decode", dest="decode", action="store_false", help="skip the decode replay")
    parser.add_argument("--decode-only", action="store_true", help="only the peaks and the decode replay")
    parser.add_argument("--cpu-time", action="store_true",
                        help="time 1-thread kernels and peaks by the thread's CPU time (immune to other "
                             "processes' time slices on a loaded machine)")
    parser.add_argument("--model", default=None, help="GGUF for the decode replay (default: cached SmolLM2)")
    parser.add_argument("--lora-only", action="store_true",
                        help="only the LoRA up-projection: after the product vs fused into it")
    parser.add_argument("--rank", type=int, default=4, help="LoRA rank of --lora-only")
    args = parser.parse_args()
    _core.set_num_threads(args.threads)
    full = _core.num_threads()
    thread_counts = [1, full] if full > 1 else [1]
    print(f"isa {_core.active_isa()}, threads {' and '.join(map(str, thread_counts))}")
    if args.lora_only:
        bench_lora(args, thread_counts)
        return
    peaks = measure_peaks(thread_counts, args.cpu_time)
    if not args.decode_only:
        bench_shapes(args, [GGMLQuantizationType[name] for name in args.types.split(",")], thread_counts, peaks)
    if args.decode or args.decode_only:
        bench_decode(args, thread_counts)


if __name__ == "__main__":
    main()
