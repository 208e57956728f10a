"""A pinhole camera in gsplat's conventions."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor


@dataclass
class Camera:
    """One pinhole view.

    viewmat: [4, 4] float32 world->camera, OpenCV axes (x right, y down, z forward).
    K: [3, 3] float32 intrinsics; only fx, fy, cx, cy are used.
    width, height: image size in pixels (from the camera model, never 2*cx).
    name: image name (file name for COLMAP views).
    image_path: the photo on disk if there is one.
    """

    viewmat: Tensor
    K: Tensor
    width: int
    height: int
    name: str = ""
    image_path: Path | None = field(default=None)

    def __post_init__(self) -> None:
        assert tuple(self.viewmat.shape) == (4, 4), self.viewmat.shape
        assert tuple(self.K.shape) == (3, 3), self.K.shape
        self.viewmat = self.viewmat.to(torch.float32)
        self.K = self.K.to(torch.float32)
        self.width = int(self.width)
        self.height = int(self.height)

    @property
    def c2w(self) -> Tensor:
        """[4, 4] camera->world."""
        return torch.linalg.inv(self.viewmat.double()).float()

    @property
    def campos(self) -> Tensor:
        """[3] camera centre in world space."""
        return self.c2w[:3, 3]

    def to(self, device: torch.device | str) -> "Camera":
        return Camera(self.viewmat.to(device), self.K.to(device), self.width, self.height, self.name, self.image_path)

    def scaled(self, factor: float) -> "Camera":
        """The same view at `factor` times the resolution (K rows x, y scaled, size rounded)."""
        K = self.K.clone()
        K[:2] *= factor
        return Camera(self.viewmat, K, round(self.width * factor), round(self.height * factor), self.name, self.image_path)


def look_at(
    eye: Tensor | list[float],
    target: Tensor | list[float],
    up: Tensor | list[float],
    width: int,
    height: int,
    fov_y_deg: float = 50.0,
    name: str = "",
) -> Camera:
    """A pinhole camera at `eye` looking at `target`; `up` is the world direction that appears up in the image.

    Square pixels, principal point at the image centre, vertical field of view `fov_y_deg`.
    """
    eye_t = torch.as_tensor(eye, dtype=torch.float64)
    fwd = torch.as_tensor(target, dtype=torch.float64) - eye_t
    fwd = fwd / fwd.norm()
    up_t = torch.as_tensor(up, dtype=torch.float64)
    right = torch.linalg.cross(fwd, up_t)  # OpenCV: x right, y down, z forward
    if right.norm() < 1e-9:
        raise ValueError("look_at: up is parallel to the viewing direction")
    right = right / right.norm()
    down = torch.linalg.cross(fwd, right)
    R = torch.stack([right, down, fwd])  # rows: camera axes in world coordinates
    viewmat = torch.eye(4, dtype=torch.float64)
    viewmat[:3, :3] = R
    viewmat[:3, 3] = -R @ eye_t
    f = 0.5 * height / torch.tan(torch.deg2rad(torch.tensor(fov_y_deg / 2, dtype=torch.float64)))
    K = torch.tensor([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1]], dtype=torch.float64)
    return Camera(viewmat.float(), K.float(), width, height, name)
