"""Where one training step's time goes, kernel by kernel, in CPU time (robust to a loaded machine).

    PYTHONPATH=python python benchmarks/bench_step_kernels.py [--model PATH] [--iters 5] [--threads 1]

SmolLM2-135M-Instruct Q4_1 (the benchmark's model), ctx 128, batch 8, LoRA rank 4 on the seven
attention/FFN matrices (B = 0.01·N(0,1), so every gradient is non-zero), every layer keeping its
activations, precision auto: `Graph.loss_and_grads` on one fixed random batch, `--iters` times.
Every `_core` call is timed through profile.Profiler; at 1 thread (the default) its clock is the
thread's CPU time, so another process on the machine slows it only through shared caches and
memory, not by taking the core. Printed: per kernel the smallest time of an iteration after the
first (the first one maps the model and grows the heap), the "glue" (the step's time outside the
kernels), the step's minor page faults, and a checksum of the gradients (sum of |g|): equal
checksums across two builds mean the same gradients. Training's heap setting (memory.retained_heap)
is on; a build from before it runs without (as its training did).
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import time
import types

import numpy as np

from ggtune import _core, memory, profile
from ggtune.graph import Graph, Grads
from ggtune.lora import init_lora
from ggtune.model import load_model
from ggtune.names import ALL_KINDS

KINDS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
SMOLLM2 = "/root/.cache/ggtune/SmolLM2-135M-Instruct.Q4_1.gguf"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=SMOLLM2)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    if args.iters < 2:
        ap.error("--iters: expected at least 2 (the first is not counted)")
    model = load_model(args.model, n_threads=args.threads, precision="auto")
    weights = model.weights
    lora = init_lora(weights, {kind: 4 if kind in KINDS else 0 for kind in ALL_KINDS}, 4.0, seed=1)
    rng = np.random.default_rng(0)
    for pair in lora.pairs.values():
        pair.b[...] = rng.standard_normal(pair.b.shape) * 0.01
    inputs = rng.integers(0, weights.hparams.n_vocab, (8, 128)).astype(np.int32)
    targets = np.roll(inputs, -1, axis=1)
    clock = time.thread_time if args.threads == 1 else time.perf_counter
    profiler = profile.Profiler(True)
    profile.time = types.SimpleNamespace(perf_counter=clock)  # the profiler's clock, in its module only
    graph = Graph(weights, lora, precision="auto", kernels=profiler.wrap(_core))
    grads = Grads.like(lora)
    best: dict[str, float] = {}
    with getattr(memory, "retained_heap", contextlib.nullcontext)():
        for it in range(args.iters):
            grads.reset()
            faults, start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, clock()
            graph.loss_and_grads(inputs, targets, grads, keep_layers=weights.hparams.n_layer)
            step = clock() - start
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
            kernels = dict(profiler.kernels)
            profiler.kernels.clear()
            print(f"step {it}: {step * 1e3:.1f} ms, kernels {sum(kernels.values()) * 1e3:.1f} ms, "
                  f"{faults} page faults", flush=True)
            if it == 0:
                continue
            kernels["(glue: the step outside the kernels)"] = step - sum(kernels.values())
            kernels["(step)"] = step
            for name, t in kernels.items():
                best[name] = min(best.get(name, t), t)
    print(f"best of steps 1..{args.iters - 1}, {'CPU time of 1 thread' if args.threads == 1 else 'wall'}:")
    for name, t in sorted(best.items(), key=lambda kv: -kv[1]):
        print(f"  {name:40s} {t * 1e3:8.1f} ms  ({profiler.calls[name] // args.iters} calls)")
    print("gradient checksum", sum(float(np.abs(a).sum()) for a in grads.arrays().values()))


if __name__ == "__main__":
    main()
