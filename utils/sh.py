"""Real spherical harmonics (degrees 0-3) to colours, as gsplat's renderer evaluates them.

Basis order and constants are the Inria 3DGS / Sloan ("Efficient Spherical Harmonic Evaluation", JCGT 2013) ones.
"""

from __future__ import annotations

import torch
from torch import Tensor

C0 = 0.28209479177387814
C1 = 0.48860251190292


def sh_basis(dirs: Tensor, degree: int) -> Tensor:
    """Real SH basis at unit directions, in the factored (Sloan) form gsplat's CUDA kernel evaluates.

    dirs: [N, 3] unit vectors. Returns [N, (degree + 1) ** 2] in Inria/Sloan order.
    """
    assert 0 <= degree <= 3, degree
    assert dirs.ndim == 2 and dirs.shape[1] == 3, dirs.shape
    x, y, z = dirs.unbind(-1)
    out = [torch.full_like(x, C0)]
    if degree >= 1:
        out += [-C1 * y, C1 * z, -C1 * x]
    if degree >= 2:
        z2 = z * z
        c1, s1 = x * x - y * y, 2.0 * x * y  # cos/sin(2 phi) times sin^2(theta)
        zb = -1.092548430592079 * z
        out += [0.5462742152960395 * s1, zb * y, 0.9461746957575601 * z2 - 0.3153915652525201, zb * x, 0.5462742152960395 * c1]
    if degree >= 3:
        c2, s2 = x * c1 - y * s1, x * s1 + y * c1
        zc = -2.285228997322329 * z2 + 0.4570457994644658
        zb3 = 1.445305721320277 * z
        out += [
            -0.5900435899266435 * s2,
            zb3 * s1,
            zc * y,
            z * (1.865881662950577 * z2 - 1.119528997770346),
            zc * x,
            zb3 * c1,
            -0.5900435899266435 * c2,
        ]
    return torch.stack(out, dim=-1)


def eval_sh(sh0: Tensor, shN: Tensor, dirs: Tensor, degree: int) -> Tensor:
    """Colour of each Gaussian seen along `dirs`: max(sum_k Y_k(d) c_k + 0.5, 0), as gsplat's `rasterization()`.

    sh0: [N, 1, 3]; shN: [N, K, 3] with (degree + 1) ** 2 - 1 <= K; dirs: [N, 3] view directions
    (mean - camera centre, any length: normalised here). Returns [N, 3] in the dtype of sh0.
    """
    n = sh0.shape[0]
    assert sh0.shape == (n, 1, 3), sh0.shape
    assert shN.ndim == 3 and shN.shape[0] == n and shN.shape[2] == 3, shN.shape
    assert dirs.shape == (n, 3), dirs.shape
    nb = (degree + 1) ** 2
    assert 0 <= degree <= 3 and nb - 1 <= shN.shape[1], (degree, shN.shape)
    if degree == 0:  # view independent: skip the directions (same arithmetic as the general path)
        return torch.clamp_min(sh0[:, 0] * C0 + 0.5, 0.0)
    coeffs = torch.cat([sh0, shN[:, : nb - 1]], dim=1)  # [N, nb, 3]
    # Same normalisation as torch.nn.functional.normalize (eps 1e-12) so a zero direction gives 0, not NaN.
    d = dirs / dirs.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    basis = sh_basis(d.to(coeffs.dtype), degree)  # [N, nb]
    return torch.clamp_min((basis[:, :, None] * coeffs).sum(dim=1) + 0.5, 0.0)
