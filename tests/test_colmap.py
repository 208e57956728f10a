"""COLMAP loading via pycolmap: writer round trip, data_factor, errors, distortion/undistortion, real data."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from utils.camera import Camera, look_at
from utils.colmap import find_model_dir, load_colmap, load_colmap_cameras, load_colmap_cameras_for_scene, write_colmap_model
from utils.errors import UserError
from utils.normalize import gsplat_world_transform
from utils.splats import Splats

pycolmap = pytest.importorskip("pycolmap")

SHARED = Path(__file__).parents[1].parent / "shared"
SACRE = SHARED / "data" / "sacre_coeur"
GARDEN = SHARED / "data" / "garden_sfm" / "test_garden.npz"


def project(cam: Camera, X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pinhole projection (independent of the loaders): pixel coords [P, 2] and camera z [P]."""
    V, K = cam.viewmat.double(), cam.K.double()
    pc = X.double() @ V[:3, :3].T + V[:3, 3]
    uv = pc[:, :2] / pc[:, 2:] * torch.stack([K[0, 0], K[1, 1]]) + torch.stack([K[0, 2], K[1, 2]])
    return uv, pc[:, 2]


def synthetic_cameras() -> list[Camera]:
    """Cameras with different sizes and intrinsics around the origin, names deliberately unsorted."""
    specs = [("c.png", 64, 48, 60.0), ("a.png", 40, 72, 45.0), ("b.png", 80, 50, 70.0), ("d.png", 57, 33, 55.0)]
    cams = []
    for i, (name, w, h, fov) in enumerate(specs):
        a = 2 * math.pi * i / len(specs)
        eye = [3 * math.cos(a), -1.0, 3 * math.sin(a)]
        c = look_at(eye, [0.1, 0.0, -0.2], [0, -1, 0], w, h, fov, name=name)
        c.K[0, 0] *= 1.05  # fx != fy and an off-centre principal point
        c.K[0, 2] += 1.5
        cams.append(c)
    return cams


def synthetic_points(n: int = 400) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    pts = np.r_[rng.normal(size=(n, 3)) * [0.5, 0.2, 0.5], np.c_[rng.uniform(-2, 2, n), np.full(n, 0.5), rng.uniform(-2, 2, n)]]
    return pts, rng.integers(0, 256, size=(len(pts), 3), dtype=np.uint8)


@pytest.fixture
def synth(tmp_path):
    cams = synthetic_cameras()
    pts, rgb = synthetic_points()
    imgs = [np.full((c.height, c.width, 3), 10 * i, np.uint8) for i, c in enumerate(cams)]
    model = write_colmap_model(tmp_path / "scene", cams, pts, rgb, images=imgs)
    return tmp_path / "scene", cams, pts, rgb, model


def test_writer_round_trip(synth):
    root, cams, pts, rgb, model = synth
    assert model == root / "sparse" / "0" and (model / "cameras.bin").exists()
    s = load_colmap(root)
    assert [c.name for c in s.cameras] == sorted(c.name for c in cams)
    by = {c.name: c for c in cams}
    for c in s.cameras:
        ref = by[c.name]
        assert (c.width, c.height) == (ref.width, ref.height)
        assert torch.allclose(c.K, ref.K, atol=1e-4)
        assert torch.allclose(c.viewmat, ref.viewmat, atol=1e-5)
        assert c.image_path == root / "images" / c.name
    assert torch.allclose(s.points3d.double(), torch.from_numpy(pts), atol=1e-6)
    assert torch.equal(s.points_rgb, torch.from_numpy(rgb))
    assert s.frame == "off" and np.array_equal(s.transform, np.eye(4))
    # the model is readable by pycolmap itself with PINHOLE cameras
    rec = pycolmap.Reconstruction(str(model))
    assert {c.model.name for c in rec.cameras.values()} == {"PINHOLE"} and rec.num_points3D() == len(pts)


def test_data_factor_like_gsplat(synth):
    root, cams, pts, rgb, _ = synth
    (root / "images_2").mkdir()
    for i, c in enumerate(cams):
        w, h = c.width // 2, c.height // 2
        if c.name == "b.png":
            w, h = w + 1, h + 2  # an image on disk that does not match colmap_size // f
        Image.new("RGB", (w, h)).save(root / "images_2" / c.name)
    s = load_colmap_cameras(root, data_factor=2)
    by = {c.name: c for c in cams}
    for c in s:
        ref = by[c.name]
        K = ref.K.double().clone()
        K[:2] /= 2
        w0, h0 = ref.width // 2, ref.height // 2
        aw, ah = Image.open(root / "images_2" / c.name).size
        K[0] *= aw / w0
        K[1] *= ah / h0
        assert (c.width, c.height) == (aw, ah)
        assert torch.allclose(c.K.double(), K, atol=1e-4), c.name
        assert c.image_path == root / "images_2" / c.name
    b = next(c for c in s if c.name == "b.png")
    assert b.width == 41 and b.height == 27 and not math.isclose(b.K[0, 0].item(), by["b.png"].K[0, 0].item() / 2)


def test_normalize_on_matches_transform(synth, capsys):
    root, cams, pts, rgb, _ = synth
    raw = load_colmap(root)
    on = load_colmap(root, normalize="on")
    c2w = np.stack([c.c2w.double().numpy() for c in raw.cameras])
    T = gsplat_world_transform(c2w, pts)
    assert np.allclose(on.transform, T, atol=1e-6)
    # every camera sees the normalised points where the raw camera saw the raw points
    for a, b in zip(raw.cameras, on.cameras):
        assert torch.allclose(project(a, raw.points3d)[0], project(b, on.points3d)[0], atol=1e-3)
    # auto picks "on" for Gaussians sitting on the normalised points, "off" for raw ones
    assert load_colmap(root, normalize="auto", means=on.points3d.repeat(2, 1)).frame == "on"
    assert load_colmap(root, normalize="auto", means=raw.points3d).frame == "off"
    n = on.points3d.shape[0]
    splats = Splats(on.points3d, torch.ones(n, 4), torch.zeros(n, 3), torch.zeros(n), torch.zeros(n, 1, 3),
                    torch.zeros(n, 0, 3))
    cams = load_colmap_cameras_for_scene(root, splats)
    assert "normalize auto: using world frame 'on'" in capsys.readouterr().out
    assert all(torch.allclose(a.viewmat, b.viewmat) for a, b in zip(cams, on.cameras))
    load_colmap_cameras_for_scene(root, splats, verbose=False)
    assert capsys.readouterr().out == ""
    explicit = load_colmap(root, normalize=torch.from_numpy(T))
    assert explicit.frame == "custom" and torch.allclose(explicit.cameras[0].viewmat, on.cameras[0].viewmat)


def test_errors(synth, tmp_path):
    root, cams, *_ = synth
    with pytest.raises(UserError, match=r"nowhere: COLMAP data directory not found"):
        load_colmap(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"empty: no COLMAP model \(expected .*sparse/0"):
        load_colmap(tmp_path / "empty")
    with pytest.raises(UserError, match=r"normalize='auto' needs the scene's Gaussian means"):
        load_colmap(root, normalize="auto")
    with pytest.raises(UserError, match=r"images_3: images folder not found \(use require_images=False"):
        load_colmap(root, data_factor=3)
    # cameras-only use works without photos
    cams3 = load_colmap_cameras(root, data_factor=3, require_images=False)
    assert all(c.image_path is None for c in cams3)
    assert {(c.name, c.width) for c in cams3} == {(c.name, c.width // 3) for c in cams}
    (root / "images" / "b.png").unlink()
    with pytest.raises(UserError, match=r"images: 1 images listed in the COLMAP model are missing: b\.png"):
        load_colmap(root)
    shutil.rmtree(root / "images")
    with pytest.raises(UserError, match=r"images: images folder not found"):
        load_colmap(root)
    assert len(load_colmap(root, require_images=False).cameras) == 4
    # a model in sparse/ (no 0/) is found too
    shutil.move(str(root / "sparse" / "0"), str(root / "sp0"))
    shutil.rmtree(root / "sparse")
    shutil.move(str(root / "sp0"), str(root / "sparse"))
    assert find_model_dir(root) == root / "sparse"
    # a corrupt model
    (root / "sparse" / "images.bin").write_bytes(b"\x01\x02")
    with pytest.raises(UserError, match=r"sparse: cannot read COLMAP model"):
        load_colmap(root, require_images=False)


def make_distorted(root: Path, k: float) -> None:
    """Turn every camera of the model into SIMPLE_RADIAL with coefficient k (same f, cx, cy)."""
    model = root / "sparse" / "0"
    rec = pycolmap.Reconstruction(str(model))
    for cid, cam in list(rec.cameras.items()):
        new = pycolmap.Camera.create_from_model_name(cid, "SIMPLE_RADIAL", cam.params[0], cam.width, cam.height)
        new.params = [cam.params[0], cam.params[2], cam.params[3], k]
        rec.cameras[cid] = new  # pycolmap CameraMap supports assignment
    rec.write(str(model))


def test_distorted_refused_and_undistorted(synth, tmp_path):
    root, cams, *_ = synth
    make_distorted(root, 0.0)
    assert len(load_colmap(root).cameras) == 4  # zero distortion is exactly pinhole
    make_distorted(root, 0.05)
    assert {c.model.name for c in pycolmap.Reconstruction(str(root / "sparse/0")).cameras.values()} == {"SIMPLE_RADIAL"}
    with pytest.raises(UserError, match=r"camera model SIMPLE_RADIAL has lens distortion; pass undistort=True"):
        load_colmap(root)
    s = load_colmap(root, undistort=True, undistort_dir=tmp_path / "und")
    assert (tmp_path / "und" / ".undistort_complete").exists()
    assert s.model_dir == tmp_path / "und" / "sparse"
    for c in s.cameras:
        assert c.image_path.parent == tmp_path / "und" / "images" and c.image_path.exists()
        assert Image.open(c.image_path).size == (c.width, c.height)
    # reused on the second call (no rewrite: the marker's mtime stays)
    m = (tmp_path / "und" / ".undistort_complete").stat().st_mtime_ns
    load_colmap(root, undistort=True, undistort_dir=tmp_path / "und")
    assert (tmp_path / "und" / ".undistort_complete").stat().st_mtime_ns == m


# ---------------------------------------------------------------- real data


def sacre_or_skip():
    if not (SACRE / "sparse" / "0").exists():
        pytest.skip("shared Sacre-Coeur data not available")
    return SACRE


def test_sacre_coeur_refused_without_undistort():
    d = sacre_or_skip()
    with pytest.raises(UserError, match=r"sparse/0: camera model SIMPLE_RADIAL has lens distortion"):
        load_colmap(d)


def test_sacre_coeur_undistorted(tmp_path):
    d = sacre_or_skip()
    rec0 = pycolmap.Reconstruction(str(d / "sparse" / "0"))
    raw = {im.name: rec0.cameras[im.camera_id] for im in rec0.images.values()}
    s = load_colmap(d, undistort=True, undistort_dir=tmp_path / "u")
    assert len(s.cameras) == 10 and len({(c.width, c.height) for c in s.cameras}) == 10
    assert [c.name for c in s.cameras] == sorted(raw)
    rec = pycolmap.Reconstruction(str(s.model_dir))
    for c in s.cameras:
        r = raw[c.name]
        # undistorted size stays close to the original; focal length unchanged; principal point at the centre
        assert abs(c.width / r.width - 1) < 0.05 and abs(c.height / r.height - 1) < 0.05
        assert math.isclose(c.K[0, 0].item(), r.params[0], rel_tol=1e-5) and c.K[0, 0] == c.K[1, 1]
        assert abs(c.K[0, 2].item() - c.width / 2) <= 1 and abs(c.K[1, 2].item() - c.height / 2) <= 1
        assert Image.open(c.image_path).size == (c.width, c.height)
        # points3D observed in this image project inside it, onto the undistorted keypoints
        im = rec.find_image_with_name(c.name)
        obs = [(p.xy, rec.points3D[p.point3D_id].xyz) for p in im.points2D if p.has_point3D()]
        xy = torch.tensor(np.array([o[0] for o in obs]))
        uv, z = project(c, torch.tensor(np.array([o[1] for o in obs])))
        inside = (z > 0) & (uv[:, 0] >= 0) & (uv[:, 0] < c.width) & (uv[:, 1] >= 0) & (uv[:, 1] < c.height)
        assert inside.float().mean() > 0.98
        assert (uv - xy).norm(dim=1).median() < 1.0  # model reports 0.34 px mean reprojection error
    # normalised: the same observations, different world
    on = load_colmap(d, undistort=True, undistort_dir=tmp_path / "u", normalize="on")
    assert on.frame == "on"
    for a, b in zip(s.cameras, on.cameras):
        assert torch.allclose(project(a, s.points3d)[0], project(b, on.points3d)[0], atol=1e-2)


def test_garden_cameras_project_points():
    if not GARDEN.exists():
        pytest.skip("shared garden data not available")
    g = np.load(GARDEN)
    X = torch.from_numpy(g["means3d"]).double()
    w, h = int(g["width"]), int(g["height"])
    assert (w, h) == (648, 420)
    for V, K in zip(g["viewmats"], g["Ks"]):
        cam = Camera(torch.from_numpy(V), torch.from_numpy(K), w, h)
        uv, z = project(cam, X)
        front = z > 0.01
        inside = front & (uv[:, 0] >= 0) & (uv[:, 0] < w) & (uv[:, 1] >= 0) & (uv[:, 1] < h)
        frac = (inside.sum() / front.sum()).item()
        assert frac > 0.45  # a 360-degree capture: about half of the points in front fall in the frustum
        # the wrong convention (camera-to-world taken as world-to-camera) sees far fewer points
        bad = Camera(cam.c2w, cam.K, w, h)
        uv2, z2 = project(bad, X)
        inside2 = (z2 > 0.01) & (uv2[:, 0] >= 0) & (uv2[:, 0] < w) & (uv2[:, 1] >= 0) & (uv2[:, 1] < h)
        assert inside2.float().mean() < 0.5 * inside.float().mean()
    # gsplat's normalised frame: the cameras' up vectors point to +z
    ups = np.stack([-np.linalg.inv(V)[:3, 1] for V in g["viewmats"]])
    assert (ups[:, 2] > 0.5).all()
