"""Independent float64 reference of gsplat 1.5.3's rasterization (REFERENCE.md §1-2), for tests.

Written from the text of the formulas, sharing no code with utils/projection.py or utils/raster_cpu.py: numpy float64,
no tiles, a literal front-to-back loop per pixel over all depth-sorted Gaussians. Slow; use small images or
`pixels=` to evaluate a sample of pixels.

Pixels whose result may legitimately differ between a float32 rasterizer and this reference are flagged
`ambiguous`: some Gaussian's alpha is within `rtol` (relative) of 1/255, some T_next within `10 rtol` of 1e-4
(T is a product of many float32 factors), two contributing
Gaussians have depths within float32 resolution of each other (sort order), or a Gaussian with a borderline cull
(opacity ~ 1/255, z ~ near) could reach the pixel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

THR = 1.0 / 255.0
T_MIN = 1e-4


@dataclass
class RefProjection:
    means2d: np.ndarray  # [N, 2]
    conics: np.ndarray  # [N, 3] (a, b, c)
    depths: np.ndarray  # [N]
    opacities: np.ndarray  # [N] activated (x compensation if antialiased)
    radii: np.ndarray  # [N, 2] float (ceil'ed)
    valid: np.ndarray  # [N] bool
    borderline: np.ndarray  # [N] bool: the cull decision is within rounding of its threshold


@dataclass
class RefResult:
    colors: np.ndarray  # [P, D] (D may be 0)
    alpha: np.ndarray  # [P]
    depth: np.ndarray  # [P] sum w z
    weights: list  # per pixel: (gaussian ids [k] int64, weights [k] float64), front to back
    ambiguous: np.ndarray  # [P] bool
    pixels: np.ndarray  # [P] flat pixel indices


def _np(t) -> np.ndarray:
    if isinstance(t, torch.Tensor):
        t = t.detach().cpu().numpy()
    return np.asarray(t, dtype=np.float64)


def ref_project(splats, camera, *, near=0.01, far=1e10, eps2d=0.3, antialiased=False, rtol=1e-5) -> RefProjection:
    means = _np(splats.means)
    q = _np(splats.quats)
    scales = np.exp(_np(splats.scales))
    opac = 1.0 / (1.0 + np.exp(-_np(splats.opacities)))
    V = _np(camera.viewmat)
    K = _np(camera.K)
    W, H = camera.width, camera.height
    # gsplat's near/far are float32 arguments.
    near, far = float(np.float32(near)), float(np.float32(far))

    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    w, x, y, z = q.T
    R = np.empty((len(q), 3, 3))
    R[:, 0, 0] = 1 - 2 * (y * y + z * z)
    R[:, 0, 1] = 2 * (x * y - w * z)
    R[:, 0, 2] = 2 * (x * z + w * y)
    R[:, 1, 0] = 2 * (x * y + w * z)
    R[:, 1, 1] = 1 - 2 * (x * x + z * z)
    R[:, 1, 2] = 2 * (y * z - w * x)
    R[:, 2, 0] = 2 * (x * z - w * y)
    R[:, 2, 1] = 2 * (y * z + w * x)
    R[:, 2, 2] = 1 - 2 * (x * x + y * y)
    RS = R * scales[:, None, :]
    sigma3 = np.einsum("nij,nkj->nik", RS, RS)
    Rv, tv = V[:3, :3], V[:3, 3]
    mc = np.einsum("ij,nj->ni", Rv, means) + tv
    sc = np.einsum("ij,njk,lk->nil", Rv, sigma3, Rv)
    x, y, z = mc.T
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        lxp = (W - cx) / fx + 0.3 * (0.5 * W / fx)
        lxn = cx / fx + 0.3 * (0.5 * W / fx)
        lyp = (H - cy) / fy + 0.3 * (0.5 * H / fy)
        lyn = cy / fy + 0.3 * (0.5 * H / fy)
        tx = z * np.clip(x / z, -lxn, lxp)
        ty = z * np.clip(y / z, -lyn, lyp)
        J = np.zeros((len(z), 2, 3))
        J[:, 0, 0] = fx / z
        J[:, 0, 2] = -fx * tx / z**2
        J[:, 1, 1] = fy / z
        J[:, 1, 2] = -fy * ty / z**2
        cov = np.einsum("nij,njk,nlk->nil", J, sc, J)
        m2 = np.stack([fx * x / z + cx, fy * y / z + cy], axis=1)
        det0 = cov[:, 0, 0] * cov[:, 1, 1] - cov[:, 0, 1] * cov[:, 1, 0]
        cov[:, 0, 0] += eps2d
        cov[:, 1, 1] += eps2d
        det = cov[:, 0, 0] * cov[:, 1, 1] - cov[:, 0, 1] * cov[:, 1, 0]
        comp = np.sqrt(np.maximum(0.0, det0 / det))
        conics = np.stack([cov[:, 1, 1] / det, -cov[:, 0, 1] / det, cov[:, 0, 0] / det], axis=1)
        o = opac * comp if antialiased else opac
        extend = np.minimum(3.33, np.sqrt(2.0 * np.log(np.maximum(o / THR, 1.0))))
        rx = np.ceil(extend * np.sqrt(np.abs(cov[:, 0, 0])))
        ry = np.ceil(extend * np.sqrt(np.abs(cov[:, 1, 1])))
    valid = (z >= near) & (z <= far) & (det > 0) & (o >= THR) & ((rx > 0) | (ry > 0))
    valid &= (m2[:, 0] + rx > 0) & (m2[:, 0] - rx < W) & (m2[:, 1] + ry > 0) & (m2[:, 1] - ry < H)
    borderline = (np.abs(o - THR) <= rtol * THR) | ((np.abs(z - near) <= 1e-6 * abs(near)) & (z != near))
    return RefProjection(m2, conics, z, o, np.stack([rx, ry], 1), valid, borderline)


def ref_sh_colors(splats, camera, degree: int) -> np.ndarray:
    """[N, 3] float64 colours max(sum Y c + 0.5, 0) with the expanded Inria 3DGS basis (not Sloan's factored form)."""
    means = _np(splats.means)
    coeffs = np.concatenate([_np(splats.sh0), _np(splats.shN)], axis=1)
    campos = np.linalg.inv(_np(camera.viewmat))[:3, 3]
    d = means - campos
    d = d / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-12)
    x, y, z = d.T
    xx, yy, zz = x * x, y * y, z * z
    b = [np.full_like(x, 0.28209479177387814)]
    if degree >= 1:
        c1 = 0.4886025119029199
        b += [-c1 * y, c1 * z, -c1 * x]
    if degree >= 2:
        b += [
            1.0925484305920792 * x * y,
            -1.0925484305920792 * y * z,
            0.31539156525252005 * (2 * zz - xx - yy),
            -1.0925484305920792 * x * z,
            0.5462742152960396 * (xx - yy),
        ]
    if degree >= 3:
        b += [
            -0.5900435899266435 * y * (3 * xx - yy),
            2.890611442640554 * x * y * z,
            -0.4570457994644658 * y * (4 * zz - xx - yy),
            0.3731763325901154 * z * (2 * zz - 3 * xx - 3 * yy),
            -0.4570457994644658 * x * (4 * zz - xx - yy),
            1.445305721320277 * z * (xx - yy),
            -0.5900435899266435 * x * (xx - 3 * yy),
        ]
    basis = np.stack(b, axis=1)
    return np.maximum(np.einsum("nk,nkc->nc", basis, coeffs[:, : len(b)]) + 0.5, 0.0)


def ref_render(
    splats,
    camera,
    colors=None,
    *,
    background=None,
    rasterize_mode: str = "classic",
    near: float = 0.01,
    far: float = 1e10,
    eps2d: float = 0.3,
    pixels=None,
    rtol: float = 1e-5,
    chunk: int = 64,
) -> RefResult:
    """Per-pixel float64 compositing. colors: [N, D] array/tensor or None; background: [D] or None;
    pixels: flat pixel indices (y * W + x) to evaluate (default: all, row-major)."""
    W, H = camera.width, camera.height
    p = ref_project(splats, camera, near=near, far=far, eps2d=eps2d, antialiased=rasterize_mode == "antialiased", rtol=rtol)
    cols = np.zeros((splats.num, 0)) if colors is None else _np(colors)
    D = cols.shape[1]
    bg = np.zeros(D) if background is None else _np(background)
    pix = np.arange(W * H) if pixels is None else np.asarray(pixels, dtype=np.int64)
    # Candidate Gaussians (valid, or borderline ones that might be valid in float32), sorted by depth, stable.
    cand = np.flatnonzero(p.valid | (p.borderline & np.isfinite(p.depths) & (p.depths > 0)))
    cand = cand[np.argsort(p.depths[cand], kind="stable")]
    m2, con, o, z = p.means2d[cand], p.conics[cand], p.opacities[cand], p.depths[cand]
    val, border = p.valid[cand], p.borderline[cand]

    P = len(pix)
    out_c = np.zeros((P, D))
    out_a = np.zeros(P)
    out_d = np.zeros(P)
    amb = np.zeros(P, bool)
    weights = []
    for c0 in range(0, P, chunk):
        pp = pix[c0 : c0 + chunk]
        px = (pp % W) + 0.5
        py = (pp // W) + 0.5
        dx = m2[None, :, 0] - px[:, None]
        dy = m2[None, :, 1] - py[:, None]
        with np.errstate(over="ignore", invalid="ignore"):
            sig = 0.5 * (con[None, :, 0] * dx * dx + con[None, :, 2] * dy * dy) + con[None, :, 1] * dx * dy
            alpha = np.minimum(0.999, o[None, :] * np.exp(-sig))
        for r in range(len(pp)):
            k_all = np.flatnonzero((sig[r] >= 0) & (alpha[r] >= THR * (1 - rtol)))
            ambiguous = bool(np.any(np.abs(alpha[r, k_all] - THR) <= rtol * THR)) or bool(np.any(border[k_all]))
            T = 1.0
            C = np.zeros(D)
            dep = 0.0
            ids, ws, zs = [], [], []
            for k in k_all:
                if not val[k]:
                    continue
                a = alpha[r, k]
                if a < THR:
                    continue
                Tn = T * (1.0 - a)
                if abs(Tn - T_MIN) <= rtol * T_MIN * 10:
                    ambiguous = True
                if Tn <= T_MIN:
                    zs.append(z[k])
                    break
                w = a * T
                C += w * cols[cand[k]]
                dep += w * z[k]
                ids.append(cand[k])
                ws.append(w)
                zs.append(z[k])
                T = Tn
            zs = np.asarray(zs)
            if len(zs) > 1:
                dz = np.diff(zs)
                if np.any((dz != 0) & (np.abs(dz) <= 1e-6 * np.abs(zs[1:]))):
                    ambiguous = True
            i = c0 + r
            out_c[i] = C + T * bg
            out_a[i] = 1.0 - T
            out_d[i] = dep
            amb[i] = ambiguous
            weights.append((np.asarray(ids, np.int64), np.asarray(ws, np.float64)))
    return RefResult(out_c, out_a, out_d, weights, amb, pix)
