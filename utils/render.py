"""One rendering interface, two backends: our CPU rasterizer and gsplat (when CUDA is present).

Numerics follow gsplat 1.5.3 `rasterization()` exactly (see ../shared/REFERENCE.md §1-2 in the dev tree).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from .camera import Camera
from .splats import Splats

RenderMode = Literal["RGB", "D", "ED", "RGB+D", "RGB+ED"]
RasterizeMode = Literal["classic", "antialiased"]
Backend = Literal["auto", "cpu", "gsplat"]


@dataclass
class Contributions:
    """The compositing weights of one view, w = alpha * T, for every (pixel, Gaussian) pair with w > 0.

    Exactly the weight with which Gaussian `gaussian[m]` contributes to pixel `pixel[m]`, so that
    `colors[p] = sum_m w[m] * c[gaussian[m]] + T_final[p] * background`.
    Entries are grouped by pixel (ascending flat index y * width + x), front to back within a pixel.

    pixel: [M] int64 flat pixel index.
    gaussian: [M] int64 Gaussian index into the scene that was rendered.
    weight: [M] float32 alpha * T.
    """

    pixel: Tensor
    gaussian: Tensor
    weight: Tensor
    height: int
    width: int

    @property
    def num(self) -> int:
        return self.weight.shape[0]


@dataclass
class RenderOutput:
    """colors: [H, W, D] composited colours/features plus T * background (D = 3 for RGB).
    alpha: [H, W] 1 - T.
    depth: [H, W] sum w * z ("D") or that / max(alpha, 1e-10) ("ED"); None when not asked for.
    contributions: the per-pixel weights when `return_contributions=True`.
    """

    colors: Tensor | None
    alpha: Tensor
    depth: Tensor | None = None
    contributions: Contributions | None = None
