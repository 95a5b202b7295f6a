"""What users say about their adapters, turned into ranks and scales: ``--lora-targets`` and ``--rslora``.

Scale. Standard LoRA multiplies B·A by s = alpha / r; rank-stabilized LoRA (rsLoRA, Kalajdzievski
2023; PEFT's ``use_rslora``) by s = alpha / sqrt(r), so that raising the rank does not shrink the
update. llama.cpp's GGUF adapter has no rslora key: it always applies adapter.lora.alpha / r with each
tensor's own rank. An rsLoRA adapter is therefore written with

    stored alpha = alpha · sqrt(r0)                 (r0 = --lora-r)

which makes llama.cpp's alpha_stored / r0 equal alpha / sqrt(r0); a tensor of another rank r has its
B written multiplied by sqrt(r / r0), so llama.cpp's alpha_stored / r times it is alpha / sqrt(r) too.
The adapter is then exact in llama.cpp, ggtune merge and PEFT export, which all read alpha / r; the
training checkpoint keeps the user's alpha, the rslora flag and the unscaled B (checkpoint.py).
"""

from __future__ import annotations

import math

import numpy as np

from .names import ALL_KINDS, MATRIX_DEFAULT_KINDS, MATRIX_KINDS

# PEFT's module names for the kinds (LLaMA naming), and the groups a target list may name.
PEFT_ALIASES = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
                "gate_proj": "ffn_gate", "down_proj": "ffn_down", "up_proj": "ffn_up",
                "embed_tokens": "token_embd", "lm_head": "output"}
GROUPS = {"all-linear": MATRIX_KINDS,  # as PEFT's "all-linear": every layer matrix, not the head
          "attn": tuple(k for k in MATRIX_KINDS if k.startswith("attn_")),
          "ffn": tuple(k for k in MATRIX_KINDS if k.startswith("ffn_"))}


def parse_targets(spec: str) -> frozenset[str]:
    """``attn_q,attn_v`` / ``q_proj,v_proj`` / ``all-linear`` / ``attn,ffn`` -> the tensor kinds;
    ValueError naming the option for an unknown name."""
    kinds: set[str] = set()
    for word in (w.strip() for w in spec.split(",")):
        if not word:
            continue
        if word in GROUPS:
            kinds.update(GROUPS[word])
        elif word in ALL_KINDS:
            kinds.add(word)
        elif word in PEFT_ALIASES:
            kinds.add(PEFT_ALIASES[word])
        else:
            known = ", ".join(list(GROUPS) + list(ALL_KINDS))
            raise ValueError(f"--lora-targets: unknown target {word!r}; expected a comma list of {known} "
                             f"(or PEFT names like q_proj)")
    if not kinds:
        raise ValueError(f"--lora-targets: no target in {spec!r}")
    return frozenset(kinds)


def default_rank(kind: str, lora_r: int, targets: frozenset[str] | None) -> int:
    """A kind's rank when no --rank-* flag names it: --lora-r for targeted kinds, 0 for the rest;
    without --lora-targets the original's defaults (lora_r for matrices, 1 for norms)."""
    if targets is not None and kind not in targets:
        return 0
    return lora_r if kind in MATRIX_DEFAULT_KINDS else 1


def lora_scale(alpha: float, rank: int, rslora: bool) -> float:
    """s in W + s·B·A: alpha / sqrt(r) with rslora, else alpha / r."""
    return float(alpha) / (math.sqrt(rank) if rslora else rank)


def adapter_alpha_and_factors(alpha: float, lora_r: int, rslora: bool,
                              tensors: dict[str, tuple[np.ndarray, np.ndarray]]):
    """(alpha to store, {name: (A, B to store)}) such that a reader applying alpha_stored / r gives
    every tensor its training scale (see the module docstring)."""
    if not rslora:
        return float(alpha), tensors
    stored = float(alpha) * math.sqrt(lora_r)
    out = {}
    for name, (a, b) in tensors.items():
        r = a.shape[0]
        out[name] = (a, b if r == lora_r else (b * np.float32(math.sqrt(r / lora_r))).astype(np.float32))
    return stored, out
