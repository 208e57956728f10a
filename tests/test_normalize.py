"""gsplat world normalisation: independent float64 reference, invariants, camera transform, frame auto-detection."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from utils.errors import UserError
from utils.normalize import (
    ROT_Z180,
    align_principal_axes,
    choose_world_frame,
    gsplat_world_transform,
    nearest_distances,
    similarity_from_cameras,
    similarity_scale,
    transform_cameras,
    transform_points,
)

SHARED = Path(__file__).parents[1].parent / "shared"
SACRE = SHARED / "data" / "sacre_coeur"


# ---------------------------------------------------------------- synthetic scene


def lookat_c2w(eye: np.ndarray, target: np.ndarray, up: np.ndarray) -> np.ndarray:
    f = target - eye
    f /= np.linalg.norm(f)
    r = np.cross(f, up)
    r /= np.linalg.norm(r)
    d = np.cross(f, r)
    c2w = np.eye(4)
    c2w[:3, :3] = np.stack([r, d, f], axis=1)  # columns: camera x (right), y (down), z (forward)
    c2w[:3, 3] = eye
    return c2w


def synthetic_scene(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Cameras on a tilted, shifted ring looking at an object standing on a ground plane, in an arbitrary frame."""
    rng = np.random.default_rng(seed)
    up = np.array([0.0, 0.0, 1.0])
    c2ws = []
    for a in np.linspace(0, 2 * np.pi, 24, endpoint=False):
        eye = np.array([4 * np.cos(a), 3 * np.sin(a), 1.5 + 0.3 * rng.normal()])
        c2ws.append(lookat_c2w(eye, rng.normal(size=3) * 0.2, up))
    c2w = np.stack(c2ws)
    ground = np.c_[rng.uniform(-4, 4, 3000), rng.uniform(-2.5, 2.5, 3000), rng.normal(0, 0.02, 3000)]
    obj = rng.normal(size=(800, 3)) * [0.3, 0.3, 0.6] + [0, 0, 0.8]
    pts = np.r_[ground, obj]
    # hide it in a random similarity frame
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    if np.linalg.det(q) < 0:
        q[:, 0] *= -1
    S = np.eye(4)
    S[:3, :3] = 2.7 * q
    S[:3, 3] = [5.0, -3.0, 12.0]
    c2w = np.einsum("ij,njk->nik", S, c2w)
    c2w[:, :3, :3] /= 2.7
    return c2w, pts @ S[:3, :3].T + S[:3, 3]


# ---------------------------------------------------------------- independent reference (torch float64)


def reference_transform(c2w: np.ndarray, points: np.ndarray) -> np.ndarray:
    """gsplat's T3 T2 T1 rebuilt from its description with other primitives (axis-angle, SVD-free eigh in torch)."""
    c2w_t = torch.from_numpy(c2w).double()
    pts = torch.from_numpy(np.asarray(points, np.float32).astype(np.float64))
    R, t = c2w_t[:, :3, :3], c2w_t[:, :3, 3]
    up = -R[:, :, 1].mean(0)
    up = up / up.norm()
    tgt = torch.tensor([0.0, -1.0, 0.0], dtype=torch.float64)
    axis = torch.linalg.cross(up, tgt)
    s, c = axis.norm(), up @ tgt
    if s < 1e-12:
        Ra = torch.eye(3, dtype=torch.float64)
    else:  # rotation by angle atan2(s, c) about axis
        k = axis / s
        Kx = torch.tensor([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]], dtype=torch.float64)
        ang = torch.atan2(s, c)
        Ra = torch.eye(3, dtype=torch.float64) + torch.sin(ang) * Kx + (1 - torch.cos(ang)) * Kx @ Kx
    t = t @ Ra.T
    fwd = (Ra @ R)[:, :, 2]
    foot = t - (t * fwd).sum(1, keepdim=True) * fwd  # closest point to the origin on each optical axis
    # numpy-style median (mean of the two middle values for even counts) == linear quantile 0.5
    centre = foot.quantile(0.5, dim=0)
    scale = 1 / (t - centre).norm(dim=1).quantile(0.5)
    T1 = torch.eye(4, dtype=torch.float64)
    T1[:3, :3] = scale * Ra
    T1[:3, 3] = -scale * centre
    p1 = pts @ T1[:3, :3].T + T1[:3, 3]
    med = p1.quantile(0.5, dim=0)
    X = p1 - med
    cov = X.T @ X / (len(X) - 1) - torch.outer(X.mean(0), X.mean(0)) * len(X) / (len(X) - 1)
    w, V = torch.linalg.eigh(cov)
    V = V[:, torch.argsort(w, descending=True)]
    if torch.linalg.det(V) < 0:
        V[:, 0] *= -1
    T2 = torch.eye(4, dtype=torch.float64)
    T2[:3, :3] = V.T
    T2[:3, 3] = -V.T @ med
    T = T2 @ T1
    p2 = p1 @ T2[:3, :3].T + T2[:3, 3]
    if p2[:, 2].median() > p2[:, 2].mean():
        T = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=torch.float64)) @ T
    return T.numpy()


def assert_same_frame(T: np.ndarray, ref: np.ndarray, points: np.ndarray, atol: float) -> None:
    """T equals ref, or ref turned 180 degrees about z (the eigenvector-sign twin)."""
    a = transform_points(T, points)
    errs = [np.abs(a - transform_points(R, points)).max() for R in (ref, ROT_Z180 @ ref)]
    assert min(errs) < atol, errs


def load_sacre():
    pycolmap = pytest.importorskip("pycolmap")
    if not SACRE.exists():
        pytest.skip("shared Sacre-Coeur data not available")
    rec = pycolmap.Reconstruction(str(SACRE / "sparse" / "0"))
    ims = sorted(rec.images.values(), key=lambda im: im.name)
    c2w = []
    for im in ims:
        w2c = np.eye(4)
        w2c[:3] = im.cam_from_world().matrix()
        c2w.append(np.linalg.inv(w2c))
    pts = np.array([p.xyz for p in rec.points3D.values()])
    return np.stack(c2w), pts


@pytest.fixture(params=["synthetic", "sacre_coeur"])
def scene(request):
    return synthetic_scene() if request.param == "synthetic" else load_sacre()


# ---------------------------------------------------------------- tests


def test_matches_independent_reference(scene):
    c2w, pts = scene
    T = gsplat_world_transform(c2w, pts)
    ref = reference_transform(c2w, pts)
    assert_same_frame(T, ref, pts, atol=1e-9 * np.abs(transform_points(ref, pts)).max() + 1e-9)


def test_invariants(scene):
    c2w, pts = scene
    T1 = similarity_from_cameras(c2w)
    c1 = transform_cameras(T1, c2w)
    up = -c1[:, :3, 1].mean(0)
    assert np.allclose(up / np.linalg.norm(up), [0, -1, 0], atol=1e-12)  # gsplat's up_camspace is -y
    assert np.isclose(np.median(np.linalg.norm(c1[:, :3, 3], axis=1)), 1.0, atol=1e-12)
    p1 = transform_points(T1, pts)
    T2 = align_principal_axes(p1)
    p2 = transform_points(T2, p1)
    assert np.allclose(transform_points(T2, np.median(p1, axis=0)[None]), 0, atol=1e-12)  # rotation about the median
    cov = np.cov(p2, rowvar=False)
    assert np.abs(cov - np.diag(np.diag(cov))).max() < 1e-9 * np.abs(cov).max()
    assert np.all(np.diff(np.diag(cov)) <= 0)  # x has the most variance, z the least
    T = gsplat_world_transform(c2w, pts)
    p = transform_points(T, pts)
    assert np.median(p[:, 2]) <= np.mean(p[:, 2])  # T3 made the scene "floor-down"
    assert np.allclose(T[:3, :3] @ T[:3, :3].T, similarity_scale(T) ** 2 * np.eye(3), atol=1e-12)


def test_synthetic_up_is_plus_z():
    """A ground-plane scene ends with +z up (gsplat's convention)."""
    c2w, pts = synthetic_scene(1)
    T = gsplat_world_transform(c2w, pts)
    c = transform_cameras(T, c2w)
    up = -c[:, :3, 1].mean(0)
    assert up[2] / np.linalg.norm(up) > 0.9


def test_transform_cameras_keeps_projection(scene):
    """Projecting transformed points with transformed cameras gives the same pixels (and a proper rotation)."""
    c2w, pts = scene
    T = gsplat_world_transform(c2w, pts)
    c2 = transform_cameras(T, c2w)
    R = c2[:, :3, :3]
    assert np.allclose(R @ R.transpose(0, 2, 1), np.eye(3), atol=1e-10)
    assert np.allclose(np.linalg.det(R), 1.0, atol=1e-10)
    p2 = transform_points(T, pts)
    for a, b in zip(c2w[:5], c2[:5]):
        x1 = (pts - a[:3, 3]) @ a[:3, :3]
        x2 = (p2 - b[:3, 3]) @ b[:3, :3]
        assert np.allclose(x1[:, :2] / x1[:, 2:], x2[:, :2] / x2[:, 2:], atol=1e-8)


def test_nearest_distances_bruteforce():
    g = torch.Generator().manual_seed(0)
    q, r = torch.randn(50, 3, generator=g), torch.randn(1000, 3, generator=g)
    d = nearest_distances(q, r, chunk=77)
    assert torch.allclose(d, torch.cdist(q, r).min(1).values)


def gaussians_at(points: np.ndarray, seed: int = 0) -> torch.Tensor:
    """Means of a 'trained' scene: jittered copies of the points plus extra floaters, shuffled."""
    rng = np.random.default_rng(seed)
    spread = np.median(np.linalg.norm(points - np.median(points, 0), axis=1))
    near = np.repeat(points, 3, 0) + rng.normal(size=(3 * len(points), 3)) * 0.003 * spread
    far = rng.normal(size=(len(points) // 5, 3)) * spread * 2 + np.median(points, 0)
    m = np.r_[near, far]
    return torch.from_numpy(m[rng.permutation(len(m))]).float()


def test_auto_detection(scene, capsys):
    c2w, pts = scene
    T = gsplat_world_transform(c2w, pts)
    assert choose_world_frame(pts, T, gaussians_at(transform_points(T, pts))).name == "on"
    assert choose_world_frame(pts, T, gaussians_at(pts)).name == "off"
    alt = choose_world_frame(pts, T, gaussians_at(transform_points(ROT_Z180 @ T, pts)))
    assert alt.name == "on-alt" and np.allclose(alt.transform, ROT_Z180 @ T)
    rng = np.random.default_rng(3)
    with pytest.raises(UserError, match="match neither the raw COLMAP frame nor gsplat's normalised frame"):
        choose_world_frame(pts, T, torch.from_numpy(rng.normal(size=(5000, 3)) * 50 + 300).float())
