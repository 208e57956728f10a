"""Shared pytest configuration."""

import pytest


def pytest_configure(config):
    # Slow tests still run in CI (`make test`); the marker lets developers deselect them with `-m "not slow"`.
    config.addinivalue_line("markers", "slow: long-running test (still part of CI)")


@pytest.fixture(params=["numba", "avx512", "avx2"])
def kernel(request, monkeypatch):
    """Which lifting kernels a test runs: numba's (yields False) or the native ones built for 512- or 256-bit vectors
    (yields True; skipped where that build is not available)."""
    if request.param == "numba":
        yield False
        return
    from utils.native import library, vector_bits

    monkeypatch.setenv("FEATURE_SPLATTING_NATIVE", "avx2" if request.param == "avx2" else "1")
    library.cache_clear()
    try:
        if vector_bits() != (512 if request.param == "avx512" else 256):
            pytest.skip(f"no {request.param} native kernels on this machine (compiler or CPU)")
        yield True
    finally:
        library.cache_clear()  # the next test loads the default build again
