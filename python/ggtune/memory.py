"""Memory plan of a training run, computed from the shapes before anything is allocated.

Every figure is bytes. The plan is derived from what the block declares (block.Block.kept_shapes:
the arrays of its Saved record, which a test checks against a real forward; backward_temporary_shapes),
so it follows the family: with gradient checkpointing the forward keeps one [T, C] input per layer
and the backward holds one layer's intermediates at a time; the loss head holds one [chunk, V]
logits block.
"""

from __future__ import annotations

import math
import os
import resource
from dataclasses import dataclass

from . import _core
from .block import Block
from .names import MATRIX_KINDS

F32 = 4


@dataclass
class MemoryPlan:
    runtime: int          # measured before training: interpreter, libraries, tokenizer, data (not the map)
    weights: int          # the mapped base model (resident once its pages are touched)
    lora: int             # LoRA parameters, gradients and Adam's two moments
    activations: int      # what the graph keeps between forward and backward
    checkpoints: int      # per-layer inputs kept by gradient checkpointing
    work: int             # one layer's recompute + backward temporaries, the head's logits chunk

    @property
    def total(self) -> int:
        return self.runtime + self.weights + self.lora + self.activations + self.checkpoints + self.work

    def lines(self) -> list[str]:
        rows = [("runtime: interpreter, tokenizer, data (measured)", self.runtime),
                ("base weights (memory-mapped, stay quantized)", self.weights),
                ("LoRA parameters + gradients + Adam moments", self.lora),
                ("activations kept for the backward", self.activations),
                ("gradient-checkpoint buffers (layer inputs)", self.checkpoints),
                ("work buffers (one layer, loss-head chunk)", self.work)]
        out = ["memory plan:"]
        out += [f"  {label:<46} {mib(size):>10}" for label, size in rows]
        out.append(f"  {'total (expected peak RSS)':<46} {mib(self.total):>10}")
        return out


def mib(n: int) -> str:
    return f"{n / 2**20:8.1f} MiB"


def _bytes(shapes: dict[str, tuple[int, ...]]) -> int:
    return sum(math.prod(shape) for shape in shapes.values()) * F32


def layer_intermediates(weights, n_batch: int, n_ctx: int, lora_ranks: dict[str, int] | None = None) -> int:
    """Bytes one layer's Saved record holds (Block.forward with keep=True), LoRA z = x·Aᵀ included."""
    rank_sum = sum(r for kind, r in (lora_ranks or {}).items() if kind in MATRIX_KINDS)
    return _bytes(Block(weights, None, None).kept_shapes(n_batch, n_ctx)) + n_batch * n_ctx * rank_sum * F32


def layer_backward_temporaries(weights, n_batch: int, n_ctx: int) -> int:
    """Peak bytes of gradient temporaries inside Block.backward, with the attention backward's
    scratch (q and dout transposed, partial dq per key chunk) as the kernel sizes it."""
    hp = weights.hparams
    attention_scratch = _core.attention_backward_scratch_bytes(n_batch, n_ctx, n_ctx, hp.n_head,
                                                               hp.n_head_kv, hp.head_dim)
    return _bytes(Block(weights, None, None).backward_temporary_shapes(n_batch, n_ctx)) + attention_scratch


def plan_memory(weights, n_lora_params: int, n_ctx: int, n_batch: int, *, checkpointing: bool,
                head_chunk: int, runtime_bytes: int, keep_layers: int = 0,
                lora_ranks: dict[str, int] | None = None) -> MemoryPlan:
    hp = weights.hparams
    tokens = n_ctx * n_batch
    per_layer = layer_intermediates(weights, n_batch, n_ctx, lora_ranks)
    residual = tokens * hp.n_embd * F32
    head = (min(head_chunk, tokens) * hp.n_vocab + 3 * tokens * hp.n_embd) * F32  # logits, h, dh, dx
    # The int8 matmul keeps its largest Q8 copy of an input (1 byte + 2 float scales per 32):
    # the head's logits gradient, a chunk x V.
    head += min(head_chunk, tokens) * hp.n_vocab * 5 // 4
    if checkpointing:
        kept = min(keep_layers, hp.n_layer)
        activations, checkpoints = kept * per_layer, (hp.n_layer - kept) * residual
        work = per_layer + layer_backward_temporaries(weights, n_batch, n_ctx) + head
    else:
        activations, checkpoints = hp.n_layer * per_layer, 0
        work = layer_backward_temporaries(weights, n_batch, n_ctx) + head
    return MemoryPlan(runtime=runtime_bytes, weights=os.path.getsize(weights.path),
                      lora=4 * n_lora_params * F32, activations=activations,
                      checkpoints=checkpoints, work=work)


def peak_rss() -> int:
    """Peak resident set size of this process so far, in bytes.

    Linux's VmHWM of /proc/self/status: getrusage's ru_maxrss keeps the peak of the process
    before exec, so a child started by a large parent (a test runner) would report the parent's
    peak. Elsewhere, ru_maxrss (KiB on Linux, bytes on macOS: close enough for a report)."""
    hwm = _proc_status_kib("VmHWM:")
    if hwm is not None:
        return hwm * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _proc_status_kib(field: str) -> int | None:
    """A KiB figure of /proc/self/status (None where there is no such file or field)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def current_anon_rss() -> int:
    """Resident memory of this process that is not a file mapping (the interpreter, libraries'
    heaps, the tokenizer, the data), in bytes. Linux's /proc/self/status; elsewhere the peak RSS."""
    anon = _proc_status_kib("RssAnon:")
    return anon * 1024 if anon is not None else peak_rss()
