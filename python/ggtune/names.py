"""The tensor-name vocabulary: tensor kinds, GGUF names, the checkpoint's order, rank options.

A *kind* is a tensor's role ("attn_q", "ffn_norm", ...); its GGUF name is
``blk.<layer>.<kind>.weight`` inside a block and ``<kind>.weight`` outside one (token_embd,
output_norm, output). Every module that names tensors (lora, checkpoint, adapters, trainer, graph,
merge, options) takes its names from here.

Trainable kinds are those of the original finetune (spec original-finetune.md section D), in the
order its checkpoints list them; the other kinds some families carry (q/k norms, sandwich norms,
q/k/v biases, rope frequency factors) are frozen: loaded and used, never adapted.
"""

from __future__ import annotations

# Trainable kinds, in the checkpoint's order (training.lora.rank.* keys, then tensors layer by layer).
MODEL_KINDS = ("token_embd", "output_norm", "output")
LAYER_KINDS = ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output",
               "ffn_norm", "ffn_gate", "ffn_down", "ffn_up")
ALL_KINDS = MODEL_KINDS + LAYER_KINDS
NORM_KINDS = ("attn_norm", "ffn_norm", "output_norm")
MATRIX_KINDS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_down", "ffn_up")
# Kinds trained at --lora-r by default; the norms default to rank 1 (the original's defaults).
MATRIX_DEFAULT_KINDS = ("token_embd", "output") + MATRIX_KINDS

# Frozen per-layer kinds of the other families (gguf-py constants.py names).
FROZEN_NORM_KINDS = ("attn_q_norm", "attn_k_norm", "post_attention_norm", "post_ffw_norm")
BIAS_KINDS = ("attn_q", "attn_k", "attn_v")  # stored as blk.N.<kind>.bias (qwen2)
ROPE_FREQS = "rope_freqs.weight"  # llama 3.x rope frequency factors [n_rot / 2]

# option name of `ggtune finetune` (original spelling, snake_case) -> tensor kind
RANK_OPTIONS = {
    "rank_att_norm": "attn_norm", "rank_ffn_norm": "ffn_norm", "rank_out_norm": "output_norm",
    "rank_tok_embd": "token_embd", "rank_out": "output",
    "rank_wq": "attn_q", "rank_wk": "attn_k", "rank_wv": "attn_v", "rank_wo": "attn_output",
    "rank_w1": "ffn_gate", "rank_w2": "ffn_down", "rank_w3": "ffn_up",
}


def tensor_name(kind: str, layer: int | None = None, suffix: str = "weight") -> str:
    """GGUF tensor name of a kind, e.g. ('attn_q', 3) -> 'blk.3.attn_q.weight'."""
    return f"{kind}.{suffix}" if layer is None else f"blk.{layer}.{kind}.{suffix}"


def kind_of(name: str) -> str:
    """Inverse of tensor_name: 'blk.3.attn_q.weight' -> 'attn_q'; 'token_embd.weight' -> 'token_embd'."""
    return name.split(".")[-2]


def layer_of(name: str) -> int | None:
    """'blk.3.attn_q.weight' -> 3; None outside the blocks."""
    return int(name.split(".")[1]) if name.startswith("blk.") else None


def checkpoint_order(names) -> list[str]:
    """Base tensor names sorted as checkpoints and adapters store them: the model kinds first,
    then layer by layer in LAYER_KINDS order."""
    def key(name: str):
        layer, kind = layer_of(name), kind_of(name)
        return (-1, MODEL_KINDS.index(kind)) if layer is None else (layer, LAYER_KINDS.index(kind))
    return sorted(names, key=key)


def lora_base_names(n_layer: int, ranks: dict[str, int]) -> list[str]:
    """Base tensor names carrying an adapter for these ranks, in the checkpoint's order."""
    names = [tensor_name(kind) for kind in MODEL_KINDS if ranks.get(kind, 0) > 0]
    for layer in range(n_layer):
        names += [tensor_name(kind, layer) for kind in LAYER_KINDS if ranks.get(kind, 0) > 0]
    return names
