"""Project 3D Gaussians to the image plane of one pinhole camera, exactly as gsplat 1.5.3 does (EWA splatting).

Two implementations with the same contract:
- `project_torch`: readable pure-torch version (the reference for tests; any float dtype).
- `project_numba`: the fast path, parallel over Gaussians, float32 arithmetic in the order of gsplat's CUDA kernel.
`project(splats, camera, ...)` activates the raw parameters and runs one of them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numba
import numpy as np
import torch
from torch import Tensor

from .camera import Camera
from .splats import Splats

ALPHA_THRESHOLD = 1.0 / 255.0  # gsplat's minimum alpha (float32 in CUDA)
MAX_EXTEND = 3.33  # radius cap in standard deviations


@dataclass
class Projection:
    """Screen-space Gaussians of one view. Rows with `valid == False` are culled and hold zeros (depths keep z).

    means2d: [N, 2] pixel coordinates of the projected means (pixel centres at +0.5).
    conics: [N, 3] inverse of the blurred 2D covariance as (a, b, c) = (inv00, inv01, inv11).
    depths: [N] camera-space z.
    radii: [N, 2] int32 half extents (x, y) of the opacity-aware bounding box; 0 when culled.
    opacities: [N] activated opacities, times `compensations` in antialiased mode.
    compensations: [N] sqrt(det(cov2d) / det(cov2d + eps2d I)).
    valid: [N] bool, Gaussians that survive all culls.
    """

    means2d: Tensor
    conics: Tensor
    depths: Tensor
    radii: Tensor
    opacities: Tensor
    compensations: Tensor
    valid: Tensor
    width: int
    height: int


def _check_inputs(means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, viewmat: Tensor, K: Tensor) -> int:
    n = means.shape[0]
    assert means.shape == (n, 3), means.shape
    assert quats.shape == (n, 4), quats.shape
    assert scales.shape == (n, 3), scales.shape
    assert opacities.shape == (n,), opacities.shape
    assert viewmat.shape == (4, 4), viewmat.shape
    assert K.shape == (3, 3), K.shape
    return n


def quat_to_rotmat(quats: Tensor) -> Tensor:
    """quats: [N, 4] wxyz, any norm -> [N, 3, 3] rotation matrices."""
    q = quats / quats.norm(dim=-1, keepdim=True)
    w, x, y, z = q.unbind(-1)
    R = torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    )  # fmt: skip
    return R.reshape(-1, 3, 3)


def project_torch(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    viewmat: Tensor,
    K: Tensor,
    width: int,
    height: int,
    *,
    near: float = 0.01,
    far: float = 1e10,
    eps2d: float = 0.3,
    antialiased: bool = False,
) -> Projection:
    """Pure-torch projection (readable reference).

    means: [N, 3] world; quats: [N, 4] wxyz; scales: [N, 3] activated (exp of log scales);
    opacities: [N] activated (sigmoid of logits); viewmat: [4, 4] world->camera (OpenCV); K: [3, 3].
    """
    n = _check_inputs(means, quats, scales, opacities, viewmat, K)
    dt = means.dtype
    viewmat, K = viewmat.to(dt), K.to(dt)
    # World covariance R S S^T R^T, then camera space.
    M = quat_to_rotmat(quats.to(dt)) * scales.to(dt)[:, None, :]
    cov = M @ M.transpose(1, 2)
    Rv, tv = viewmat[:3, :3], viewmat[:3, 3]
    mc = means @ Rv.T + tv
    covc = Rv @ cov @ Rv.T
    x, y, z = mc.unbind(-1)

    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    # gsplat clamps the Jacobian's view direction to 1.3x the (asymmetric) field of view.
    tan_fovx, tan_fovy = 0.5 * width / fx, 0.5 * height / fy
    lim_x_pos, lim_x_neg = (width - cx) / fx + 0.3 * tan_fovx, cx / fx + 0.3 * tan_fovx
    lim_y_pos, lim_y_neg = (height - cy) / fy + 0.3 * tan_fovy, cy / fy + 0.3 * tan_fovy
    tx = z * torch.minimum(lim_x_pos, torch.maximum(-lim_x_neg, x / z))
    ty = z * torch.minimum(lim_y_pos, torch.maximum(-lim_y_neg, y / z))
    zero = torch.zeros_like(z)
    J = torch.stack([fx / z, zero, -fx * tx / (z * z), zero, fy / z, -fy * ty / (z * z)], dim=-1).reshape(n, 2, 3)
    cov2d = J @ covc @ J.transpose(1, 2)
    means2d = torch.stack([fx * x / z + cx, fy * y / z + cy], dim=-1)  # unclamped x, y

    det0 = cov2d[:, 0, 0] * cov2d[:, 1, 1] - cov2d[:, 0, 1] * cov2d[:, 1, 0]
    a = cov2d[:, 0, 0] + eps2d
    c = cov2d[:, 1, 1] + eps2d
    b = cov2d[:, 0, 1]
    det = a * c - b * cov2d[:, 1, 0]
    comp = torch.sqrt(torch.clamp_min(det0 / det, 0.0))
    conics = torch.stack([c / det, -b / det, a / det], dim=-1)

    opac = opacities.to(dt) * comp if antialiased else opacities.to(dt)
    valid = (z >= near) & (z <= far) & (det > 0) & (opac >= ALPHA_THRESHOLD)
    # Opacity-aware box: the alpha = 1/255 contour, capped at 3.33 sigma.
    extend = torch.clamp(torch.sqrt(2.0 * torch.log(torch.clamp_min(opac / ALPHA_THRESHOLD, 1.0))), max=MAX_EXTEND)
    rx = torch.ceil(extend * torch.sqrt(a.clamp_min(0)))
    ry = torch.ceil(extend * torch.sqrt(c.clamp_min(0)))
    valid &= (rx > 0) | (ry > 0)
    valid &= (means2d[:, 0] + rx > 0) & (means2d[:, 0] - rx < width) & (means2d[:, 1] + ry > 0) & (means2d[:, 1] - ry < height)

    v = valid[:, None]
    return Projection(
        means2d=torch.where(v, means2d, 0.0),
        conics=torch.where(v, conics, 0.0),
        depths=z,
        radii=torch.where(v, torch.stack([rx, ry], -1), 0.0).to(torch.int32),
        opacities=torch.where(valid, opac, 0.0),
        compensations=torch.where(valid, comp, 0.0),
        valid=valid,
        width=int(width),
        height=int(height),
    )


_F = np.float32


@numba.njit(parallel=True, cache=True)
def _project_kernel(
    means, quats, scales, opacities, viewmat, fx, fy, cx, cy, width, height, near, far, eps2d, antialiased,
    means2d, conics, depths, radii, opac_out, comp_out, valid,
):  # pragma: no cover - numba
    # float32 throughout, in the order of operations of gsplat's CUDA kernel; constants are float32 so nothing promotes.
    one, two, half = _F(1.0), _F(2.0), _F(0.5)
    thr = _F(ALPHA_THRESHOLD)
    wf, hf = _F(width), _F(height)
    tan_fovx = half * wf / fx
    tan_fovy = half * hf / fy
    lim_x_pos = (wf - cx) / fx + _F(0.3) * tan_fovx
    lim_x_neg = cx / fx + _F(0.3) * tan_fovx
    lim_y_pos = (hf - cy) / fy + _F(0.3) * tan_fovy
    lim_y_neg = cy / fy + _F(0.3) * tan_fovy
    V = viewmat
    for i in numba.prange(means.shape[0]):
        valid[i] = False
        means2d[i, 0] = 0
        means2d[i, 1] = 0
        conics[i, 0] = 0
        conics[i, 1] = 0
        conics[i, 2] = 0
        radii[i, 0] = 0
        radii[i, 1] = 0
        opac_out[i] = 0
        comp_out[i] = 0
        px, py, pz = means[i, 0], means[i, 1], means[i, 2]
        x = V[0, 0] * px + V[0, 1] * py + V[0, 2] * pz + V[0, 3]
        y = V[1, 0] * px + V[1, 1] * py + V[1, 2] * pz + V[1, 3]
        z = V[2, 0] * px + V[2, 1] * py + V[2, 2] * pz + V[2, 3]
        depths[i] = z
        if z < near or z > far:
            continue
        # Rotation from the normalised quaternion (wxyz).
        qw, qx, qy, qz = quats[i, 0], quats[i, 1], quats[i, 2], quats[i, 3]
        inv = one / math.sqrt(qx * qx + qy * qy + qz * qz + qw * qw)
        qx *= inv
        qy *= inv
        qz *= inv
        qw *= inv
        x2, y2, z2 = qx * qx, qy * qy, qz * qz
        xy, xz, yz = qx * qy, qx * qz, qy * qz
        wx, wy, wz = qw * qx, qw * qy, qw * qz
        r00 = one - two * (y2 + z2)
        r01 = two * (xy - wz)
        r02 = two * (xz + wy)
        r10 = two * (xy + wz)
        r11 = one - two * (x2 + z2)
        r12 = two * (yz - wx)
        r20 = two * (xz - wy)
        r21 = two * (yz + wx)
        r22 = one - two * (x2 + y2)
        s0, s1, s2 = scales[i, 0], scales[i, 1], scales[i, 2]
        # M = R S; world covariance M M^T (symmetric, 6 entries).
        m00, m01, m02 = r00 * s0, r01 * s1, r02 * s2
        m10, m11, m12 = r10 * s0, r11 * s1, r12 * s2
        m20, m21, m22 = r20 * s0, r21 * s1, r22 * s2
        c00 = m00 * m00 + m01 * m01 + m02 * m02
        c01 = m00 * m10 + m01 * m11 + m02 * m12
        c02 = m00 * m20 + m01 * m21 + m02 * m22
        c11 = m10 * m10 + m11 * m11 + m12 * m12
        c12 = m10 * m20 + m11 * m21 + m12 * m22
        c22 = m20 * m20 + m21 * m21 + m22 * m22
        # Camera covariance Rv C Rv^T: first A = Rv C, then A Rv^T.
        a00 = V[0, 0] * c00 + V[0, 1] * c01 + V[0, 2] * c02
        a01 = V[0, 0] * c01 + V[0, 1] * c11 + V[0, 2] * c12
        a02 = V[0, 0] * c02 + V[0, 1] * c12 + V[0, 2] * c22
        a10 = V[1, 0] * c00 + V[1, 1] * c01 + V[1, 2] * c02
        a11 = V[1, 0] * c01 + V[1, 1] * c11 + V[1, 2] * c12
        a12 = V[1, 0] * c02 + V[1, 1] * c12 + V[1, 2] * c22
        a20 = V[2, 0] * c00 + V[2, 1] * c01 + V[2, 2] * c02
        a21 = V[2, 0] * c01 + V[2, 1] * c11 + V[2, 2] * c12
        a22 = V[2, 0] * c02 + V[2, 1] * c12 + V[2, 2] * c22
        k00 = a00 * V[0, 0] + a01 * V[0, 1] + a02 * V[0, 2]
        k01 = a00 * V[1, 0] + a01 * V[1, 1] + a02 * V[1, 2]
        k02 = a00 * V[2, 0] + a01 * V[2, 1] + a02 * V[2, 2]
        k11 = a10 * V[1, 0] + a11 * V[1, 1] + a12 * V[1, 2]
        k12 = a10 * V[2, 0] + a11 * V[2, 1] + a12 * V[2, 2]
        k22 = a20 * V[2, 0] + a21 * V[2, 1] + a22 * V[2, 2]
        # EWA Jacobian with the clamped direction; the mean uses the unclamped x, y.
        rz = one / z
        rz2 = rz * rz
        tx = z * min(lim_x_pos, max(-lim_x_neg, x * rz))
        ty = z * min(lim_y_pos, max(-lim_y_neg, y * rz))
        j00 = fx * rz
        j02 = -fx * tx * rz2
        j11 = fy * rz
        j12 = -fy * ty * rz2
        # cov2d = J K J^T with J = [[j00, 0, j02], [0, j11, j12]].
        u0 = j00 * k00 + j02 * k02
        u1 = j00 * k01 + j02 * k12
        u2 = j00 * k02 + j02 * k22
        v1 = j11 * k11 + j12 * k12
        v2 = j11 * k12 + j12 * k22
        s_00 = u0 * j00 + u2 * j02
        s_01 = u1 * j11 + u2 * j12
        s_11 = v1 * j11 + v2 * j12
        mx = fx * x * rz + cx
        my = fy * y * rz + cy
        # Low-pass blur and its compensation.
        det0 = s_00 * s_11 - s_01 * s_01
        s_00 += eps2d
        s_11 += eps2d
        det = s_00 * s_11 - s_01 * s_01
        if not det > 0:
            continue
        comp = math.sqrt(max(_F(0.0), det0 / det))
        op = opacities[i]
        if antialiased:
            op = op * comp
        if op < thr:
            continue
        extend = min(_F(MAX_EXTEND), math.sqrt(two * math.log(op / thr)))
        rx = np.ceil(extend * math.sqrt(s_00))
        ry = np.ceil(extend * math.sqrt(s_11))
        if rx <= 0 and ry <= 0:
            continue
        if mx + rx <= 0 or mx - rx >= wf or my + ry <= 0 or my - ry >= hf:
            continue
        inv_det = one / det
        valid[i] = True
        means2d[i, 0] = mx
        means2d[i, 1] = my
        conics[i, 0] = s_11 * inv_det
        conics[i, 1] = -s_01 * inv_det
        conics[i, 2] = s_00 * inv_det
        radii[i, 0] = np.int32(rx)
        radii[i, 1] = np.int32(ry)
        opac_out[i] = op
        comp_out[i] = comp


def project_numba(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    viewmat: Tensor,
    K: Tensor,
    width: int,
    height: int,
    *,
    near: float = 0.01,
    far: float = 1e10,
    eps2d: float = 0.3,
    antialiased: bool = False,
) -> Projection:
    """Fast float32 projection (numba, parallel over Gaussians). Same arguments as `project_torch`; CPU tensors."""
    n = _check_inputs(means, quats, scales, opacities, viewmat, K)

    def arr(t: Tensor) -> np.ndarray:
        return t.detach().to("cpu", torch.float32).contiguous().numpy()

    Kn = arr(K)
    means2d = np.empty((n, 2), np.float32)
    conics = np.empty((n, 3), np.float32)
    depths = np.empty(n, np.float32)
    radii = np.empty((n, 2), np.int32)
    opac = np.empty(n, np.float32)
    comp = np.empty(n, np.float32)
    valid = np.empty(n, np.bool_)
    _project_kernel(
        arr(means), arr(quats), arr(scales), arr(opacities), arr(viewmat),
        Kn[0, 0], Kn[1, 1], Kn[0, 2], Kn[1, 2], int(width), int(height),
        np.float32(near), np.float32(far), np.float32(eps2d), bool(antialiased),
        means2d, conics, depths, radii, opac, comp, valid,
    )  # fmt: skip
    t = torch.from_numpy
    return Projection(t(means2d), t(conics), t(depths), t(radii), t(opac), t(comp), t(valid), int(width), int(height))


def activate(splats: Splats) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(means, quats, scales, opacities) with exp / sigmoid applied in float32 torch, as gsplat's trainer does."""
    s = splats
    return s.means.float(), s.quats.float(), torch.exp(s.scales.float()), torch.sigmoid(s.opacities.float())


def project(
    splats: Splats,
    camera: Camera,
    *,
    near: float = 0.01,
    far: float = 1e10,
    eps2d: float = 0.3,
    rasterize_mode: Literal["classic", "antialiased"] = "classic",
    impl: Literal["numba", "torch"] = "numba",
) -> Projection:
    """Project `splats` (raw parameters) into `camera`; CPU. See `project_torch` for the maths."""
    assert rasterize_mode in ("classic", "antialiased"), rasterize_mode
    means, quats, scales, opacities = (t.cpu() for t in activate(splats))
    fn = project_numba if impl == "numba" else project_torch
    return fn(
        means, quats, scales, opacities, camera.viewmat.cpu(), camera.K.cpu(), camera.width, camera.height,
        near=near, far=far, eps2d=eps2d, antialiased=rasterize_mode == "antialiased",
    )  # fmt: skip
