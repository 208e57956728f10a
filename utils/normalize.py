"""gsplat's world normalisation (`normalize_world_space=True`), recomputed from a COLMAP model.

gsplat's trainer maps every camera and point by T = T3 T2 T1 and does not save T:
  T1 `similarity_from_cameras`: rotate the mean camera up vector (camera -y) onto -y (gsplat's code rotates it onto
     its `up_camspace = (0, -1, 0)`; later steps decide the final axes), recentre on the per-axis median of the points
     on each optical axis closest to the origin, scale by 1 / median camera distance to that centre;
  T2 `align_principal_axes`: rotate the points' PCA axes (about their per-axis median) onto x, y, z (largest first);
  T3 diag(1, -1, -1) if median(z) > mean(z) afterwards.
All in float64 numpy, like gsplat. The loader applies T to camera-to-world matrices (not to the Gaussians).

Eigenvector signs are implementation-defined, so two frames are possible (T and a 180-degree turn about z of it):
`choose_world_frame` decides between raw, T and the alternative by matching points3D to the Gaussian means.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .errors import UserError


def similarity_from_cameras(c2w: np.ndarray) -> np.ndarray:
    """T1: [4, 4] similarity from camera-to-world matrices c2w [M, 4, 4] (OpenCV axes)."""
    assert c2w.ndim == 3 and c2w.shape[1:] == (4, 4), c2w.shape
    R = c2w[:, :3, :3].astype(np.float64)
    t = c2w[:, :3, 3].astype(np.float64)
    # Mean "up" of the cameras: camera -y axis in world coordinates.
    world_up = (-R[:, :, 1]).mean(axis=0)
    world_up = world_up / np.linalg.norm(world_up)
    target = np.array([0.0, -1.0, 0.0])  # gsplat's up_camspace
    c = float(target @ world_up)
    v = np.cross(world_up, target)
    skew = np.array([[0.0, -v[2], v[1]], [v[2], 0.0, -v[0]], [-v[1], v[0], 0.0]])
    if c > -1:
        R_align = np.eye(3) + skew + skew @ skew / (1 + c)  # Rodrigues: world_up -> target
    else:  # world_up == -target exactly: gsplat flips x
        R_align = np.diag([-1.0, 1.0, 1.0])
    R = R_align @ R
    t = t @ R_align.T
    fwd = R[:, :, 2]
    # Per camera, the point of its optical axis closest to the origin; centre = per-axis median of those.
    nearest = t + ((-t) * fwd).sum(-1, keepdims=True) * fwd
    translate = -np.median(nearest, axis=0)
    T = np.eye(4)
    T[:3, :3] = R_align
    T[:3, 3] = translate
    scale = 1.0 / np.median(np.linalg.norm(t + translate, axis=-1))
    T[:3, :] *= scale
    return T


def align_principal_axes(points: np.ndarray) -> np.ndarray:
    """T2: [4, 4] rigid transform putting the PCA axes of points [P, 3] (about their per-axis median) on x, y, z."""
    assert points.ndim == 2 and points.shape[1] == 3, points.shape
    centre = np.median(points, axis=0)
    cov = np.cov(points - centre, rowvar=False)
    evals, evecs = np.linalg.eigh(cov)
    evecs = evecs[:, np.argsort(evals)[::-1]]
    if np.linalg.det(evecs) < 0:
        evecs[:, 0] *= -1
    T = np.eye(4)
    T[:3, :3] = evecs.T
    T[:3, 3] = -evecs.T @ centre
    return T


def transform_points(T: np.ndarray, points: np.ndarray) -> np.ndarray:
    """points [P, 3] -> T applied, float64."""
    return points.astype(np.float64) @ T[:3, :3].T + T[:3, 3]


def transform_cameras(T: np.ndarray, c2w: np.ndarray) -> np.ndarray:
    """c2w [M, 4, 4] -> T @ c2w with the rotation re-orthonormalised (T's scale divided out; translation keeps it)."""
    out = np.einsum("ki,nij->nkj", T, c2w.astype(np.float64))
    s = np.linalg.norm(out[:, 0, :3], axis=1)
    out[:, :3, :3] /= s[:, None, None]
    return out


FLIP_YZ = np.diag([1.0, -1.0, -1.0, 1.0])
ROT_Z180 = np.diag([-1.0, -1.0, 1.0, 1.0])


def gsplat_world_transform(c2w: np.ndarray, points: np.ndarray) -> np.ndarray:
    """T = T3 T2 T1 [4, 4] float64 exactly as gsplat's COLMAP parser builds it.

    c2w: [M, 4, 4] camera-to-world of all registered images; points: [P, 3] all points3D. gsplat reads the
    points as float32, so they are rounded to float32 here too.
    """
    points = np.asarray(points, dtype=np.float32).astype(np.float64)
    if len(points) < 3:
        raise UserError(f"COLMAP model has {len(points)} points3D; world normalisation needs at least 3")
    T1 = similarity_from_cameras(c2w)
    p1 = transform_points(T1, points)
    T2 = align_principal_axes(p1)
    p2 = transform_points(T2, p1)
    T = T2 @ T1
    if np.median(p2[:, 2]) > np.mean(p2[:, 2]):
        T = FLIP_YZ @ T
    return T


def similarity_scale(T: np.ndarray) -> float:
    """Uniform scale of a similarity transform [4, 4]."""
    return float(np.cbrt(abs(np.linalg.det(T[:3, :3]))))


@dataclass
class FrameChoice:
    """Result of `choose_world_frame`.

    name: "off" (raw COLMAP frame), "on" (gsplat's T) or "on-alt" (T with the other eigenvector signs).
    transform: [4, 4] float64 world transform to apply to the cameras.
    scores: per candidate, median nearest-mean distance / scene scale (lower is better).
    """

    name: str
    transform: np.ndarray
    scores: dict[str, float]


def nearest_distances(query: Tensor, ref: Tensor, chunk: int = 8192) -> Tensor:
    """For query [Q, 3], the distance to the nearest row of ref [R, 3] (brute force in chunks of ref)."""
    assert query.ndim == 2 and query.shape[1] == 3 and ref.ndim == 2 and ref.shape[1] == 3
    best = torch.full((query.shape[0],), float("inf"), dtype=query.dtype)
    for i in range(0, ref.shape[0], chunk):
        d = torch.cdist(query, ref[i : i + chunk])
        best = torch.minimum(best, d.min(dim=1).values)
    return best


def choose_world_frame(
    points_raw: np.ndarray,
    T: np.ndarray,
    means: Tensor,
    num_samples: int = 2000,
    max_means: int = 300_000,
    max_score: float = 0.05,
    seed: int = 0,
) -> FrameChoice:
    """Decide which frame the Gaussians `means` [N, 3] live in: raw COLMAP, gsplat-normalised T, or T's twin.

    Each candidate maps a subsample of points3D `points_raw` [P, 3]; its score is the median distance to the
    nearest Gaussian mean divided by the spread of the mapped points (median distance to their median), so the
    frames of different scale compare fairly. Raises UserError when no frame fits (best score > max_score) or
    when two genuinely different frames fit about equally well.
    """
    rng = np.random.default_rng(seed)
    pts = np.asarray(points_raw, dtype=np.float64)
    if len(pts) > num_samples:
        pts = pts[rng.choice(len(pts), num_samples, replace=False)]
    m = means.detach().to("cpu", torch.float64)
    if m.shape[0] > max_means:
        m = m[torch.from_numpy(rng.choice(m.shape[0], max_means, replace=False))]
    cands = {"off": np.eye(4), "on": T, "on-alt": ROT_Z180 @ T}
    scores, mapped = {}, {}
    for name, Tc in cands.items():
        q = transform_points(Tc, pts)
        spread = float(np.median(np.linalg.norm(q - np.median(q, axis=0), axis=1))) or 1.0
        nn = nearest_distances(torch.from_numpy(q), m)
        scores[name] = float(nn.median()) / spread
        mapped[name] = q / spread
    order = sorted(scores, key=scores.get)
    best, second = order[0], order[1]
    detail = ", ".join(f"{k}={v:.3g}" for k, v in scores.items())
    if scores[best] > max_score:
        raise UserError(
            f"--normalize auto: the Gaussians match neither the raw COLMAP frame nor gsplat's normalised frame "
            f"(relative point-to-Gaussian distances {detail}); is this the right COLMAP model?"
        )
    # Two different frames fitting equally well cannot be told apart (a near-identity T is harmless).
    differ = float(np.median(np.linalg.norm(mapped[best] - mapped[second], axis=1))) > 3 * scores[best]
    if scores[second] < 1.5 * scores[best] and differ:
        raise UserError(f"--normalize auto: ambiguous world frame ({detail}); pass --normalize on or off explicitly")
    return FrameChoice(best, cands[best], scores)
