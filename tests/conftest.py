import pytest

from ggtune import _core


@pytest.fixture(scope="session")
def smollm2_path():
    """The real SmolLM2-135M-Instruct Q4_1 GGUF, fetched once into the user cache."""
    from ggtune.fetch import smollm2_path as fetch

    return str(fetch())


def available_isas():
    """Every tier this machine can run, scalar first."""
    order = ["scalar", "avx2", "avx512"]
    return order[: order.index(_core.detected_isa()) + 1]


@pytest.fixture(params=available_isas())
def isa(request):
    """Runs a test once per SIMD tier the machine has, then restores the best tier."""
    _core.set_isa(request.param)
    yield request.param
    _core.set_isa(_core.detected_isa())


def pytest_collection_modifyitems(config, items):
    """The `fuzz` tier is opt-in: it runs only when the marker expression names it (-m fuzz)."""
    if "fuzz" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="long fuzz tier: run with -m fuzz")
    for item in items:
        if "fuzz" in item.keywords:
            item.add_marker(skip)
