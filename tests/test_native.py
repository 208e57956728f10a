"""utils.native: building, caching and falling back (the kernels' numerics are tested in test_raster and
test_backprojection against numba and the float64 reference)."""

from __future__ import annotations

import platform
import shutil

import pytest

from utils.native import library, select


@pytest.fixture
def fresh_library():
    """library() is cached per process: start from scratch and leave the normal state behind."""
    library.cache_clear()
    yield library
    library.cache_clear()


def test_disabled_by_environment(monkeypatch, fresh_library) -> None:
    monkeypatch.setenv("FEATURE_SPLATTING_NATIVE", "0")
    assert fresh_library() is None
    assert select(None) is None and select(False) is None
    with pytest.raises(RuntimeError, match="native lifting kernels unavailable"):
        select(True)  # asked for explicitly: an error, not a silent fallback


def test_failed_build_warns_and_falls_back(monkeypatch, tmp_path, fresh_library) -> None:
    monkeypatch.setenv("CC", "/bin/false")
    monkeypatch.setenv("FEATURE_SPLATTING_CACHE", str(tmp_path))
    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("native kernels are only built on x86-64")
    with pytest.warns(UserWarning, match="native lifting kernels unavailable"):
        assert fresh_library() is None
    assert not list(tmp_path.rglob("*.so"))  # no half-written library left behind


@pytest.mark.skipif(shutil.which("gcc") is None and shutil.which("cc") is None, reason="needs a C compiler")
def test_builds_once_into_the_cache(monkeypatch, tmp_path, fresh_library) -> None:
    monkeypatch.setenv("FEATURE_SPLATTING_CACHE", str(tmp_path))
    lib = fresh_library()
    built = list(tmp_path.rglob("kernels-*.so"))
    if lib is None:
        pytest.skip("this CPU has no AVX-512: only the numba kernels run")
    assert len(built) == 1 and lib._name == str(built[0])
    mtime = built[0].stat().st_mtime_ns
    fresh_library.cache_clear()
    assert fresh_library() is not None and built[0].stat().st_mtime_ns == mtime  # loaded, not rebuilt


def test_avx2_and_avx512_kernels_give_the_same_bits(monkeypatch) -> None:
    """The AVX2 build does every float operation of the AVX-512 one in the same order: same store, same sums."""
    import numpy as np
    import torch

    from test_backprojection import random_splats, ring_cameras
    from utils.feature_sources.base import FeatureMap
    from utils.lifting import Accumulator, lift_view
    from utils.native import vector_bits

    splats = random_splats(400, seed=5)
    cams = ring_cameras(2, 83, 61)
    g = torch.Generator().manual_seed(2)
    maps = [FeatureMap(torch.randn(*size, 40, generator=g), valid=torch.rand(*size, generator=g) > 0.2)
            for size in ((61, 83), (20, 30))]  # fmt: skip
    results = {}
    try:
        for mode, bits in (("1", 512), ("avx2", 256)):
            monkeypatch.setenv("FEATURE_SPLATTING_NATIVE", mode)
            library.cache_clear()
            if vector_bits() != bits:
                pytest.skip(f"no {bits}-bit native kernels on this machine")
            acc = Accumulator.zeros(400, 40)
            for cam in cams:
                for fmap in maps:
                    lift_view(acc, splats, cam, fmap, native=True)
            results[mode] = acc
    finally:
        library.cache_clear()
    a, b = results["1"], results["avx2"]
    assert (a.denom > 0).sum() > 300
    assert np.array_equal(a.numer.numpy().view(np.int32), b.numer.numpy().view(np.int32))
    assert np.array_equal(a.denom.numpy().view(np.int64), b.denom.numpy().view(np.int64))
