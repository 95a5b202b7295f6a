"""CPU seconds per training step on one thread: a speed figure a loaded machine does not distort.

    PYTHONPATH=<tree>/python python benchmarks/cpu_step.py [--keep-layers N] [--iters 6]

bench_finetune.py's SmolLM2 run (Q4_1, ctx 128, batch 8, rank 4 on the seven attention/FFN matrices,
the licences text, seed 1) through ggtune.finetune(threads=1), with time.process_time() taken around
each optimizer step. Prints one JSON line: CPU seconds per step over steps 2.. (the first warms up),
tokens per CPU second, peak RSS, the plan, the layers kept and the losses. Only public behaviour is
used (the step is wrapped from outside), so the same file measures an older tree given on PYTHONPATH.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep-layers", type=int, default=None, help="default: the tree's own default")
    parser.add_argument("--iters", type=int, default=6)
    args = parser.parse_args()
    sys.path.insert(0, HERE)
    import ggtune
    import ggtune.trainer as trainer
    from bench_finetune import NOT_TRAINED, SEED, licences_text
    from ggtune.fetch import smollm2_path

    seconds = []
    step = trainer._TrainState.step

    def timed_step(self):
        start = time.process_time()
        out = step(self)
        seconds.append(time.process_time() - start)
        return out

    trainer._TrainState.step = timed_step
    extra = {} if args.keep_layers is None else dict(keep_layers=args.keep_layers)
    with tempfile.TemporaryDirectory() as tmp:
        r = ggtune.finetune(str(smollm2_path()), licences_text(tmp), lora_out=os.path.join(tmp, "l.gguf"),
                            checkpoint_in="", checkpoint_out="", ctx=128, batch=8, threads=1, lora_r=4,
                            lora_alpha=4.0, adam_iter=args.iters, adam_alpha=1e-3, warmup=0, seed=SEED,
                            save_every=0, verbose=False, **NOT_TRAINED, **extra)
    timed = seconds[1:]
    print(json.dumps(dict(cpu_seconds_per_step=round(sum(timed) / len(timed), 3),
                          tokens_per_cpu_second=round(128 * 8 * len(timed) / sum(timed), 1),
                          steps=[round(s, 2) for s in seconds], peak_rss_mib=round(r.peak_rss_bytes / 2**20, 1),
                          plan_mib=round(r.memory_plan_bytes / 2**20, 1), kept_layers=getattr(r, "kept_layers", None),
                          losses=[round(loss, 4) for loss in r.losses], load_average=round(os.getloadavg()[0], 1))))


if __name__ == "__main__":
    main()
