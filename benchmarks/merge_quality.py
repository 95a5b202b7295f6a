"""Merging into a quantized model keeps its quality (issue 5): SmolLM2-135M-Instruct Q4_1.

With --lora FILE: a trained adapter (e.g. the one benchmarks/finetune_quality.py writes, trained on
the first 80% of the licences' tokens), scored as that benchmark scores it: mean cross-entropy over
non-overlapping 128-token windows of the held-out last 20%.

Without it nothing is trained: a seeded random rank-4 adapter (A ~ N(0, a_std²), B ~ N(0, b_std²), alpha = r,
so scale 1) sits on the seven attention/FFN matrices of every layer, strong enough to move the
loss by a few percent. `ggtune merge` folds it in with --outtype same (each adapted Q4_1 matrix is
dequantized, gets B·A added and is re-quantized to Q4_1). Printed: the held-out mean cross-entropy
(the first --tokens tokens of GPL-3, one window) of the base model, of base + adapter applied at
run time, and of the merged model, and the merged model's relative difference to base + adapter.

Each merge is made with every --requantize mode asked for (default gptq; GPTQ calibrates on
--calibration, default the bundled Apache-2.0 text).

    python benchmarks/merge_quality.py [--lora FILE] [--tokens 512] [--outtype same [--outtype q8_0 ...]]
        [--requantize gptq [--requantize nearest]] [--calibration FILE] [--a-std 0.3] [--out DIR]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

from ggtune.adapters import write_gguf_adapter
from ggtune.fetch import smollm2_path
from ggtune.gguf_io import read_model_gguf
from ggtune.demo import heldout_cross_entropy, split_by_tokens
from ggtune.merge import OUTTYPE_CHOICES, REQUANTIZE_CHOICES, merge
from ggtune.model import load_model

TEXT = "/usr/share/common-licenses/GPL-3"
TARGETS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


def write_seeded_adapter(path, model_path, layers=None, rank: int = 4, a_std: float = 0.3,
                         b_std: float = 0.02, seed: int = 0) -> str:
    """A random GGUF adapter on TARGETS of `layers` (default all), alpha = rank (scale 1)."""
    rng = np.random.default_rng(seed)
    weights = read_model_gguf(model_path)
    matrices = weights.weights_by_name()
    layers = range(weights.hparams.n_layer) if layers is None else layers
    pairs = {}
    for layer in layers:
        for kind in TARGETS:
            name = f"blk.{layer}.{kind}.weight"
            w = matrices[name]
            pairs[name] = ((a_std * rng.standard_normal((rank, w.n_in))).astype(np.float32),
                           (b_std * rng.standard_normal((w.n_out, rank))).astype(np.float32))
    write_gguf_adapter(path, pairs, alpha=float(rank))
    return os.fspath(path)


def held_out_tokens(model, n: int) -> np.ndarray:
    """The first n tokens of GPL-3 (nothing is trained on anything, so any text is held out)."""
    with open(TEXT, encoding="utf-8") as f:
        text = f.read()
    tokens = model.tokenize(text[: 16 * n])  # English prose: about 4-5 characters a token
    if len(tokens) < n:
        tokens = model.tokenize(text)
    return np.asarray(tokens[:n], dtype=np.int32)


def licence_heldout(model_path: str) -> list[int]:
    """finetune_quality.py's held-out tokens: the last 20% of the licences it trains on."""
    texts = ["GPL-3", "LGPL-3", "Apache-2.0", "MPL-2.0"]  # finetune_quality.LICENSES
    corpus = "".join(open(f"/usr/share/common-licenses/{name}", encoding="utf-8").read() for name in texts)
    return split_by_tokens(load_model(model_path), corpus, 0.8)[1]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="SmolLM2 Q4_1 GGUF (default: the cached one)")
    parser.add_argument("--lora", default=None, help="a trained GGUF adapter (default: a seeded random one)")
    parser.add_argument("--tokens", type=int, default=512, help="held-out tokens scored (random adapter; one window)")
    parser.add_argument("--outtype", action="append", choices=OUTTYPE_CHOICES, default=None,
                        help="merge output types to compare (default: same)")
    parser.add_argument("--requantize", action="append", choices=REQUANTIZE_CHOICES, default=None,
                        help="re-quantization modes to compare (default: gptq)")
    parser.add_argument("--calibration", default=None, help="GPTQ calibration text (default: the bundled one)")
    parser.add_argument("--a-std", type=float, default=0.3, help="standard deviation of the adapter's A")
    parser.add_argument("--b-std", type=float, default=0.02, help="standard deviation of the adapter's B")
    parser.add_argument("--out", default=None, help="directory for the adapter and merged models (default: temporary)")
    args = parser.parse_args(argv)
    model_path = args.model or str(smollm2_path())
    out_dir = args.out or tempfile.mkdtemp(prefix="ggtune-merge-")
    os.makedirs(out_dir, exist_ok=True)

    if args.lora:
        adapter = args.lora
        heldout = licence_heldout(model_path)

        def score(path, lora=None):
            return heldout_cross_entropy(path, heldout, 128, lora=lora)

        print(f"model {model_path}\nadapter {adapter}\nheld-out: last 20% of the licences' tokens "
              f"({len(heldout)} tokens, 128-token windows)")
    else:
        adapter = write_seeded_adapter(os.path.join(out_dir, "adapter.gguf"), model_path, a_std=args.a_std,
                                       b_std=args.b_std)
        tokens = held_out_tokens(load_model(model_path), args.tokens)

        def score(path, lora=None):
            return load_model(path, lora=[(lora, 1.0)] if lora else None).cross_entropy(tokens)

        print(f"model {model_path}\nheld-out: first {len(tokens)} tokens of {TEXT}\nadapter: rank 4, alpha 4, "
              f"A std {args.a_std}, B std {args.b_std}, seed 0, seven matrices of every layer")
    base_ce, adapter_ce = score(model_path), score(model_path, adapter)
    print(f"base                   CE {base_ce:.4f}")
    print(f"base + adapter         CE {adapter_ce:.4f}  ({(adapter_ce - base_ce) / base_ce:+.2%} vs base)", flush=True)
    for outtype in args.outtype or ["same"]:
        for mode in args.requantize or ["gptq"]:
            merged_path = os.path.join(out_dir, f"merged-{outtype}-{mode}.gguf")
            start = time.perf_counter()
            merge(model_path, [(adapter, 1.0)], merged_path, outtype=outtype, requantize=mode,
                  calibration=args.calibration)
            seconds = time.perf_counter() - start
            merged_ce = score(merged_path)
            print(f"merged --outtype {outtype:5s} --requantize {mode:7s} CE {merged_ce:.4f}  "
                  f"({(merged_ce - adapter_ce) / adapter_ce:+.3%} vs base + adapter; merge {seconds:.1f} s, "
                  f"{os.path.getsize(merged_path) / 2**20:.0f} MiB)", flush=True)


if __name__ == "__main__":
    main()
