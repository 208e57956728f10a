"""utils.native: building, caching and falling back (the kernels' numerics are tested in test_raster and
test_backprojection against numba and the float64 reference)."""

from __future__ import annotations

import platform
import shutil

import pytest

from utils.native import library


@pytest.fixture
def fresh_library():
    """library() is cached per process: start from scratch and leave the normal state behind."""
    library.cache_clear()
    yield library
    library.cache_clear()


def test_disabled_by_environment(monkeypatch, fresh_library) -> None:
    monkeypatch.setenv("FEATURE_SPLATTING_NATIVE", "0")
    assert fresh_library() is None


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
