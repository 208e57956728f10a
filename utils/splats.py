"""The Gaussian scene as one dataclass (gsplat's parameterisation)."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .errors import UserError


@dataclass
class Splats:
    """A trained 3DGS scene in gsplat's raw (pre-activation) parameterisation.

    means: [N, 3] world positions.
    quats: [N, 4] rotations, wxyz, any norm.
    scales: [N, 3] log scales.
    opacities: [N] opacity logits.
    sh0: [N, 1, 3] DC spherical-harmonics coefficient.
    shN: [N, K, 3] higher-order SH coefficients, K in {0, 3, 8, 15} (degree 0..3), Inria/Sloan order.
    """

    means: Tensor
    quats: Tensor
    scales: Tensor
    opacities: Tensor
    sh0: Tensor
    shN: Tensor

    def __post_init__(self) -> None:
        n = self.means.shape[0]
        expect = {
            "means": (n, 3),
            "quats": (n, 4),
            "scales": (n, 3),
            "opacities": (n,),
            "sh0": (n, 1, 3),
        }
        for name, shape in expect.items():
            t = getattr(self, name)
            if tuple(t.shape) != shape:
                raise UserError(f"splats.{name} has shape {tuple(t.shape)}, expected {shape}")
        if self.shN.ndim != 3 or self.shN.shape[0] != n or self.shN.shape[2] != 3:
            raise UserError(f"splats.shN has shape {tuple(self.shN.shape)}, expected ({n}, K, 3)")
        if self.shN.shape[1] not in (0, 3, 8, 15):
            raise UserError(f"splats.shN has {self.shN.shape[1]} coefficients; expected 0, 3, 8 or 15 (SH degree 0-3)")

    @property
    def num(self) -> int:
        return self.means.shape[0]

    @property
    def sh_degree(self) -> int:
        return int(round(math.sqrt(self.shN.shape[1] + 1))) - 1

    @property
    def device(self) -> torch.device:
        return self.means.device

    def fields(self) -> dict[str, Tensor]:
        return {k: getattr(self, k) for k in ("means", "quats", "scales", "opacities", "sh0", "shN")}

    def to(self, device: torch.device | str) -> "Splats":
        return Splats(**{k: v.to(device) for k, v in self.fields().items()})

    def float(self) -> "Splats":
        return Splats(**{k: v.float() for k, v in self.fields().items()})

    def subset(self, index: Tensor) -> "Splats":
        """Select Gaussians by bool mask [N] or index tensor [M]."""
        return Splats(**{k: v[index] for k, v in self.fields().items()})

    def check_finite(self, source: str) -> "Splats":
        """Raise a one-line `UserError` naming `source` if any parameter is NaN or infinite."""
        for name, t in self.fields().items():
            bad = ~torch.isfinite(t)
            if bad.any():
                rows = bad.reshape(t.shape[0], -1).any(dim=1).sum().item() if t.shape[0] else 0
                raise UserError(f"{source}: {name} contains NaN/inf values in {rows} Gaussians")
        return self

    def param_hash(self) -> str:
        """sha256 (hex, first 16 chars) over all parameters as float32: identifies the scene a features file belongs to."""
        h = hashlib.sha256()
        for name, t in self.fields().items():
            h.update(name.encode())
            h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
        return h.hexdigest()[:16]
