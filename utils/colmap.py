"""COLMAP models via pycolmap 4.x: cameras (per-image intrinsics, gsplat's data_factor), points3D, undistortion,
gsplat's world normalisation, and a writer for synthetic/demo scenes."""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from .camera import Camera
from .errors import UserError
from .normalize import choose_world_frame, gsplat_world_transform, transform_cameras
from .splats import Splats

PINHOLE_MODELS = ("PINHOLE", "SIMPLE_PINHOLE")
_DONE_MARKER = ".undistort_complete"


@dataclass
class ColmapScene:
    """cameras: sorted by image name, in the output world frame.
    points3d: [P, 3] float32 points3D in the output world frame; points_rgb: [P, 3] uint8.
    transform: [4, 4] float64 raw COLMAP world -> output world (identity when not normalised).
    frame: "off", "on", "on-alt" (auto's alternative eigenvector signs) or "custom".
    model_dir: the sparse model actually read (the undistorted copy when undistorting).
    """

    cameras: list[Camera]
    points3d: Tensor
    points_rgb: Tensor
    transform: np.ndarray
    frame: str
    model_dir: Path


def find_model_dir(data_dir: str | os.PathLike) -> Path:
    """`<data_dir>/sparse/0` or `<data_dir>/sparse` (the first holding cameras.bin/.txt)."""
    d = Path(data_dir)
    if not d.is_dir():
        raise UserError(f"{d}: COLMAP data directory not found")
    for cand in (d / "sparse" / "0", d / "sparse"):
        if (cand / "cameras.bin").exists() or (cand / "cameras.txt").exists():
            return cand
    raise UserError(f"{d}: no COLMAP model (expected {d / 'sparse/0'}/cameras.bin or {d / 'sparse'}/cameras.bin)")


def _read(model_dir: Path):
    import pycolmap

    try:
        rec = pycolmap.Reconstruction(str(model_dir))
    except Exception as e:  # pycolmap raises ValueError/RuntimeError on bad files
        raise UserError(f"{model_dir}: cannot read COLMAP model ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    images = sorted((im for im in rec.images.values() if im.has_pose), key=lambda im: im.name)
    if not images:
        raise UserError(f"{model_dir}: COLMAP model has no registered images")
    return rec, images


def _c2w(image) -> np.ndarray:
    w2c = np.eye(4)
    w2c[:3, :] = image.cam_from_world().matrix()
    return np.linalg.inv(w2c)


def _distorted(rec, images) -> list[str]:
    """Model names of the cameras that are not plain pinhole (a distortion model with all-zero coefficients is)."""
    out = set()
    for im in images:
        cam = rec.cameras[im.camera_id]
        if cam.model.name not in PINHOLE_MODELS and not cam.is_undistorted():
            out.add(cam.model.name)
    return sorted(out)


def _image_file(folder: Path, name: str) -> Path | None:
    """`folder/name`, or a file with the same stem and another extension (gsplat's images_{f} may be PNG)."""
    p = folder / name
    if p.exists():
        return p
    parent = p.parent
    if parent.is_dir():
        stem = Path(name).stem
        for q in sorted(parent.iterdir()):
            if q.stem == stem and q.is_file():
                return q
    return None


def undistort_model(data_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None,
                    images_subdir: str = "images") -> Path:
    """Write (or reuse) an undistorted PINHOLE copy of the dataset with `pycolmap.undistort_images`.

    Output: `<out_dir>/sparse/` + `<out_dir>/images/` (default out_dir: `<data_dir>/undistorted`). A marker file
    makes reuse safe: a half-written copy is never taken for a finished one.
    """
    import pycolmap

    d = Path(data_dir)
    model_dir = find_model_dir(d)
    img_dir = d / images_subdir
    if not img_dir.is_dir():
        raise UserError(f"{img_dir}: images folder not found (undistortion needs the full-resolution photos)")
    out = Path(out_dir) if out_dir is not None else d / "undistorted"
    if (out / _DONE_MARKER).exists() and (out / "sparse").is_dir():
        return out
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    except OSError as e:
        raise UserError(f"{out}: cannot write the undistorted copy here ({e.strerror}); pass an undistort_dir") from None
    try:
        pycolmap.undistort_images(str(tmp), str(model_dir), str(img_dir))
        (tmp / _DONE_MARKER).write_text("pycolmap.undistort_images\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except Exception as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, UserError):
            raise
        raise UserError(f"{out}: undistortion failed ({type(e).__name__}: {e})") from None
    return out


def _downscaled_images(root: Path, names: list[str], factor: int) -> None:
    """Create `root/images_{factor}/` from `root/images/` (used for the undistorted copy, which has full size only)."""
    dst = root / f"images_{factor}"
    if (dst / _DONE_MARKER).exists():
        return
    dst.mkdir(exist_ok=True)
    for n in names:
        src = root / "images" / n
        with Image.open(src) as im:
            w, h = im.size
            small = im.resize((max(1, w // factor), max(1, h // factor)), Image.BICUBIC)
            (dst / n).parent.mkdir(parents=True, exist_ok=True)
            small.save(dst / n, quality=95) if n.lower().endswith((".jpg", ".jpeg")) else small.save(dst / n)
    (dst / _DONE_MARKER).write_text("done\n")


def load_colmap(
    data_dir: str | os.PathLike,
    data_factor: int = 1,
    normalize: str | np.ndarray | Tensor = "off",
    images_subdir: str | None = None,
    undistort: bool = False,
    undistort_dir: str | os.PathLike | None = None,
    require_images: bool = True,
    means: Tensor | None = None,
    verbose: bool = True,
) -> ColmapScene:
    """Read a COLMAP dataset (`data_dir/sparse[/0]` + `data_dir/images`) the way gsplat's parser does.

    data_factor: K rows x, y divided by it, photos from `images_{f}/`, then K rescaled by
        actual_size / (colmap_size // f) when the photo on disk has another size (read from its header).
    normalize: "off" (raw COLMAP frame), "on" (gsplat's normalize_world_space T), "auto" (needs `means` [N, 3]
        of the trained Gaussians: picks the frame they live in and prints it), or a [4, 4] similarity transform.
    images_subdir: photo folder name inside data_dir (default "images" or "images_{f}").
    undistort: for distorted camera models, write/reuse an undistorted PINHOLE copy (`undistort_dir`, default
        `data_dir/undistorted`) and load that; without it distorted models are refused.
    require_images: when False, cameras load without photos (image_path None if missing; size from the model).
    verbose: print the frame "auto" chose.
    """
    d = Path(data_dir)
    if int(data_factor) != data_factor or data_factor < 1:
        raise UserError(f"{d}: data_factor must be a positive integer, got {data_factor}")
    data_factor = int(data_factor)
    model_dir = find_model_dir(d)
    rec, images = _read(model_dir)
    bad = _distorted(rec, images)
    img_root = d
    if bad:
        if not undistort:
            raise UserError(
                f"{model_dir}: camera model {', '.join(bad)} has lens distortion; pass undistort=True "
                "(--undistort) to write and use an undistorted PINHOLE copy"
            )
        img_root = undistort_model(d, undistort_dir, "images")
        model_dir = find_model_dir(img_root)
        rec, images = _read(model_dir)
        if data_factor > 1 and images_subdir is None:
            _downscaled_images(img_root, [im.name for im in images], data_factor)

    # --- world frame (from all registered images and all points3D, like gsplat)
    c2w = np.stack([_c2w(im) for im in images])
    pts_ids = sorted(rec.points3D.keys())
    pts = np.array([rec.points3D[i].xyz for i in pts_ids], dtype=np.float64).reshape(-1, 3)
    rgb = np.array([rec.points3D[i].color for i in pts_ids], dtype=np.uint8).reshape(-1, 3)
    frame = "custom"
    if isinstance(normalize, str):
        if normalize == "off":
            T, frame = np.eye(4), "off"
        elif normalize == "on":
            T, frame = gsplat_world_transform(c2w, pts), "on"
        elif normalize == "auto":
            if means is None:
                raise UserError(f"{d}: normalize='auto' needs the scene's Gaussian means")
            choice = choose_world_frame(pts, gsplat_world_transform(c2w, pts), means)
            T, frame = choice.transform, choice.name
            if verbose:
                print(f"normalize auto: using world frame '{frame}' "
                      f"(scores {', '.join(f'{k}={v:.3g}' for k, v in choice.scores.items())})")
        else:
            raise UserError(f"{d}: normalize must be 'off', 'on', 'auto' or a 4x4 matrix, got {normalize!r}")
    else:
        T = np.asarray(normalize.detach().cpu() if isinstance(normalize, Tensor) else normalize, dtype=np.float64)
        if T.shape != (4, 4):
            raise UserError(f"{d}: normalize transform must be 4x4, got shape {T.shape}")
    c2w_out = transform_cameras(T, c2w)
    pts_out = pts @ T[:3, :3].T + T[:3, 3]

    # --- photos
    sub = images_subdir or ("images" if data_factor == 1 else f"images_{data_factor}")
    img_dir = img_root / sub
    if require_images and not img_dir.is_dir():
        raise UserError(f"{img_dir}: images folder not found (use require_images=False to load cameras only)")
    cams: list[Camera] = []
    missing: list[str] = []
    for im, cw in zip(images, c2w_out):
        cam = rec.cameras[im.camera_id]
        K = np.array(cam.calibration_matrix(), dtype=np.float64)
        K[:2, :] /= data_factor
        w, h = cam.width // data_factor, cam.height // data_factor
        path = _image_file(img_dir, im.name) if img_dir.is_dir() else None
        if path is None:
            missing.append(im.name)
        else:
            with Image.open(path) as pil:  # header only, no decode
                aw, ah = pil.size
            if (aw, ah) != (w, h):
                K[0, :] *= aw / w
                K[1, :] *= ah / h
                w, h = aw, ah
        viewmat = np.linalg.inv(cw)
        cams.append(Camera(torch.from_numpy(viewmat).float(), torch.from_numpy(K).float(), w, h, im.name, path))
    if missing and require_images:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise UserError(f"{img_dir}: {len(missing)} images listed in the COLMAP model are missing: "
                        f"{', '.join(missing[:3])}{more}")
    return ColmapScene(cams, torch.from_numpy(pts_out).float(), torch.from_numpy(rgb), T, frame, model_dir)


def load_colmap_cameras(data_dir: str | os.PathLike, data_factor: int = 1,
                        normalize: str | np.ndarray | Tensor = "off", images_subdir: str | None = None,
                        undistort: bool = False, **kwargs) -> list[Camera]:
    """The cameras of `load_colmap` (sorted by image name); same arguments."""
    return load_colmap(data_dir, data_factor, normalize, images_subdir, undistort, **kwargs).cameras


def load_colmap_cameras_for_scene(
    data_dir: str | os.PathLike,
    splats: Splats,
    data_factor: int = 1,
    normalize: str = "auto",
    undistort: bool = False,
    verbose: bool = True,
    **kwargs,
) -> list[Camera]:
    """Cameras of a COLMAP dataset in the world frame of `splats` (normalize "auto" matches points3D to its means)."""
    scene = load_colmap(data_dir, data_factor, normalize, undistort=undistort, means=splats.means, verbose=verbose,
                        **kwargs)
    return scene.cameras


def write_colmap_model(
    out_dir: str | os.PathLike,
    cameras: list[Camera],
    points_xyz: Tensor | np.ndarray,
    points_rgb: Tensor | np.ndarray | None = None,
    images: list[np.ndarray] | None = None,
) -> Path:
    """Write a binary COLMAP model `<out_dir>/sparse/0` (one PINHOLE camera per view) with pycolmap.

    cameras: views with viewmat (world->camera, OpenCV), K, width, height; `name` becomes the image name
        (default `{i:05d}.png`). points_xyz: [P, 3]; points_rgb: [P, 3] uint8 (default grey). Points have empty
        tracks. images: optional [H, W, 3] uint8 photos written to `<out_dir>/images/<name>`.
    Returns the model directory. The model directory is replaced atomically.
    """
    import pycolmap

    out = Path(out_dir)
    xyz = np.asarray(points_xyz.detach().cpu() if isinstance(points_xyz, Tensor) else points_xyz, dtype=np.float64)
    assert xyz.ndim == 2 and xyz.shape[1] == 3, xyz.shape
    if points_rgb is None:
        rgb = np.full((len(xyz), 3), 128, dtype=np.uint8)
    else:
        rgb = np.asarray(points_rgb.detach().cpu() if isinstance(points_rgb, Tensor) else points_rgb, dtype=np.uint8)
    assert rgb.shape == xyz.shape, (rgb.shape, xyz.shape)
    names = [c.name or f"{i:05d}.png" for i, c in enumerate(cameras)]
    if len(set(names)) != len(names):
        raise UserError(f"{out}: camera names must be unique to write a COLMAP model")
    if images is not None:
        assert len(images) == len(cameras), (len(images), len(cameras))

    rec = pycolmap.Reconstruction()
    for i, (cam, name) in enumerate(zip(cameras, names)):
        K = cam.K.double().cpu().numpy()
        pc = pycolmap.Camera.create_from_model_name(i + 1, "PINHOLE", float(K[0, 0]), cam.width, cam.height)
        pc.params = [K[0, 0], K[1, 1], K[0, 2], K[1, 2]]
        rec.add_camera_with_trivial_rig(pc)
        w2c = cam.viewmat.double().cpu().numpy()
        # Re-orthonormalise: float32 viewmats are slightly off a rotation and pycolmap stores a quaternion.
        u, _, vt = np.linalg.svd(w2c[:3, :3])
        pose = pycolmap.Rigid3d(pycolmap.Rotation3d(u @ vt), w2c[:3, 3])
        rec.add_image_with_trivial_frame(pycolmap.Image(name=name, camera_id=i + 1, image_id=i + 1), pose)
    for p, c in zip(xyz, rgb):
        rec.add_point3D(p, pycolmap.Track(), c)

    model = out / "sparse" / "0"
    model.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".model.", dir=model.parent))
    try:
        rec.write(str(tmp))
        if model.exists():
            shutil.rmtree(model)
        os.replace(tmp, model)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if images is not None:
        (out / "images").mkdir(parents=True, exist_ok=True)
        for img, name, cam in zip(images, names, cameras):
            arr = np.asarray(img)
            assert arr.shape[:2] == (cam.height, cam.width), (arr.shape, cam.height, cam.width)
            dst = out / "images" / name
            dst.parent.mkdir(parents=True, exist_ok=True)
            fd, t = tempfile.mkstemp(prefix=".img.", suffix=dst.suffix, dir=dst.parent)
            os.close(fd)
            Image.fromarray(arr).save(t)
            os.replace(t, dst)
    return model
