"""Generated camera paths: orbit geometry, named views, robust bounds, framing the real plant."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from utils.camera import Camera
from utils.camera_paths import (
    VIEW_NAMES,
    fit_distance,
    guess_up,
    named_view,
    orbit_cameras,
    orbit_for_scene,
    scene_bounds,
)
from utils.scene_io import load_scene

PLANT = Path(__file__).parents[1].parent / "shared" / "data" / "plant" / "plant.splat"


def project(cam: Camera, X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    V, K = cam.viewmat.double(), cam.K.double()
    pc = X.double().reshape(-1, 3) @ V[:3, :3].T + V[:3, 3]
    uv = pc[:, :2] / pc[:, 2:] * torch.stack([K[0, 0], K[1, 1]]) + torch.stack([K[0, 2], K[1, 2]])
    return uv, pc[:, 2]


@pytest.mark.parametrize("up", [(0, -1, 0), (0, 0, 1), (0.3, 0.2, -0.9)])
def test_orbit_geometry(up):
    center = torch.tensor([1.0, -2.0, 0.5])
    u = torch.tensor(up, dtype=torch.float64)
    u = u / u.norm()
    cams = orbit_cameras(center, 3.0, 12, 160, 90, up=up, elevation_deg=25.0, fov_y_deg=40.0)
    assert len(cams) == 12 and len({c.name for c in cams}) == 12
    eyes = torch.stack([c.campos.double() for c in cams])
    d = eyes - center.double()
    assert torch.allclose(d.norm(dim=1), torch.full((12,), 3.0, dtype=torch.float64), atol=1e-5)
    elev = torch.rad2deg(torch.asin((d @ u) / d.norm(dim=1)))
    assert torch.allclose(elev, torch.full((12,), 25.0, dtype=torch.float64), atol=1e-3)
    # evenly spaced: consecutive horizontal directions 30 degrees apart
    hz = d - (d @ u)[:, None] * u
    hz = hz / hz.norm(dim=1, keepdim=True)
    ang = torch.rad2deg(torch.acos((hz * hz.roll(-1, 0)).sum(1).clamp(-1, 1)))
    assert torch.allclose(ang, torch.full((12,), 30.0, dtype=torch.float64), atol=1e-3)
    for c in cams:
        uv, z = project(c, torch.stack([center, center + 0.1 * u.float()]))
        assert torch.allclose(uv[0], torch.tensor([80.0, 45.0], dtype=torch.float64), atol=1e-3)  # looks at centre
        assert uv[1, 1] < uv[0, 1] - 1  # world up appears up in the image
        assert math.isclose(c.K[1, 1].item(), 45 / math.tan(math.radians(20)), rel_tol=1e-5)


def test_named_views():
    center = torch.tensor([0.5, 0.0, -1.0])
    up = (0.0, -1.0, 0.0)
    views = {n: named_view(n, center, 2.0, up, 100, 80) for n in VIEW_NAMES}
    eye = {n: v.campos.double() - center.double() for n, v in views.items()}
    u = torch.tensor(up, dtype=torch.float64)
    assert torch.allclose(eye["top"], 2 * u, atol=1e-5) and torch.allclose(eye["bottom"], -2 * u, atol=1e-5)
    # -y up: front is +z, so the front camera sits at -z looking along +z; right = front x up = +x
    assert torch.allclose(eye["front"], torch.tensor([0, 0, -2.0], dtype=torch.float64), atol=1e-5)
    assert torch.allclose(eye["back"], -eye["front"], atol=1e-5)
    assert torch.allclose(eye["right"], torch.tensor([2.0, 0, 0], dtype=torch.float64), atol=1e-5)
    assert torch.allclose(eye["left"], -eye["right"], atol=1e-5)
    for n, v in views.items():
        uv, _ = project(v, center[None])
        assert torch.allclose(uv[0], torch.tensor([50.0, 40.0], dtype=torch.float64), atol=1e-3), n
    # from the front, +x (right) appears on the right of the image
    uv, _ = project(views["front"], torch.stack([center, center + torch.tensor([0.1, 0, 0])]))
    assert uv[1, 0] > uv[0, 0] + 1
    # orbit azimuth 0 / 90 at elevation 0 are the front / right views
    orb = orbit_cameras(center, 2.0, 4, 100, 80, up=up, elevation_deg=0.0)
    assert torch.allclose(orb[0].viewmat, views["front"].viewmat, atol=1e-5)
    assert torch.allclose(orb[1].viewmat, views["right"].viewmat, atol=1e-5)
    with pytest.raises(ValueError, match="unknown view 'diagonal'"):
        named_view("diagonal", center, 2.0, up, 100, 80)


def test_scene_bounds_ignores_outliers():
    g = torch.Generator().manual_seed(0)
    pts = torch.rand(20000, 3, generator=g) * torch.tensor([2.0, 1.0, 4.0]) + torch.tensor([1.0, 2.0, 3.0])
    pts = torch.cat([pts, torch.full((30, 3), 1e4)])  # far floaters
    b = scene_bounds(pts)
    assert torch.allclose(b.center, torch.tensor([2.0, 2.5, 5.0]), atol=0.05)
    assert torch.allclose(b.extent, torch.tensor([2.0, 1.0, 4.0]) * 0.96, atol=0.05)
    assert math.isclose(b.radius, 0.5 * float(b.extent.norm()), rel_tol=1e-6)


def test_guess_up():
    up = torch.tensor([0.2, 0.1, 1.0])
    cams = orbit_cameras([0, 0, 0], 2.0, 8, 32, 32, up=up, elevation_deg=10)
    assert torch.allclose(guess_up(cams), up / up.norm(), atol=1e-5)


@pytest.mark.skipif(not PLANT.exists(), reason="shared plant data not available")
def test_orbit_frames_real_plant():
    s = load_scene(PLANT)
    cams = orbit_for_scene(s, 8, 320, 240)  # up defaults to -y, the plant's up axis
    b = scene_bounds(s)
    keep = torch.sigmoid(s.opacities) >= 0.1
    X = s.means[keep]
    for c in cams:
        uv, z = project(c, X)
        assert (z > 0).all()
        inside = (uv[:, 0] >= 0) & (uv[:, 0] < 320) & (uv[:, 1] >= 0) & (uv[:, 1] < 240)
        assert inside.float().mean() > 0.97
        # the plant fills the view: its projected bulk spans a good part of the image height
        lo, hi = torch.quantile(uv[:, 1], torch.tensor([0.02, 0.98], dtype=torch.float64))
        assert (hi - lo) > 0.4 * 240
        # the pot (large y, since up is -y) is below the leaves in the image
        top_y = X[:, 1] < torch.quantile(X[:, 1], 0.2)
        assert uv[top_y, 1].mean() < uv[~top_y, 1].mean()
    assert math.isclose((cams[0].campos - b.center).norm().item(), fit_distance(b.radius, 320, 240, 50.0), rel_tol=1e-5)
