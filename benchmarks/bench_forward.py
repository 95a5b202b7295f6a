"""Prompt-processing speed: ggtune's forward pass beside llama.cpp's (llama-cpp-python), same run.

    PYTHONPATH=python python benchmarks/bench_forward.py [--model M] [--tokens 512] [--threads N] [--repeats 3]

Both process the same tokens in one batch of n_tokens (llama.cpp: n_batch = n_ubatch = n_tokens, logits
of the last token only, as in prompt processing) with the same thread count. Runs alternate between
the two and the best of `repeats` is reported, so load from other processes hurts both alike.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np


def seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="GGUF model (default: the cached SmolLM2 Q4_1)")
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precision", default="auto", help="ggtune matmul precision: auto, f32 or bf16")
    parser.add_argument("--decode", type=int, default=32, help="single-token steps timed after a 64-token prompt")
    args = parser.parse_args(argv)

    import llama_cpp

    import ggtune
    from ggtune import _core
    from ggtune.fetch import smollm2_path

    path = args.model or str(smollm2_path())
    tokens = np.random.default_rng(0).integers(100, 40000, args.tokens).astype(np.int32)

    model = ggtune.load_model(path, n_threads=args.threads, precision=args.precision)

    def ggtune_prompt():
        h = model.hidden(tokens[None, :])
        model.output_logits(h[-1:])

    llm = llama_cpp.Llama(path, n_ctx=args.tokens + 16, n_batch=args.tokens, n_ubatch=args.tokens,
                          n_threads=args.threads, n_threads_batch=args.threads, verbose=False)

    def llama_prompt():
        llm.reset()
        llm.eval(tokens.tolist())

    ggtune_prompt()  # warm up: page in the map, first-touch buffers
    llama_prompt()
    t_ggtune, t_llama = [], []
    for _ in range(args.repeats):
        t_ggtune.append(seconds(ggtune_prompt))
        t_llama.append(seconds(llama_prompt))
    tps_g, tps_l = args.tokens / min(t_ggtune), args.tokens / min(t_llama)
    print(f"model {os.path.basename(path)}, {args.tokens} tokens, {args.threads} threads, "
          f"ggtune tier {_core.active_isa()}, precision {args.precision}")
    print(f"ggtune    {tps_g:8.1f} tokens/s  (best of {args.repeats}: {min(t_ggtune):.3f} s)")
    print(f"llama.cpp {tps_l:8.1f} tokens/s  (best of {args.repeats}: {min(t_llama):.3f} s)")
    print(f"ratio ggtune / llama.cpp = {tps_g / tps_l:.2f}")
    if args.decode:
        report_decode(model, llm, tokens[:64], args.decode, args.repeats)


def report_decode(model, llm, prompt: np.ndarray, n_steps: int, repeats: int) -> None:
    """Generation speed: n_steps one-token forward passes through the KV cache, after `prompt`;
    the two take turns `repeats` times and each one's best run counts."""
    steps = np.random.default_rng(1).integers(100, 40000, n_steps).astype(np.int32)

    def ggtune_decode():
        cache = model.new_cache(len(prompt) + n_steps)
        model.hidden(prompt[None, :], cache)
        start = time.perf_counter()
        for token in steps:
            model.output_logits(model.hidden(np.array([[token]], dtype=np.int32), cache))
        return time.perf_counter() - start

    def llama_decode():
        llm.reset()
        llm.eval(prompt.tolist())
        start = time.perf_counter()
        for token in steps:
            llm.eval([int(token)])
        return time.perf_counter() - start

    t_g = t_l = float("inf")
    for _ in range(repeats):
        t_g, t_l = min(t_g, ggtune_decode()), min(t_l, llama_decode())
    print(f"decode: ggtune {n_steps / t_g:.1f} tokens/s, llama.cpp {n_steps / t_l:.1f} tokens/s, "
          f"ratio {t_l / t_g:.2f} (best of {repeats})")


if __name__ == "__main__":
    main()
