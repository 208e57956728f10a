"""Test-side regeneration of the deterministic LSeg fixture weights (shared/REFERENCE.md §5).

Per key: `seed` = little-endian uint64 of sha256(key)[:8]; for i = 1..n a splitmix64 step gives `u` in [-1, 1)
(float64); a rule on the key name and shape maps `u` to the value; values are cast to float32 (C order).
Vectorised with numpy uint64 arithmetic (wrapping multiplication is what numpy does for uint64).
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
import torch

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_NO_FAN_SCALE = {"positional_embedding", "pos_embed", "cls_token"}
_CHUNK = 1 << 22  # values per numpy pass: bounds the uint64 temporaries to ~32 MB each


def key_seed(key: str) -> np.uint64:
    return np.uint64(int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little"))


def uniform(key: str, n: int) -> np.ndarray:
    """[n] float64 `u` in [-1, 1) of the splitmix64 stream of `key` (i = 1..n)."""
    seed = key_seed(key)
    out = np.empty(n, dtype=np.float64)
    with np.errstate(over="ignore"):
        for start in range(0, n, _CHUNK):
            stop = min(n, start + _CHUNK)
            z = np.arange(start + 1, stop + 1, dtype=np.uint64)
            z *= _GOLDEN
            z += seed
            z ^= z >> np.uint64(30)
            z *= _M1
            z ^= z >> np.uint64(27)
            z *= _M2
            z ^= z >> np.uint64(31)
            z >>= np.uint64(11)
            u = out[start:stop]
            np.multiply(z, 2.0**-53, out=u)  # exact: z < 2^53
            u *= 2.0
            u -= 1.0
    return out


def weight(key: str, shape: list[int], dtype: str = "float32") -> torch.Tensor:
    """The regenerated tensor for `key` (float32, or int64 zeros for `num_batches_tracked`)."""
    if key.endswith("num_batches_tracked"):
        return torch.zeros(shape, dtype=torch.int64)
    n = math.prod(shape) if shape else 1
    u = uniform(key, n)
    last = key.rsplit(".", 1)[-1]
    if key.endswith("running_var"):
        v = 1.0 + 0.5 * u
    elif key.endswith("running_mean"):
        v = 0.1 * u
    elif len(shape) >= 2 and last not in _NO_FAN_SCALE:
        v = u * math.sqrt(3) / math.sqrt(n // shape[0])
    elif last == "weight" and len(shape) == 1:
        v = 1.0 + 0.1 * u
    else:
        v = 0.02 * u
    return torch.from_numpy(v.astype(np.float32).reshape(shape))


def sha256_of(t: torch.Tensor) -> str:
    """sha256 of the tensor's C-order bytes in its own dtype (float32, or int64 for counters)."""
    return hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest()


def fixture_input(shape: tuple[int, ...] = (1, 3, 480, 480)) -> torch.Tensor:
    return torch.from_numpy(uniform("input", math.prod(shape)).astype(np.float32).reshape(shape))


def state_dict(keys: list[list]) -> dict[str, torch.Tensor]:
    """All weights of `keys` (entries `[key, shape, dtype]` of lseg_keys.json), in order."""
    return {k: weight(k, shape, dtype) for k, shape, dtype in keys}
