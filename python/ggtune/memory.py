"""Memory plan of a training run, computed from the shapes before anything is allocated.

Every figure is bytes. The plan is derived from what the block declares (block.Block.kept_layout:
the arrays of its Saved record with their dtypes, which a test checks against a real forward;
backward_temporary_layout), so it follows the family and the compact layout: the forward keeps
every layer's [T, C] input; a layer that keeps its activations (the last `kept` ones) holds its
Saved record from the forward to its backward, the others are recomputed one at a time in the
backward; the loss head holds one [chunk, V] logits block.

How many layers keep their activations: --keep-layers when given, every layer without gradient
checkpointing, else the most whose plan stays within the memory budget (choose_kept_layers).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
from dataclasses import dataclass

from . import _core
from .block import Block, kept_dtype
from .names import MATRIX_KINDS
from .options import DEFAULT_BUDGET_MIB

F32 = 4


@dataclass
class MemoryPlan:
    runtime: int          # measured before training: interpreter, libraries, tokenizer, data (not the map)
    weights: int          # the mapped base model (resident once its pages are touched)
    lora: int             # LoRA parameters, gradients and Adam's two moments
    activations: int      # what the layers that keep their activations hold between forward and backward
    checkpoints: int      # every layer's input [T, C], kept through the forward
    work: int             # one layer's recompute + backward temporaries, the head's logits chunk
    kept_layers: int = 0  # layers that keep their activations (the last ones); the others are recomputed
    n_layer: int = 0
    per_layer: int = 0    # bytes of one layer's kept activations
    why: str = ""         # how kept_layers was chosen, for the printed plan

    @property
    def total(self) -> int:
        return self.runtime + self.weights + self.lora + self.activations + self.checkpoints + self.work

    def lines(self) -> list[str]:
        rows = [("runtime: interpreter, tokenizer, data (measured)", self.runtime),
                ("base weights (memory-mapped, stay quantized)", self.weights),
                ("LoRA parameters + gradients + Adam moments", self.lora),
                (f"activations kept by {self.kept_layers} of {self.n_layer} layers", self.activations),
                ("layer inputs (one [tokens, n_embd] per layer)", self.checkpoints),
                ("work buffers (one layer, loss-head chunk)", self.work)]
        out = ["memory plan:"]
        out += [f"  {label:<46} {mib(size):>10}" for label, size in rows]
        out.append(f"  {'total (expected peak RSS)':<46} {mib(self.total):>10}")
        if self.why:
            out.append(f"  {self.why}")
        return out


def mib(n: int) -> str:
    return f"{n / 2**20:8.1f} MiB"


def _bytes(layout) -> int:
    return sum(kept.nbytes for kept in layout.values())


def layer_intermediates(weights, n_batch: int, n_ctx: int, lora_ranks: dict[str, int] | None = None,
                        precision: str = "f32") -> int:
    """Bytes one layer's Saved record holds (Block.forward with keep=True), LoRA z = x·Aᵀ included,
    the layer input x not (the graph keeps it for every layer)."""
    rank_sum = sum(r for kind, r in (lora_ranks or {}).items() if kind in MATRIX_KINDS)
    block = Block(weights, None, None, kept=kept_dtype(precision))
    return _bytes(block.kept_layout(n_batch, n_ctx)) + n_batch * n_ctx * rank_sum * F32


def layer_backward_temporaries(weights, n_batch: int, n_ctx: int, precision: str = "f32") -> int:
    """Peak bytes of float32 temporaries inside Block.backward, with the attention backward's
    scratch (q and dout transposed, partial dq per key chunk) as the kernel sizes it."""
    hp = weights.hparams
    attention_scratch = _core.attention_backward_scratch_bytes(n_batch, n_ctx, n_ctx, hp.n_head,
                                                               hp.n_head_kv, hp.head_dim)
    block = Block(weights, None, None, kept=kept_dtype(precision))
    return _bytes(block.backward_temporary_layout(n_batch, n_ctx)) + attention_scratch


def plan_memory(weights, n_lora_params: int, n_ctx: int, n_batch: int, *, checkpointing: bool,
                head_chunk: int, runtime_bytes: int, keep_layers: int | None = 0,
                lora_ranks: dict[str, int] | None = None, precision: str = "f32",
                budget_mib: float | None = None) -> MemoryPlan:
    """The plan of a run. keep_layers None: choose_kept_layers within budget_mib (None: the
    default budget, a target only); an explicit budget_mib is also a limit the plan must keep."""
    hp = weights.hparams
    tokens = n_ctx * n_batch
    per_layer = layer_intermediates(weights, n_batch, n_ctx, lora_ranks, precision)
    head = (min(head_chunk, tokens) * hp.n_vocab + 3 * tokens * hp.n_embd) * F32  # logits, h, dh, dx
    # The int8 matmul keeps its largest Q8 copy of an input (1 byte + 2 float scales per 32):
    # the head's logits gradient, a chunk x V.
    head += min(head_chunk, tokens) * hp.n_vocab * 5 // 4
    work = layer_backward_temporaries(weights, n_batch, n_ctx, precision) + head
    if checkpointing:
        work += per_layer  # the recomputed layer's Saved record
    plan = MemoryPlan(runtime=runtime_bytes, weights=os.path.getsize(weights.path),
                      lora=4 * n_lora_params * F32, activations=0,
                      checkpoints=hp.n_layer * tokens * hp.n_embd * F32, work=work, n_layer=hp.n_layer,
                      per_layer=per_layer)
    if not checkpointing:
        kept, why = hp.n_layer, "every layer keeps its activations (--no-checkpointing)"
    elif keep_layers is not None:
        kept = min(keep_layers, hp.n_layer)
        why = f"{kept} of {hp.n_layer} layers keep their activations (--keep-layers {keep_layers})"
    else:
        kept, why = choose_kept_layers(plan, budget_mib)
    plan.kept_layers, plan.activations, plan.why = kept, kept * per_layer, why
    if budget_mib is not None and plan.total > budget_mib * 2**20:
        raise ValueError(f"--memory-budget {budget_mib:g}: the memory plan needs {mib(plan.total).strip()} "
                         f"with {kept} of {hp.n_layer} layers keeping their activations; raise the budget or "
                         "lower --batch or --ctx" + (" or --keep-layers" if kept else ""))
    return plan


def choose_kept_layers(plan: MemoryPlan, budget_mib: float | None) -> tuple[int, str]:
    """(layers, reason): the most layers that can keep their activations (from the last one down)
    with the plan's total within the budget and what check_fits lets this machine hold. `plan` is
    the plan with none kept; each kept layer adds plan.per_layer."""
    budget = (DEFAULT_BUDGET_MIB if budget_mib is None else budget_mib) * 2**20
    available, physical = machine_memory()
    machine = min(physical, available + plan.runtime + plan.weights)  # check_fits' two limits
    limit, what = (budget, "the memory budget") if budget <= machine else (machine, "this machine's memory")
    room = limit - plan.total
    kept = 0 if room <= 0 or plan.per_layer <= 0 else min(plan.n_layer, int(room // plan.per_layer))
    size = f"{mib(plan.per_layer).strip()} each"
    source = f"{budget / 2**20:g} MiB" + (" (--memory-budget)" if budget_mib is not None else
                                          " (the default --memory-budget)")
    if what != "the memory budget":
        source = f"{mib(limit).strip()} available"
    if kept == plan.n_layer:
        return kept, f"every layer keeps its activations ({size}): the whole plan fits {what}, {source}"
    recomputed = f"the other {plan.n_layer - kept} are recomputed in the backward"
    if kept == 0:
        over = "the plan is above" if room <= 0 else "one layer's would take the plan past"
        return 0, (f"no layer keeps its activations ({size}), each is recomputed in the backward: "
                   f"{over} {what}, {source}")
    return kept, (f"{kept} of {plan.n_layer} layers keep their activations ({size}), {recomputed}: "
                  f"the most that fit {what}, {source}")


# glibc mallopt parameters and their defaults (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
DEFAULT_TRIM_THRESHOLD = DEFAULT_MMAP_THRESHOLD = 128 * 1024
# glibc's own ceiling for the threshold it raises on the fly (DEFAULT_MMAP_THRESHOLD_MAX, 64-bit);
# larger blocks (the head's 50 MiB logits chunk) stay mapped, where transparent huge pages keep
# their faults few
MMAP_THRESHOLD_MAX = 32 * 2**20


@contextlib.contextmanager
def retained_heap():
    """Training with glibc's malloc keeping what the arrays free for the next ones, instead of
    handing it back to the system: an iteration frees and allocates the same few hundred MiB
    (kept activations, per-layer temporaries), and memory handed back returns as page faults,
    ~2 µs per 4 KiB page on the benchmark machine (SmolLM2 at ctx 128, batch 8: 10,000-12,000
    faults and 35-60 ms of system time per iteration; 25 faults with this, docs/design.md). The
    allocations are the same, but the retained heap fragments: SmolLM2's default run peaks 4%
    above its plan (753 vs 725 MiB, docs/benchmarks.md), a margin the plan does not model. On exit glibc's default thresholds return (fixed: its startup adjustment
    of the mmap threshold to the blocks freed stays off in this process) and the free memory is
    handed back. Where malloc is not glibc's (no mallopt), nothing changes."""
    try:
        libc = ctypes.CDLL(None)
        mallopt, malloc_trim = libc.mallopt, libc.malloc_trim
    except (OSError, AttributeError):
        yield
        return
    mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)  # arrays below it come from the heap, reused
    mallopt(M_TRIM_THRESHOLD, 2**30)               # the heap's free top stays mapped
    try:
        yield
    finally:
        mallopt(M_TRIM_THRESHOLD, DEFAULT_TRIM_THRESHOLD)
        mallopt(M_MMAP_THRESHOLD, DEFAULT_MMAP_THRESHOLD)
        malloc_trim(0)


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


def machine_memory() -> tuple[int, int]:
    """(available, physical) bytes of RAM: /proc/meminfo's MemAvailable and MemTotal on Linux,
    else the physical pages (sysconf) for both."""
    found = {}
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("MemAvailable", "MemTotal"):
                    found[key] = int(value.split()[0]) * 1024
    except OSError:
        pass
    physical = found.get("MemTotal") or os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return found.get("MemAvailable", physical), physical


def check_fits(plan: MemoryPlan, what: str) -> None:
    """Refuses a plan the machine cannot hold, before any long work: the memory still to be
    allocated (everything but the measured runtime and the mapped weights, whose pages the kernel
    can drop and re-read) against MemAvailable, the whole plan against the physical RAM."""
    available, physical = machine_memory()
    to_allocate = plan.lora + plan.activations + plan.checkpoints + plan.work
    if to_allocate > available or plan.total > physical:
        raise ValueError(f"{what}: the memory plan needs {mib(plan.total).strip()} in all "
                         f"({mib(to_allocate).strip()} still to allocate); this machine has "
                         f"{mib(available).strip()} available of {mib(physical).strip()}: lower --batch or "
                         "--ctx (gradient checkpointing, on by default, also saves memory)")
