"""Generated cameras: orbits around a scene, named views (top/front/...), robust scene bounds, up-axis guess."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .camera import Camera, look_at
from .splats import Splats

VIEW_NAMES = ("front", "back", "left", "right", "top", "bottom")


@dataclass
class SceneBounds:
    """center: [3]; extent: [3] per-axis size of the bulk of the scene; radius: half the diagonal of extent."""

    center: Tensor
    extent: Tensor
    radius: float


def _unit(v: Tensor | list[float] | tuple[float, ...]) -> Tensor:
    t = torch.as_tensor(v, dtype=torch.float64).reshape(3)
    n = t.norm()
    if not torch.isfinite(n) or n < 1e-12:
        raise ValueError(f"direction {t.tolist()} has zero length")
    return t / n


def _basis(up: Tensor) -> tuple[Tensor, Tensor]:
    """(front, right) unit vectors perpendicular to unit `up`.

    front: the world axis among z, x, y (in that order of preference) least parallel to `up`, made perpendicular
    to it: for a y-up or -y-up scene it is +z. right = front x up (image right when looking along `front` with
    `up` appearing up, OpenCV convention).
    """
    axes = torch.eye(3, dtype=torch.float64)[[2, 0, 1]]
    dots = (axes @ up).abs()
    ref = axes[int(torch.argmin(dots + 1e-9 * torch.arange(3)))]  # ties: earlier axis wins
    front = ref - (ref @ up) * up
    front = front / front.norm()
    right = torch.linalg.cross(front, up)
    return front, right / right.norm()


def scene_bounds(scene: Splats | Tensor, lo: float = 2.0, hi: float = 98.0, min_opacity: float = 0.1) -> SceneBounds:
    """Robust centre/extent of a scene from per-axis percentiles of the Gaussian means (far floaters ignored).

    scene: `Splats` (Gaussians with opacity below `min_opacity` are skipped when enough others remain) or means [N, 3].
    """
    if isinstance(scene, Splats):
        means = scene.means.detach().double()
        keep = torch.sigmoid(scene.opacities.detach().double()) >= min_opacity
        if int(keep.sum()) >= max(10, means.shape[0] // 10):
            means = means[keep]
    else:
        means = scene.detach().double()
    assert means.ndim == 2 and means.shape[1] == 3 and means.shape[0] > 0, means.shape
    if means.shape[0] > 1_000_000:  # quantile has an input size limit; a subsample is plenty
        means = means[torch.randperm(means.shape[0], generator=torch.Generator().manual_seed(0))[:1_000_000]]
    q = torch.quantile(means, torch.tensor([lo / 100, hi / 100], dtype=torch.float64), dim=0)
    center = 0.5 * (q[0] + q[1])
    extent = q[1] - q[0]
    radius = float(0.5 * extent.norm())
    return SceneBounds(center.float(), extent.float(), max(radius, 1e-6))


def guess_up(cameras: list[Camera]) -> Tensor:
    """[3] unit world direction most cameras see as "up": the mean of their -y axes (OpenCV) in world space."""
    ups = torch.stack([-c.c2w.double()[:3, 1] for c in cameras])
    return _unit(ups.mean(0)).float()


def orbit_cameras(
    center: Tensor | list[float],
    radius: float,
    n: int,
    width: int,
    height: int,
    up: Tensor | list[float] | tuple[float, ...] = (0.0, -1.0, 0.0),
    elevation_deg: float = 20.0,
    fov_y_deg: float = 50.0,
    start_azimuth_deg: float = 0.0,
) -> list[Camera]:
    """`n` cameras evenly spaced on a circle around `center` at distance `radius`, looking at it.

    up: world up (appears up in every image); elevation_deg: angle above the plane perpendicular to up (clamped
    to +-89 so the view is never parallel to up). Azimuth 0 is the "front" view of `named_view`; azimuth grows
    towards the "right" view (azimuth 90 degrees = named_view("right")).
    """
    c = torch.as_tensor(center, dtype=torch.float64).reshape(3)
    u = _unit(up)
    front, right = _basis(u)
    el = math.radians(max(-89.0, min(89.0, elevation_deg)))
    cams = []
    for i in range(n):
        az = math.radians(start_azimuth_deg) + 2 * math.pi * i / n
        # camera sits on the -front side at azimuth 0 (looking along +front), then moves towards +right
        horiz = -math.cos(az) * front + math.sin(az) * right
        eye = c + radius * (math.cos(el) * horiz + math.sin(el) * u)
        cams.append(look_at(eye, c, u, width, height, fov_y_deg, name=f"orbit_{i:03d}"))
    return cams


def fit_distance(radius: float, width: int, height: int, fov_y_deg: float, margin: float = 1.1) -> float:
    """Camera distance at which a sphere of `radius` fits the narrower field of view, with `margin`."""
    half_y = math.radians(fov_y_deg) / 2
    half_x = math.atan(math.tan(half_y) * width / height)
    return margin * radius / math.sin(min(half_x, half_y))


def orbit_for_scene(
    splats: Splats | Tensor,
    n: int,
    width: int,
    height: int,
    up: Tensor | list[float] | None = None,
    cameras: list[Camera] | None = None,
    elevation_deg: float = 20.0,
    fov_y_deg: float = 50.0,
    margin: float = 1.1,
) -> list[Camera]:
    """An orbit that keeps the bulk of the scene (robust bounds) in view.

    up: world up; if None, guessed from `cameras` when given, else -y (the usual OpenCV/COLMAP capture).
    """
    b = scene_bounds(splats)
    if up is None:
        up = guess_up(cameras) if cameras else torch.tensor([0.0, -1.0, 0.0])
    dist = fit_distance(b.radius, width, height, fov_y_deg, margin)
    return orbit_cameras(b.center, dist, n, width, height, up, elevation_deg, fov_y_deg)


def named_view(
    name: str,
    center: Tensor | list[float],
    radius: float,
    up: Tensor | list[float] | tuple[float, ...],
    width: int,
    height: int,
    fov_y_deg: float = 50.0,
) -> Camera:
    """A canonical view of `center` from distance `radius` (use `fit_distance` to frame an object).

    With front = the world axis among z, x, y least parallel to `up` (made perpendicular; +z for y-up and -y-up
    scenes) and right = front x up:
      front: camera at center - radius*front looking along +front (the orbit's azimuth 0);
      back: at center + radius*front; right: at center + radius*right; left: at center - radius*right;
      top: at center + radius*up looking down, image up = +front; bottom: at center - radius*up, image up = +front.
    In all side views `up` appears up in the image.
    """
    c = torch.as_tensor(center, dtype=torch.float64).reshape(3)
    u = _unit(up)
    front, right = _basis(u)
    if name == "front":
        eye, img_up = c - radius * front, u
    elif name == "back":
        eye, img_up = c + radius * front, u
    elif name == "right":
        eye, img_up = c + radius * right, u
    elif name == "left":
        eye, img_up = c - radius * right, u
    elif name == "top":
        eye, img_up = c + radius * u, front
    elif name == "bottom":
        eye, img_up = c - radius * u, front
    else:
        raise ValueError(f"unknown view {name!r}; expected one of {', '.join(VIEW_NAMES)}")
    return look_at(eye, c, img_up, width, height, fov_y_deg, name=name)
