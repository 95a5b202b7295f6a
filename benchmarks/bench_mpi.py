"""Data-parallel finetuning over MPI: 1 rank x 2 threads against 2 ranks x 1 thread on this machine,
the gradient exchange's share of an iteration, and a model of the scaling to more machines.

    PYTHONPATH=python python benchmarks/bench_mpi.py [--warmup 2] [--iters 6] [--rounds 1]
        [--bandwidth-gbit 10] [--latency-us 50]

Both runs: SmolLM2-135M-Instruct Q4_1, ctx 128, global batch 8, LoRA rank 4 on the seven
attention/FFN matrices (bench_finetune.py's setup and data), `--warmup` untimed then `--iters` timed
iterations, each in a fresh interpreter (the 2-rank one under `mpirun -n 2`, ranks bound to a core each,
mpirun's default for 2 ranks). Reported: tokens/s (median iteration), the time each step spent in the
gradient exchange (waiting for the slower rank included) and a bare all-reduce of the same buffer
when both ranks are ready (20 repeats after a barrier: the transfer alone).

The scaling table is a model, not a measurement: N machines like this one, each training batch 8
per step with its 2 cores at the measured 1-rank step time t_c (weak scaling, global batch 8N), plus
a ring all-reduce of the measured gradient bytes over Ethernet:
    t_ar(N) = 2(N-1)/N · bytes / bandwidth + 2(N-1) · latency
tokens/s(N) = N · 1024 / (t_c + t_ar(N)).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
RESULT_TAG = "BENCH_RESULT "
TOKENS_PER_STEP = 128 * 8


def child(p: dict) -> None:
    """One ggtune.finetune() run on this rank; rank 0 prints the result line."""
    import ggtune
    from ggtune.adapters import read_gguf_adapter
    from ggtune.distributed import launcher_size

    sys.path.insert(0, HERE)
    from bench_finetune import NOT_TRAINED

    result = ggtune.finetune(p["model"], p["data"], lora_out=os.path.join(p["workdir"], "lora.gguf"),
                             checkpoint_in="", checkpoint_out="", ctx=128, batch=8, threads=p["threads"], lora_r=4,
                             lora_alpha=4.0, **NOT_TRAINED, adam_iter=p["warmup"] + p["iters"], warmup=10,
                             seed=1, save_every=0, verbose=False)
    timed = slice(p["warmup"], None)
    tokens_per_second = float(np.median(result.tokens_per_second[timed]))
    exchange = float(np.median(result.exchange_seconds[timed]))
    bare, rank = 0.0, 0
    n_params = 0
    if launcher_size():  # under mpirun: the all-reduce alone, both ranks ready
        from mpi4py import MPI

        rank = MPI.COMM_WORLD.Get_rank()
        n_params = sum(a.size + b.size for a, b in read_gguf_adapter(result.written[-1])[1].values()) \
            if rank == 0 else 0
        n_params = MPI.COMM_WORLD.bcast(n_params)
        buffer = np.ones(n_params, np.float32)
        times = []
        for _ in range(20):
            MPI.COMM_WORLD.Barrier()
            started = time.perf_counter()
            MPI.COMM_WORLD.Allreduce(MPI.IN_PLACE, buffer)
            times.append(time.perf_counter() - started)
        bare = float(np.median(times))
    else:
        n_params = sum(a.size + b.size for a, b in read_gguf_adapter(result.written[-1])[1].values())
    if rank == 0:
        print(RESULT_TAG + json.dumps(dict(tokens_per_second=tokens_per_second, exchange=exchange,
                                           step=TOKENS_PER_STEP / tokens_per_second, bare=bare,
                                           n_params=n_params)), flush=True)


def run(cmd: list[str]) -> dict:
    done = subprocess.run(cmd, capture_output=True, text=True)
    for line in done.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG):])
    raise RuntimeError(f"{' '.join(cmd[:4])} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")


def ring_allreduce_seconds(n: int, n_bytes: int, bandwidth_bytes: float, latency: float) -> float:
    if n == 1:
        return 0.0
    return 2 * (n - 1) / n * n_bytes / bandwidth_bytes + 2 * (n - 1) * latency


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=1, help="alternate the two runs this often, keep each one's best")
    parser.add_argument("--bandwidth-gbit", type=float, default=10.0)
    parser.add_argument("--latency-us", type=float, default=50.0, help="per message, one hop (TCP on 10 GbE)")
    args = parser.parse_args()

    sys.path.insert(0, HERE)
    from bench_finetune import licences_text
    from ggtune.fetch import smollm2_path

    mpirun = shutil.which("mpirun", path=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    root = ["--allow-run-as-root"] if os.geteuid() == 0 else []
    with tempfile.TemporaryDirectory() as workdir:
        base = dict(model=str(smollm2_path()), data=licences_text(workdir), workdir=workdir, warmup=args.warmup,
                    iters=args.iters)
        me = [sys.executable, os.path.abspath(__file__), "--child"]
        print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, {time.strftime('%Y-%m-%d %H:%M:%S')}; "
              f"SmolLM2 Q4_1, ctx 128, batch 8, rank 4, {args.warmup} warm-up + {args.iters} timed iterations")
        best: dict[str, dict] = {}
        for _ in range(args.rounds):
            for label, cmd in (("1 rank x 2 threads", me + [json.dumps({**base, "threads": 2})]),
                               ("2 ranks x 1 thread", [mpirun, *root, "-n", "2", *me,
                                                       json.dumps({**base, "threads": 1})])):
                r = run(cmd)
                if label not in best or r["tokens_per_second"] > best[label]["tokens_per_second"]:
                    best[label] = r
        for label, r in best.items():
            share = r["exchange"] / r["step"]
            print(f"  {label:<20} {r['tokens_per_second']:8.1f} tok/s  step {r['step']:.2f} s  "
                  f"exchange {r['exchange'] * 1e3:7.1f} ms ({100 * share:4.1f}% of the step)"
                  + (f"  bare all-reduce {r['bare'] * 1e3:.2f} ms" if r["bare"] else ""))
        one, two = best["1 rank x 2 threads"], best["2 ranks x 1 thread"]
        n_bytes = 4 * two["n_params"]
        print(f"gradient buffer: {two['n_params']:,} float32 = {n_bytes / 2**20:.2f} MiB; 2 ranks / 1 rank: "
              f"{two['tokens_per_second'] / one['tokens_per_second']:.2f}x; bare all-reduce here "
              f"{n_bytes / max(two['bare'], 1e-9) / 1e9:.2f} GB/s")
        bandwidth = args.bandwidth_gbit * 1e9 / 8
        print(f"model (not measured): N machines like this one at t_c = {one['step']:.2f} s per batch-8 step, "
              f"ring all-reduce over {args.bandwidth_gbit:g} Gb/s, {args.latency_us:g} us per hop")
        for n in (1, 2, 4, 8, 16):
            t_ar = ring_allreduce_seconds(n, n_bytes, bandwidth, args.latency_us * 1e-6)
            step = one["step"] + t_ar
            print(f"  {n:2d} machines: all-reduce {t_ar * 1e3:6.1f} ms, {n * TOKENS_PER_STEP / step:8.0f} tok/s, "
                  f"efficiency {100 * one['step'] / step:6.2f}%")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        child(json.loads(sys.argv[2]))
    else:
        main()
