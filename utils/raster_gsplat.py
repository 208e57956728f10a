"""Backend that calls gsplat's CUDA `rasterization()` (only when a CUDA device is present).

gsplat is imported inside the function: importing it is harmless, but calling its rasterizer without CUDA starts a
JIT build that fails, so callers (`utils.render.render`) only come here after checking `torch.cuda.is_available()`.
gsplat has no per-pixel weight output; `render()` computes Contributions with the CPU kernel instead.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .camera import Camera
from .errors import UserError
from .splats import Splats


def render_gsplat(
    splats: Splats,
    camera: Camera,
    *,
    features: Tensor | None,
    sh_degree: int | None,
    background: Tensor | None,
    render_mode: str,
    rasterize_mode: str,
    near: float,
    far: float,
    eps2d: float,
) -> tuple[Tensor | None, Tensor, Tensor | None]:
    """One view through `gsplat.rasterization`; returns (colors [H, W, D] or None, alpha [H, W], depth [H, W] or None).

    Same argument meaning as `utils.render.render`. Runs on the splats' CUDA device.
    """
    if not torch.cuda.is_available():
        raise UserError("render backend 'gsplat' needs a CUDA GPU and none is available; use backend 'cpu'")
    import gsplat  # lazy: only ever reached with CUDA present

    dev = splats.device if splats.device.type == "cuda" else torch.device("cuda")
    s = splats.to(dev).float()
    want_rgb = render_mode in ("RGB", "RGB+D", "RGB+ED")
    if features is not None:
        colors = features.to(dev, torch.float32)
        degree = None
    else:
        colors = torch.cat([s.sh0, s.shN], dim=1)  # [N, K+1, 3]
        degree = s.sh_degree if sh_degree is None else int(sh_degree)
        if not 0 <= degree <= s.sh_degree:
            raise ValueError(f"render: sh_degree {degree} not in [0, {s.sh_degree}] for this scene")
    bgs = None
    if background is not None and want_rgb:
        bgs = background.to(dev, torch.float32)[None]  # [C=1, D]
    out, alphas, _meta = gsplat.rasterization(
        means=s.means,
        quats=s.quats,
        scales=torch.exp(s.scales),
        opacities=torch.sigmoid(s.opacities),
        colors=colors,
        viewmats=camera.viewmat.to(dev)[None],
        Ks=camera.K.to(dev)[None],
        width=camera.width,
        height=camera.height,
        near_plane=near,
        far_plane=far,
        eps2d=eps2d,
        sh_degree=degree,
        backgrounds=bgs,
        render_mode=render_mode,
        rasterize_mode=rasterize_mode,
    )
    out, alpha = out[0], alphas[0, ..., 0]  # [H, W, X], [H, W]
    if render_mode in ("D", "ED"):
        return None, alpha, out[..., 0]
    if render_mode in ("RGB+D", "RGB+ED"):
        return out[..., :-1], alpha, out[..., -1]
    return out, alpha, None
