import os

import pytest

from ggtune import _core


def test_forced_scalar_tier_is_active_and_restorable():
    best = _core.detected_isa()
    _core.set_isa("scalar")
    assert _core.active_isa() == "scalar"
    _core.set_isa(best)
    assert _core.active_isa() == best


def test_unknown_or_unsupported_tier_is_a_clear_error():
    with pytest.raises(ValueError, match="isa"):
        _core.set_isa("sse9")
    if _core.detected_isa() != "avx512":
        with pytest.raises(ValueError, match="does not support"):
            _core.set_isa("avx512")


def test_thread_count_is_settable_and_defaults_to_cores():
    _core.set_num_threads(0)
    default = _core.num_threads()
    assert default == len(os.sched_getaffinity(0))
    _core.set_num_threads(1)
    assert _core.num_threads() == 1
    _core.set_num_threads(0)
    assert _core.num_threads() == default
