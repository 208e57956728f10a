"""Native lifting kernels (`kernels.c`: C with AVX-512 or AVX2 intrinsics), compiled on first use and cached.

`library()` returns the loaded library, or None when it can't be had (no C compiler, a CPU without AVX2 and FMA, the
build failed, or FEATURE_SPLATTING_NATIVE=0): the numba kernels then do the same work, 2-3x slower. The build is
`cc -O3 -march=native` into `$XDG_CACHE_HOME/feature-splatting/native/` (or FEATURE_SPLATTING_CACHE), keyed by the
source, the flags, the compiler and the CPU, so it happens once per machine (~1 s). FEATURE_SPLATTING_NATIVE=avx2
builds the AVX2 kernels on an AVX-512 machine (they give the same bits; the tests use it).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

_SOURCE = Path(__file__).with_name("kernels.c")
# No FMA contraction: the weights must be the numba kernel's float32 expressions, operation by operation.
_FLAGS = ["-O3", "-march=native", "-ffp-contract=off", "-fno-math-errno", "-fPIC", "-shared"]
_P, _I = ctypes.c_void_p, ctypes.c_int64
_SIGNATURES = {
    "gw_store_job": (_I, [_P, _P, _P, _P, _P, _I, _I, _I, _I, _I, _I, _P, _I, _P, _P, _P, _P, _P, _P, _I,
                          _P, _P, _P, _I, _I, _P, _P]),  # fmt: skip
    "gw_product": (None, [_P, _P, _I, _I, _I, _P, _I, _P, _P, _P, _P, _P, _P, _I, _I]),
}


def _cache_dir() -> Path:
    if os.environ.get("FEATURE_SPLATTING_CACHE"):
        return Path(os.environ["FEATURE_SPLATTING_CACHE"]) / "native"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "feature-splatting" / "native"


def _cpu_id() -> str:
    """What -march=native depends on: the CPU's model and feature flags (Linux), else the platform."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return "\n".join(sorted({ln for ln in lines if ln.startswith(("model name", "flags"))}))
    except OSError:
        return platform.processor() + platform.machine()


def _build(cc: str, flags: list[str]) -> Path:
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    key = hashlib.sha256("\0".join([_SOURCE.read_text(), " ".join(flags), version, _cpu_id()]).encode())
    out = _cache_dir() / f"kernels-{key.hexdigest()[:16]}.so"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    # Build next to the target and rename: concurrent processes (torchrun ranks) never load a half-written file.
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
    os.close(fd)
    try:
        proc = subprocess.run([cc, *flags, "-o", tmp, str(_SOURCE), "-lm"], capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


@functools.cache
def library() -> ctypes.CDLL | None:
    """The native kernels, or None (see the module docstring)."""
    mode = os.environ.get("FEATURE_SPLATTING_NATIVE", "1")
    if mode == "0" or platform.machine().lower() not in ("x86_64", "amd64"):
        return None
    cc = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        return None
    flags = _FLAGS + (["-mno-avx512f"] if mode == "avx2" else [])
    try:
        lib = ctypes.CDLL(str(_build(cc, flags)))
    except (OSError, RuntimeError, subprocess.SubprocessError) as e:
        warnings.warn(f"native lifting kernels unavailable ({cc}: {e}); using the numba kernels", stacklevel=2)
        return None
    if not lib.gw_isa():
        return None  # the CPU has neither AVX-512 nor AVX2 + FMA: only the numba kernels exist for it
    for name, (restype, argtypes) in _SIGNATURES.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, argtypes
    return lib


def select(native: bool | None) -> ctypes.CDLL | None:
    """The library a kernel call should use for its `native` argument: None = when available, False = never (the
    numba kernels), True = always (an error when it is unavailable)."""
    if native is False:
        return None
    lib = library()
    if native and lib is None:
        raise RuntimeError("native lifting kernels unavailable (no C compiler, or a CPU without AVX2)")
    return lib


def vector_bits() -> int:
    """512 or 256: the vector width the native kernels were built for; 0 when they are not available."""
    lib = library()
    return 0 if lib is None else int(lib.gw_isa())


def kernels_name() -> str:
    """Which lifting kernels run here, for progress bars and benchmark tables: "C/AVX-512", "C/AVX2" or "numba"."""
    return {512: "C/AVX-512", 256: "C/AVX2"}.get(vector_bits(), "numba")


def ptr(a: np.ndarray | None) -> int | None:
    """The data address of a C-contiguous array (None for None), for a ctypes call."""
    if a is None:
        return None
    assert a.flags.c_contiguous, "native kernels take C-contiguous arrays"
    return a.ctypes.data


def run_parallel(fn: Callable, args: Sequence[tuple]) -> list:
    """fn(*args[k]) for every k, each in its own thread (ctypes calls release the GIL); returns the results."""
    results: list = [None] * len(args)

    def call(k: int) -> None:
        results[k] = fn(*args[k])

    threads = [threading.Thread(target=call, args=(k,)) for k in range(1, len(args))]
    for t in threads:
        t.start()
    call(0)
    for t in threads:
        t.join()
    return results
