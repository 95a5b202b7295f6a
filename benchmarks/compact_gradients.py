"""How much the compact kept activations (bfloat16, block.COMPACT) move the LoRA gradients.

    PYTHONPATH=python python benchmarks/compact_gradients.py [--model smollm2|gemma3|PATH] [--ctx 128] [--batch 2]

One batch of GPL-3 text through the real model, rank-4 adapters on the seven attention/FFN matrices
with a trained-looking B (0.02·N(0, 1); B = 0 would zero every dA). The reference is the float32
path (matmuls f32, every kept array float32). Printed for each array stored alone as bfloat16,
then for block.COMPACT together: the relative error ‖g − g_ref‖ / ‖g_ref‖ over all LoRA gradients
(and the worst single tensor). Beside it, the yardstick: the int8 matmul engine (precision int8,
arrays float32) against the same reference. Single-threaded timing is not the point here.
"""

from __future__ import annotations

import argparse

import numpy as np

from ggtune import block as block_module
from ggtune.fetch import gemma3_path, smollm2_path
from ggtune.graph import Graph, Grads
from ggtune.lora import init_lora
from ggtune.model import load_model

MODELS = {"smollm2": smollm2_path, "gemma3": gemma3_path}
TARGETS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


def batch(model, ctx: int, rows: int):
    text = open("/usr/share/common-licenses/GPL-3", encoding="utf-8").read()
    ids = np.asarray(model.tokenize(text), np.int32)[: rows * (ctx + 1)].reshape(rows, ctx + 1)
    return np.ascontiguousarray(ids[:, :-1]), np.ascontiguousarray(ids[:, 1:])


def gradients(weights, lora, inputs, targets, precision: str, compact: tuple[str, ...]) -> np.ndarray:
    graph = Graph(weights, lora, precision=precision)
    graph.block.kept_dtype = block_module.BF16 if compact else np.dtype(np.float32)
    saved, block_module.COMPACT = block_module.COMPACT, compact
    try:
        grads = Grads.like(lora)
        graph.loss_and_grads(inputs, targets, grads, checkpointing=True)
    finally:
        block_module.COMPACT = saved
    return grads.arrays()


def errors(got: dict, ref: dict) -> tuple[float, float]:
    diff = np.sqrt(sum(float(((got[n] - ref[n]).astype(np.float64) ** 2).sum()) for n in ref))
    norm = np.sqrt(sum(float((ref[n].astype(np.float64) ** 2).sum()) for n in ref))
    worst = max(float(np.linalg.norm(got[n] - ref[n]) / max(np.linalg.norm(ref[n]), 1e-30)) for n in ref)
    return diff / norm, worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--ctx", type=int, default=128)
    parser.add_argument("--batch", type=int, default=2)
    args = parser.parse_args()
    model = load_model(MODELS[args.model]() if args.model in MODELS else args.model)
    weights = model.weights
    lora = init_lora(weights, {kind: 4 for kind in TARGETS}, alpha=4.0, seed=1)
    rng = np.random.default_rng(2)
    for pair in lora.pairs.values():
        pair.b[:] = 0.02 * rng.standard_normal(pair.b.shape)
    inputs, targets = batch(model, args.ctx, args.batch)
    ref = gradients(weights, lora, inputs, targets, "f32", ())
    print(f"{args.model}: ctx {args.ctx}, batch {args.batch}; relative error of the LoRA gradients "
          "against float32 (all, worst tensor)")
    fam = weights.arch.family
    arrays = [a for a in ("q", "k", "v", "att", "x1", "gate", "up") if a]
    if fam.post_norms:
        arrays += ["o", "f"]
    rows = [(f"{a} as bf16", "f32", (a,)) for a in arrays]
    rows += [(f"block.COMPACT as bf16 ({', '.join(block_module.COMPACT)})", "f32", block_module.COMPACT),
             ("yardstick: int8 matmuls, arrays f32", "int8", ()),
             ("int8 matmuls + block.COMPACT as bf16 (the default)", "int8", block_module.COMPACT)]
    for label, precision, compact in rows:
        total, worst = errors(gradients(weights, lora, inputs, targets, precision, compact), ref)
        print(f"  {label:<62} {total:.2e}  {worst:.2e}")


if __name__ == "__main__":
    main()
