"""_core.peak_rate: the register-only loops bench_kernels.py divides kernel rates by."""

import pytest

from ggtune import _core


def test_peak_rates_are_positive_and_ordered_like_the_instructions():
    f32 = _core.peak_rate("f32", 1, 0.05, cpu_time=True)  # CPU time: robust to a loaded machine
    assert f32 > 1e8  # any x86-64 core retires more than 0.1 GFLOP/s of FMA
    if _core.active_isa() == "avx512":
        # one vpdpbusd does 4x the multiply-adds of one vfmadd231ps, vdpbf16ps 2x; a core issues
        # at least as many of them per cycle (measured ratios on Zen 4: 4.0x, 2.0x)
        assert _core.peak_rate("int8", 1, 0.05, cpu_time=True) > 1.5 * f32
        assert _core.peak_rate("bf16", 1, 0.05, cpu_time=True) > 1.2 * f32


@pytest.mark.parametrize("kind", ["int8_affine", "int8_symmetric", "int8_column_scaled"])
def test_int8_kernel_ceilings_are_below_the_instruction_peak(kind):
    """A micro-kernel on L1-resident operands runs vpdpbusd and its per-block float work: below
    the loop of vpdpbusd alone, and far above a kernel starved by memory (measured on Zen 4, one
    thread: 74%, 79% and 87% of the peak)."""
    if _core.active_isa() != "avx512":
        pytest.skip("the int8 engine's kernels are the avx512 tier's")
    peak = _core.peak_rate("int8", 1, 0.05, cpu_time=True)
    ceiling = _core.peak_rate(kind, 1, 0.05, cpu_time=True)
    assert 0.3 * peak < ceiling < 1.02 * peak


def test_peak_rate_rejects_bad_arguments():
    with pytest.raises(ValueError, match="kind: expected 'int8', 'bf16', 'f32', 'int8_affine'"):
        _core.peak_rate("fp8")
    with pytest.raises(ValueError, match="seconds"):
        _core.peak_rate("f32", 1, 0.0)
    with pytest.raises(ValueError, match="cpu_time: only with threads=1"):
        _core.peak_rate("f32", 2, 0.05, cpu_time=True)


def test_kinds_the_tier_lacks_are_refused():
    try:
        _core.set_isa("scalar")
        with pytest.raises(ValueError, match="kind: the scalar tier has no 'int8'"):
            _core.peak_rate("int8", 1, 0.05)
        with pytest.raises(ValueError, match="kind: the scalar tier has no 'int8_affine'"):
            _core.peak_rate("int8_affine", 1, 0.05)
        assert _core.peak_rate("f32", 1, 0.05) > 0
    finally:
        _core.set_isa(_core.detected_isa())
