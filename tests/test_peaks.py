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


def test_peak_rate_rejects_bad_arguments():
    with pytest.raises(ValueError, match="kind: expected 'int8', 'bf16' or 'f32'"):
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
        assert _core.peak_rate("f32", 1, 0.05) > 0
    finally:
        _core.set_isa(_core.detected_isa())
