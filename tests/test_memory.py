"""The memory plan (python/ggtune/memory.py): how its terms move with the training options, and
how many layers keep their activations."""

import pytest

from ggtune import memory
from ggtune.block import BF16, Block
from ggtune.gguf_io import read_model_gguf
from ggtune.memory import layer_intermediates, plan_memory
from tiny_models import write_tiny_llama

ARGS = dict(n_lora_params=1000, n_ctx=16, n_batch=2, head_chunk=256, runtime_bytes=0)


@pytest.fixture
def weights(tmp_path):
    return read_model_gguf(write_tiny_llama(tmp_path / "m.gguf", n_layer=3))


def test_keeping_layers_adds_their_activations(weights):
    hp = weights.hparams
    plan = {keep: plan_memory(weights, checkpointing=True, keep_layers=keep, **ARGS) for keep in (0, 1, 3, 9)}
    per_layer, residual = layer_intermediates(weights, 2, 16), 16 * 2 * hp.n_embd * 4
    for keep, p in plan.items():  # every layer's input is kept, whatever is kept besides
        assert p.checkpoints == 3 * residual and p.activations == min(keep, 3) * per_layer
        assert p.kept_layers == min(keep, 3) and f"--keep-layers {keep}" in p.why
    assert plan[1].total - plan[0].total == per_layer
    assert plan[9].total == plan[3].total  # more than the model's layers keeps them all
    no_checkpointing = plan_memory(weights, checkpointing=False, **ARGS)
    assert no_checkpointing.activations == plan[3].activations and no_checkpointing.kept_layers == 3
    assert no_checkpointing.work == plan[3].work - per_layer  # no recomputed layer's record
    assert "--no-checkpointing" in no_checkpointing.why


def test_the_compact_layout_halves_the_large_arrays(weights):
    """bf16 COMPACT arrays take 2 bytes an element; the backward's float32 copies of those it widens
    (block.WIDENED: the others' kernels read the bf16 bits) count as work."""
    f32, bf16 = Block(weights, None, None).kept_layout(2, 16), Block(weights, None, None, kept=BF16).kept_layout(2, 16)
    assert set(f32) == set(bf16) and {"h", "h2", "act", "x"}.isdisjoint(f32)
    for name in f32:
        want = f32[name].nbytes // 2 if name in ("v", "att", "x1", "gate", "up") else f32[name].nbytes
        assert bf16[name].nbytes == want and bf16[name].shape == f32[name].shape, name
    assert layer_intermediates(weights, 2, 16, precision="auto") == sum(k.nbytes for k in bf16.values())
    work_f32 = memory.layer_backward_temporaries(weights, 2, 16, "f32")
    work_bf16 = memory.layer_backward_temporaries(weights, 2, 16, "auto")
    widened = f32["v"].nbytes
    assert work_bf16 - work_f32 == widened


def budget_for(weights, keep: int, **extra) -> float:
    """The budget (MiB) that has room for exactly `keep` layers."""
    none = plan_memory(weights, checkpointing=True, keep_layers=0, **ARGS, **extra)
    return (none.total + keep * none.per_layer + none.per_layer // 2) / 2**20


def test_the_budget_chooses_how_many_layers_keep_their_activations(weights, monkeypatch):
    monkeypatch.setattr(memory, "machine_memory", lambda: (2**40, 2**40))
    for keep in (0, 1, 2, 3):
        plan = plan_memory(weights, checkpointing=True, keep_layers=None, budget_mib=budget_for(weights, keep), **ARGS)
        assert plan.kept_layers == keep and plan.total <= budget_for(weights, keep) * 2**20
        assert "--memory-budget" in plan.why and (f"{keep} of 3" in plan.why or keep in (0, 3))
        assert any(plan.why in line for line in plan.lines())
    everything = plan_memory(weights, checkpointing=True, keep_layers=None, budget_mib=10_000, **ARGS)
    assert everything.kept_layers == 3 and everything.why.startswith("every layer keeps")
    # an explicit --keep-layers is honoured; the default budget is only a target
    monkeypatch.setattr(memory, "DEFAULT_BUDGET_MIB", budget_for(weights, 0) / 2)
    assert plan_memory(weights, checkpointing=True, keep_layers=None, **ARGS).kept_layers == 0
    assert plan_memory(weights, checkpointing=True, keep_layers=2, **ARGS).kept_layers == 2


def test_the_machine_limits_the_choice_too(weights, monkeypatch):
    none = plan_memory(weights, checkpointing=True, keep_layers=0, **ARGS)
    room = none.total - none.weights + none.per_layer + 100  # one layer's room in MemAvailable
    monkeypatch.setattr(memory, "machine_memory", lambda: (room, 2**40))
    plan = plan_memory(weights, checkpointing=True, keep_layers=None, budget_mib=10_000, **ARGS)
    assert plan.kept_layers == 1 and "this machine's memory" in plan.why
    memory.check_fits(plan, "test")  # what the choice allows, check_fits accepts


def test_an_explicit_budget_is_a_limit(weights, monkeypatch):
    monkeypatch.setattr(memory, "machine_memory", lambda: (2**40, 2**40))
    tight = budget_for(weights, 0) - plan_memory(weights, checkpointing=True, **ARGS).per_layer / 2**20
    with pytest.raises(ValueError, match=r"--memory-budget [0-9.]+: the memory plan needs .* MiB with 0 of 3 layers"):
        plan_memory(weights, checkpointing=True, keep_layers=None, budget_mib=tight, **ARGS)
    with pytest.raises(ValueError, match="with 3 of 3 layers keeping their activations.*--keep-layers"):
        plan_memory(weights, checkpointing=True, keep_layers=3, budget_mib=budget_for(weights, 1), **ARGS)


def default_plan_args(weights):
    """plan_memory's arguments for the default run (ctx 128, batch 8, rank 4 on the seven matrices)
    with a 60 MiB runtime, about what SmolLM2's measures (57.7 MiB)."""
    from ggtune.lora import init_lora
    from ggtune.names import MATRIX_KINDS

    ranks = dict.fromkeys(MATRIX_KINDS, 4)
    return dict(n_lora_params=init_lora(weights, ranks, alpha=4.0, seed=0).n_parameters(), n_ctx=128, n_batch=8,
                head_chunk=256, runtime_bytes=60 * 2**20, checkpointing=True, keep_layers=None, lora_ranks=ranks,
                precision="auto")


def test_smollm2_default_plan_keeps_every_layer_within_800_mb(smollm2_path, monkeypatch):
    monkeypatch.setattr(memory, "machine_memory", lambda: (2**40, 2**40))
    weights = read_model_gguf(smollm2_path)
    plan = plan_memory(weights, **default_plan_args(weights))
    assert plan.kept_layers == 30 and plan.total <= memory.DEFAULT_BUDGET_MIB * 2**20 < 800e6


RETAINED_HEAP_PROBE = """
import ctypes, json, resource
import numpy as np
from ggtune import memory
try:
    from numpy._core.multiarray import _set_madvise_hugepage
except ImportError:  # numpy < 2
    from numpy.core.multiarray import _set_madvise_hugepage
_set_madvise_hugepage(False)  # else the arrays fault in 2 MiB at a time when the kernel has some free

def faults_of_reallocated_arrays():
    arrays = [np.ones(2**22, np.float32) for _ in range(6)]  # allocated, touched, freed
    del arrays
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    arrays = [np.ones(2**22, np.float32) for _ in range(6)]
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

faults_of_reallocated_arrays()
counts = [faults_of_reallocated_arrays()]
with memory.retained_heap():
    faults_of_reallocated_arrays()  # the heap grows to the arrays' size once
    counts.append(faults_of_reallocated_arrays())
counts.append(faults_of_reallocated_arrays())
print(json.dumps(dict(glibc=hasattr(ctypes.CDLL(None), "mallopt"), counts=counts)))
"""


def test_retained_heap_hands_freed_arrays_to_the_next_without_page_faults():
    """Six 16 MiB arrays (a layer's temporaries) freed and allocated again: by default malloc hands
    them back to the system and the new arrays fault their pages in again; inside retained_heap
    they reuse them, and after it the defaults are back. In a fresh process: malloc's behaviour
    follows what the process allocated and freed before (this suite's other tests)."""
    import json
    import os
    import subprocess
    import sys

    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            if "[always]" in f.read():
                pytest.skip("transparent huge pages are always on: the fault counts follow free memory")
    except OSError:
        pass
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    out = subprocess.run([sys.executable, "-c", RETAINED_HEAP_PROBE], capture_output=True, text=True,
                         env=env, timeout=120, check=True)
    probe = json.loads(out.stdout)
    if not probe["glibc"]:
        pytest.skip("malloc is not glibc's")
    before, inside, after = probe["counts"]
    assert before > 1000 and after > 1000  # of 24576 pages
    assert inside < 64
