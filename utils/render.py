"""One rendering interface, two backends: our CPU rasterizer and gsplat (when CUDA is present).

Numerics follow gsplat 1.5.3 `rasterization()` exactly (see ../shared/REFERENCE.md §1-2 in the dev tree).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor

from .camera import Camera
from .errors import UserError
from .splats import Splats

if TYPE_CHECKING:  # raster_cpu imports this module
    import numpy as np

    from .raster_cpu import FoldTaps, StoreWorkspace, TileStore

RenderMode = Literal["RGB", "D", "ED", "RGB+D", "RGB+ED"]
RasterizeMode = Literal["classic", "antialiased"]
Backend = Literal["auto", "cpu", "gsplat"]


@dataclass
class Contributions:
    """The compositing weights of one view, w = alpha * T, for every (pixel, Gaussian) pair with w > 0.

    Exactly the weight with which Gaussian `gaussian[m]` contributes to pixel `pixel[m]`, so that
    `colors[p] = sum_m w[m] * c[gaussian[m]] + T_final[p] * background`.
    Entries are grouped by pixel (ascending flat index y * width + x), front to back within a pixel.

    pixel: [M] int32 flat pixel index (int32 halves the memory of ~50M-entry views; use `.long()` where torch
        needs int64 indices, e.g. scatter_add_; index_add_ and indexing accept int32).
    gaussian: [M] int32 Gaussian index into the scene that was rendered.
    weight: [M] float32 alpha * T.
    offsets: optional [H * W + 1] int64 CSR row pointers: pixel p owns entries offsets[p]:offsets[p + 1].
    """

    pixel: Tensor
    gaussian: Tensor
    weight: Tensor
    height: int
    width: int
    offsets: Tensor | None = None

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


_RENDER_MODES = ("RGB", "D", "ED", "RGB+D", "RGB+ED")


def _pick_backend(backend: str, splats: Splats) -> str:
    if backend not in ("auto", "cpu", "gsplat"):
        raise ValueError(f"render: unknown backend {backend!r} (expected 'auto', 'cpu' or 'gsplat')")
    cuda = torch.cuda.is_available()
    if backend == "gsplat" and not cuda:
        # Never start gsplat's CUDA JIT build on a machine without a GPU.
        raise UserError("render backend 'gsplat' needs a CUDA GPU and none is available; use backend 'cpu' or 'auto'")
    if backend == "auto":
        return "gsplat" if cuda and splats.device.type == "cuda" else "cpu"
    return backend


def _sh_colors(splats: Splats, camera: Camera, sh_degree: int | None, mask: Tensor) -> Tensor:
    """[N, 3] SH colours (zero where ~mask), view directions from the camera centre as gsplat computes it."""
    from .sh import eval_sh

    degree = splats.sh_degree if sh_degree is None else int(sh_degree)
    if not 0 <= degree <= splats.sh_degree:
        raise ValueError(f"render: sh_degree {degree} not in [0, {splats.sh_degree}] for this scene")
    # gsplat: campos = inverse(viewmat)[:3, 3] in float32.
    campos = torch.linalg.inv(camera.viewmat.detach().cpu().float())[:3, 3]
    sh0, shN = splats.sh0.detach().cpu().float(), splats.shN.detach().cpu().float()
    means = splats.means.detach().cpu().float()
    if mask.float().mean() > 0.5:  # most are visible: evaluating all is cheaper than gathering
        return eval_sh(sh0, shN, means - campos, degree) * mask[:, None]
    idx = torch.nonzero(mask).squeeze(1)
    out = torch.zeros(splats.num, 3, dtype=torch.float32)
    out[idx] = eval_sh(sh0[idx], shN[idx], means[idx] - campos, degree)
    return out


def _check_common(splats: Splats, render_mode: str, rasterize_mode: str) -> None:
    if render_mode not in _RENDER_MODES:
        raise ValueError(f"render: unknown render_mode {render_mode!r} (expected one of {_RENDER_MODES})")
    if rasterize_mode not in ("classic", "antialiased"):
        raise ValueError(f"render: unknown rasterize_mode {rasterize_mode!r} (expected 'classic' or 'antialiased')")


def render(
    splats: Splats,
    camera: Camera,
    *,
    features: Tensor | None = None,
    sh_degree: int | None = None,
    background: Tensor | None = None,
    render_mode: RenderMode = "RGB",
    rasterize_mode: RasterizeMode = "classic",
    return_contributions: bool = False,
    backend: Backend = "auto",
    near: float = 0.01,
    far: float = 1e10,
    eps2d: float = 0.3,
) -> RenderOutput:
    """Render one view with gsplat 1.5.3's numerics (see the module docstring).

    features: [N, D] per-Gaussian values composited as they are (overrides SH colours; any D >= 1).
    sh_degree: SH degree to evaluate (None = the scene's degree); ignored when `features` is given.
    background: [D] (or [3] for SH colours) added as T * background; None = 0. Depth never gets a background.
    render_mode: "RGB" | "D" | "ED" | "RGB+D" | "RGB+ED" as gsplat (colors is None for "D"/"ED").
    rasterize_mode: "classic" | "antialiased" (opacity times the eps2d compensation).
    return_contributions: also return the per-pixel weights (always CPU tensors, computed by the CPU kernel).
    backend: "auto" = gsplat when CUDA is available and the splats are on a CUDA device, else "cpu".
    Outputs are on the splats' device (contributions on the CPU).
    """
    _check_common(splats, render_mode, rasterize_mode)
    n = splats.num
    if features is not None and (features.ndim != 2 or features.shape[0] != n):
        raise ValueError(f"render: features must be [N={n}, D], got {tuple(features.shape)}")
    want_rgb = render_mode in ("RGB", "RGB+D", "RGB+ED")
    want_depth = render_mode != "RGB"
    be = _pick_backend(backend, splats)
    contrib = None
    if be == "gsplat":
        from .raster_gsplat import render_gsplat

        colors, alpha, depth = render_gsplat(
            splats, camera, features=features, sh_degree=sh_degree, background=background, render_mode=render_mode,
            rasterize_mode=rasterize_mode, near=near, far=far, eps2d=eps2d,
        )  # fmt: skip
        if return_contributions:
            contrib = render_contributions(
                splats, camera, rasterize_mode=rasterize_mode, backend="cpu", near=near, far=far, eps2d=eps2d
            )
        return RenderOutput(colors, alpha, depth, contrib)

    from .projection import project
    from .raster_cpu import rasterize

    dev = splats.device
    proj = project(splats, camera, near=near, far=far, eps2d=eps2d, rasterize_mode=rasterize_mode)
    cols = None
    if want_rgb:
        cols = features.detach().cpu().float() if features is not None else _sh_colors(splats, camera, sh_degree, proj.valid)
        if background is not None and tuple(background.shape) != (cols.shape[1],):
            raise ValueError(f"render: background must be [{cols.shape[1]}], got {tuple(background.shape)}")
    res = rasterize(proj, cols, background if want_rgb else None, return_contributions=return_contributions)
    alpha = 1.0 - res.transmittance
    depth = None
    if want_depth:
        depth = res.depth
        if render_mode in ("ED", "RGB+ED"):
            depth = depth / alpha.clamp_min(1e-10)
        depth = depth.to(dev)
    colors = res.colors.to(dev) if res.colors is not None else None
    return RenderOutput(colors, alpha.to(dev), depth, res.contributions)


def render_contributions(
    splats: Splats,
    camera: Camera,
    *,
    rasterize_mode: RasterizeMode = "classic",
    backend: Backend = "auto",
    near: float = 0.01,
    far: float = 1e10,
    eps2d: float = 0.3,
) -> Contributions:
    """The per-pixel compositing weights w = alpha T of one view, without compositing any colour (fast path).

    Always computed by the CPU kernel on CPU tensors (for CUDA splats too: gsplat has no per-pixel weight output;
    `backend` is validated but a CUDA scene is copied to the CPU). Returns CPU tensors.
    """
    _check_common(splats, "RGB", rasterize_mode)
    _pick_backend(backend, splats)
    from .projection import project
    from .raster_cpu import rasterize_contributions

    proj = project(splats, camera, near=near, far=far, eps2d=eps2d, rasterize_mode=rasterize_mode)
    return rasterize_contributions(proj)


def render_store(
    splats: Splats,
    camera: Camera,
    *,
    valid: np.ndarray | None = None,
    fold: FoldTaps | None = None,
    workspace: StoreWorkspace | None = None,
    rasterize_mode: RasterizeMode = "classic",
    backend: Backend = "auto",
    native: bool | None = None,
) -> TileStore:
    """`render_contributions` kept per 16x16 tile and grouped by Gaussian, in one pass (what lifting consumes):
    see `raster_cpu.rasterize_store` for valid / fold / workspace / native. CPU kernel, like `render_contributions`."""
    _check_common(splats, "RGB", rasterize_mode)
    _pick_backend(backend, splats)
    from .projection import project
    from .raster_cpu import rasterize_store

    proj = project(splats, camera, rasterize_mode=rasterize_mode)
    return rasterize_store(proj, valid=valid, fold=fold, workspace=workspace, native=native)
