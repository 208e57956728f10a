"""A procedural demo scene made directly of Gaussians, with ground-truth object ids.

A floor with a table, a vase on the table, a ball and a box, seen by a ring of cameras. `build_demo_scene` writes a
real gsplat checkpoint, a real COLMAP model (PINHOLE), rendered images, per-view ground-truth label maps, the class
names and the per-Gaussian ids, so every tool in the project runs offline on it and can be scored against truth.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from .camera import Camera, look_at
from .splats import Splats

C0 = 0.28209479177387814
CLASS_NAMES = ["floor", "table", "ball", "vase", "box"]
COLORS = {
    "floor": (0.78, 0.77, 0.74),
    "table": (0.55, 0.34, 0.16),
    "ball": (0.95, 0.78, 0.10),
    "vase": (0.15, 0.32, 0.85),
    "box": (0.20, 0.68, 0.25),
}
UP = (0.0, 0.0, 1.0)  # the demo world is z-up
TEST_EVERY = 8  # held-out views: index % 8 == 0, as gsplat's trainer splits
GENERATOR_VERSION = "2"  # bump when the scene changes: an older data/demo/ is rebuilt on next use


@dataclass
class DemoScene:
    """splats: the scene; labels: [N] int64 object id per Gaussian (index into CLASS_NAMES); cameras: all views."""

    splats: Splats
    labels: Tensor
    cameras: list[Camera]
    class_names: list[str]

    @property
    def test_views(self) -> list[str]:
        return [c.name for i, c in enumerate(self.cameras) if i % TEST_EVERY == 0]

    @property
    def train_views(self) -> list[str]:
        return [c.name for i, c in enumerate(self.cameras) if i % TEST_EVERY != 0]


def _quat_from_normals(n: np.ndarray) -> np.ndarray:
    """[P, 4] wxyz rotations taking +z to the unit normals n [P, 3]."""
    z = np.array([0.0, 0.0, 1.0])
    axis = np.cross(z, n)
    s = np.linalg.norm(axis, axis=1)
    c = n @ z
    angle = np.arctan2(s, c)
    axis = np.where(s[:, None] > 1e-9, axis / np.maximum(s, 1e-12)[:, None], np.array([1.0, 0.0, 0.0]))
    half = angle / 2
    return np.concatenate([np.cos(half)[:, None], np.sin(half)[:, None] * axis], axis=1)


def _grid(u_len: float, v_len: float, spacing: float, rng: np.random.Generator) -> np.ndarray:
    """Jittered grid over [0, u_len] x [0, v_len]: [P, 2]."""
    nu, nv = max(2, round(u_len / spacing)), max(2, round(v_len / spacing))
    u, v = np.meshgrid((np.arange(nu) + 0.5) / nu * u_len, (np.arange(nv) + 0.5) / nv * v_len, indexing="ij")
    uv = np.stack([u.ravel(), v.ravel()], 1)
    return uv + rng.uniform(-0.25, 0.25, uv.shape) * spacing


def _box(lo, hi, spacing, rng, skip_bottom=True):
    """Points and outward normals on the faces of an axis-aligned box."""
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    pts, nrm = [], []
    for axis in range(3):
        for side, val in ((-1, lo[axis]), (1, hi[axis])):
            if skip_bottom and axis == 2 and side == -1:
                continue
            a, b = [k for k in range(3) if k != axis]
            uv = _grid(hi[a] - lo[a], hi[b] - lo[b], spacing, rng)
            p = np.zeros((len(uv), 3))
            p[:, a] = lo[a] + uv[:, 0]
            p[:, b] = lo[b] + uv[:, 1]
            p[:, axis] = val
            n = np.zeros_like(p)
            n[:, axis] = side
            pts.append(p)
            nrm.append(n)
    return np.concatenate(pts), np.concatenate(nrm)


def _sphere(center, radius, spacing):
    n = max(50, round(4 * math.pi * radius**2 / spacing**2))
    i = np.arange(n) + 0.5
    phi = np.arccos(1 - 2 * i / n)
    theta = math.pi * (1 + 5**0.5) * i
    d = np.stack([np.cos(theta) * np.sin(phi), np.sin(theta) * np.sin(phi), np.cos(phi)], 1)
    return np.asarray(center) + radius * d, d


def _lathe(center_xy, z0, z1, profile, spacing):
    """A surface of revolution about the vertical axis through center_xy; profile(t in [0,1]) -> radius."""
    nz = max(4, round((z1 - z0) / spacing))
    pts, nrm = [], []
    for k in range(nz):
        t = (k + 0.5) / nz
        r = profile(t)
        dr = (profile(min(1, t + 1e-3)) - profile(max(0, t - 1e-3))) / (2e-3 * (z1 - z0))
        na = max(8, round(2 * math.pi * r / spacing))
        ang = (np.arange(na) + 0.5 * (k % 2)) / na * 2 * math.pi
        radial = np.stack([np.cos(ang), np.sin(ang), np.zeros(na)], 1)
        p = radial * r
        p[:, 0] += center_xy[0]
        p[:, 1] += center_xy[1]
        p[:, 2] = z0 + t * (z1 - z0)
        n = radial - np.array([0, 0, dr])[None]
        pts.append(p)
        nrm.append(n / np.linalg.norm(n, axis=1, keepdims=True))
    return np.concatenate(pts), np.concatenate(nrm)


def make_demo_splats(spacing: float = 0.03, seed: int = 0) -> tuple[Splats, Tensor]:
    """The demo Gaussians and their object ids [N]. Flat discs (thin along the surface normal), opacity 0.95."""
    rng = np.random.default_rng(seed)
    parts: list[tuple[str, np.ndarray, np.ndarray]] = []
    p, n = _box((-2.0, -2.0, -0.02), (2.0, 2.0, 0.0), spacing * 1.3, rng)
    # Only the top of the floor slab, and none under the box's footprint (a trained 3DGS has nothing there either).
    under_box = (p[:, 0] > 0.69) & (p[:, 0] < 1.11) & (p[:, 1] > -1.11) & (p[:, 1] < -0.69)
    keep = (n[:, 2] > 0) & ~under_box
    parts.append(("floor", p[keep], n[keep]))
    top, top_n = _box((-0.9, -0.5, 0.70), (0.3, 0.5, 0.76), spacing, rng, skip_bottom=False)
    under_vase = (np.hypot(top[:, 0] + 0.45, top[:, 1]) < 0.095) & (top_n[:, 2] > 0)
    table = [(top[~under_vase], top_n[~under_vase])]
    for x in (-0.85, 0.19):
        for y in (-0.45, 0.39):
            table.append(_box((x, y, 0.0), (x + 0.06, y + 0.06, 0.70), spacing, rng))
    parts.append(("table", np.concatenate([t[0] for t in table]), np.concatenate([t[1] for t in table])))
    parts.append(("ball", *_sphere((0.95, 0.75, 0.26), 0.25, spacing)))
    parts.append(("vase", *_lathe((-0.45, 0.0), 0.76, 1.18, lambda t: 0.09 + 0.06 * math.sin(math.pi * t * 0.9), spacing)))
    parts.append(("box", *_box((0.7, -1.1, 0.0), (1.1, -0.7, 0.4), spacing, rng)))

    means, normals, colors, labels = [], [], [], []
    for name, p, n in parts:
        cid = CLASS_NAMES.index(name)
        base = np.asarray(COLORS[name])
        shade = 1.0 + rng.uniform(-0.06, 0.06, (len(p), 1))  # a little texture so renders are not flat
        means.append(p)
        normals.append(n)
        colors.append(np.clip(base[None] * shade, 0, 1))
        labels.append(np.full(len(p), cid))
    means_np = np.concatenate(means)
    normals_np = np.concatenate(normals)
    colors_np = np.concatenate(colors)
    N = len(means_np)
    scales = np.tile(np.array([[spacing * 0.75, spacing * 0.75, spacing * 0.12]]), (N, 1))
    splats = Splats(
        means=torch.tensor(means_np, dtype=torch.float32),
        quats=torch.tensor(_quat_from_normals(normals_np), dtype=torch.float32),
        scales=torch.tensor(np.log(scales), dtype=torch.float32),
        opacities=torch.full((N,), math.log(0.95 / 0.05), dtype=torch.float32),
        sh0=torch.tensor((colors_np - 0.5) / C0, dtype=torch.float32)[:, None, :],
        shN=torch.zeros(N, 0, 3),
    )
    return splats, torch.tensor(np.concatenate(labels), dtype=torch.int64)


def make_demo_cameras(num: int = 24, width: int = 320, height: int = 240) -> list[Camera]:
    """A ring of views around the table at two heights, all looking at the scene centre."""
    cams = []
    target = (0.0, 0.0, 0.45)
    for i in range(num):
        a = 2 * math.pi * i / num
        r, h = (3.0, 1.4) if i % 2 == 0 else (3.4, 2.1)
        eye = (r * math.cos(a), r * math.sin(a), h)
        cams.append(look_at(eye, target, UP, width, height, fov_y_deg=50.0, name=f"view_{i:03d}.png"))
    return cams


def make_demo_scene() -> DemoScene:
    splats, labels = make_demo_splats()
    return DemoScene(splats, labels, make_demo_cameras(), list(CLASS_NAMES))


def render_label_map(splats: Splats, labels: Tensor, camera: Camera, num_classes: int) -> Tensor:
    """[H, W] uint8 ground truth: the object with the largest compositing weight at each pixel, 255 where alpha < 0.5."""
    from .render import render

    onehot = torch.nn.functional.one_hot(labels, num_classes).float()
    out = render(splats, camera, features=onehot)
    lab = out.colors.argmax(dim=-1).to(torch.uint8)
    lab[out.alpha < 0.5] = 255
    return lab


def build_demo_scene(root: str | Path, force: bool = False) -> Path:
    """Write the demo dataset to `root` (default layout of a gsplat/COLMAP scene) and return `root`.

    root/ckpts/ckpt_demo.pt      gsplat checkpoint {"step", "splats"}
    root/sparse/0/               COLMAP model (PINHOLE cameras, poses, a sample of points3D)
    root/images/view_XXX.png     renders of the scene
    root/labels/view_XXX.png     ground-truth label maps (255 = background) + classes.json
    root/gaussian_labels.pt      [N] int64 ground-truth object id per Gaussian
    root/split.json              train / test view names
    """
    from .colmap import write_colmap_model
    from .render import render
    from .scene_io import save_gsplat_checkpoint

    root = Path(root)
    stamp = root / "generator_version.txt"
    if not force and stamp.exists() and stamp.read_text().strip() == GENERATOR_VERSION:
        return root
    scene = make_demo_scene()
    tmp = root.with_name(f".{root.name}.building")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "images").mkdir(parents=True)
    (tmp / "labels").mkdir()
    save_gsplat_checkpoint(scene.splats, tmp / "ckpts" / "ckpt_demo.pt", step=0)
    torch.save(scene.labels, tmp / "gaussian_labels.pt")
    for cam in scene.cameras:
        out = render(scene.splats, cam, background=torch.ones(3))
        rgb = (out.colors.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
        Image.fromarray(rgb).save(tmp / "images" / cam.name)
        lab = render_label_map(scene.splats, scene.labels, cam, len(scene.class_names))
        Image.fromarray(lab.numpy()).save(tmp / "labels" / cam.name)
    (tmp / "labels" / "classes.json").write_text(json.dumps(scene.class_names))
    (tmp / "split.json").write_text(json.dumps({"train": scene.train_views, "test": scene.test_views}, indent=1))
    rng = np.random.default_rng(1)
    pick = rng.choice(scene.splats.num, size=min(4000, scene.splats.num), replace=False)
    rgb = ((scene.splats.sh0[pick, 0] * C0 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    write_colmap_model(tmp, scene.cameras, scene.splats.means[pick].numpy(), rgb)
    (tmp / "generator_version.txt").write_text(GENERATOR_VERSION)
    shutil.rmtree(root, ignore_errors=True)
    tmp.rename(root)
    return root


def demo_features_path(quiet: bool = False) -> Path:
    """results/demo/features_maps.pt: the demo's training-view label maps lifted onto its Gaussians (what
    `backproject.py --demo` writes); built, and lifted, on first use."""
    from .backprojection import LiftOptions, lift_features
    from .feature_sources.maps_source import MapsSource
    from .scene_args import DEMO_ROOT, SceneArgs, load_scene_and_cameras

    path = Path("results") / "demo" / "features_maps.pt"
    splats, cameras = load_scene_and_cameras(SceneArgs(demo=True), verbose=False)
    stale = path.exists() and torch.load(path, weights_only=True)["meta"].get("scene_hash") != splats.param_hash()
    if not path.exists() or stale:
        print(f"{path} is {'stale' if stale else 'missing'}: lifting the demo label maps first (as backproject.py --demo)")
        train = [c for i, c in enumerate(cameras) if i % TEST_EVERY != 0]
        options = LiftOptions(progress=not quiet, extra_meta={"scene_path": "demo", "normalize": "auto", "data_factor": 1})
        lift_features(splats, train, MapsSource(DEMO_ROOT / "labels"), path, options)
    return path
