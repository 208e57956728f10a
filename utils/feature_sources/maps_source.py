"""`maps`: precomputed per-image maps from disk, matched to views by file stem.

Integer label PNGs (one-hot; 255 = ignore, contributes nothing; `classes.json` names the ids) or float `.npy`
maps [H, W, D] at any resolution with the view's aspect ratio.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ..camera import Camera
from ..errors import UserError
from .base import FeatureMap, FeatureSource, SourceInfo

IGNORE_LABEL = 255


def read_class_names(path: Path) -> list[str]:
    """`classes.json`: a list of names (id = position) or a dict {id: name}."""
    try:
        obj = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: cannot read class names ({e})") from None
    if isinstance(obj, dict):
        try:
            items = {int(k): str(v) for k, v in obj.items()}
        except ValueError:
            raise UserError(f"{path}: keys must be integer label ids") from None
        names = [items.get(i, f"class_{i}") for i in range(max(items) + 1)] if items else []
    elif isinstance(obj, list):
        names = [str(v) for v in obj]
    else:
        raise UserError(f"{path}: expected a list of class names or a {{id: name}} object")
    if not names or len(names) >= IGNORE_LABEL:
        raise UserError(f"{path}: needs 1..254 class names, found {len(names)}")
    return names


class MapsSource(FeatureSource):
    """Reads `<maps_dir>/<image stem>.png` (labels) or `<image stem>.npy` (float features)."""

    needs_images = False
    batch_size = 8

    def __init__(self, maps_dir: Path) -> None:
        self.maps_dir = Path(maps_dir)
        if not self.maps_dir.is_dir():
            raise UserError(f"{self.maps_dir}: maps directory not found")
        self.pngs = {p.stem: p for p in self.maps_dir.glob("*.png")}
        self.npys = {p.stem: p for p in self.maps_dir.glob("*.npy")}
        if self.pngs and self.npys:
            raise UserError(f"{self.maps_dir}: holds both .png label maps and .npy feature maps; keep one kind")
        if not self.pngs and not self.npys:
            raise UserError(f"{self.maps_dir}: no .png label maps or .npy feature maps found")
        if self.pngs:
            classes = self.maps_dir / "classes.json"
            if not classes.exists():
                raise UserError(f"{classes}: missing (label maps need class names)")
            self.class_names: list[str] | None = read_class_names(classes)
            self.info = SourceInfo(name="maps", space="labels", dim=len(self.class_names), class_names=self.class_names)
        else:
            first = next(iter(sorted(self.npys.values())))
            arr = np.load(first, mmap_mode="r")
            if arr.ndim != 3:
                raise UserError(f"{first}: expected a float map [H, W, D], got shape {arr.shape}")
            self.class_names = None
            self.info = SourceInfo(name="maps", space="features", dim=int(arr.shape[2]))

    def _path(self, camera: Camera) -> Path | None:
        stem = Path(camera.name).stem
        return (self.pngs or self.npys).get(stem)

    def check_views(self, cameras: list[Camera]) -> None:
        missing = [c.name for c in cameras if self._path(c) is None]
        if missing:
            more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
            raise UserError(f"{self.maps_dir}: no map for view(s) {', '.join(missing[:3])}{more}")

    def load(self, camera: Camera) -> FeatureMap:
        path = self._path(camera)
        if path is None:
            raise UserError(f"{self.maps_dir}: no map for view {camera.name}")
        if path.suffix == ".png":
            fmap = self._load_labels(path)
        else:
            fmap = self._load_npy(path)
        h, w = fmap.features.shape[:2]
        # Any resolution is fine, but the map must cover the same field of view as the render.
        if abs(w / h - camera.width / camera.height) > 0.02 * camera.width / camera.height:
            raise UserError(
                f"{path}: map is {w}x{h} but view {camera.name} is {camera.width}x{camera.height} (aspect ratio differs)"
            )
        return fmap

    def _load_labels(self, path: Path) -> FeatureMap:
        try:
            labels = np.asarray(Image.open(path))
        except OSError as e:
            raise UserError(f"{path}: cannot read label map ({e})") from None
        if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
            raise UserError(f"{path}: label map must be a single-channel integer PNG, got {labels.dtype} {labels.shape}")
        lab = torch.from_numpy(labels.astype(np.int64))
        valid = lab != IGNORE_LABEL
        assert self.class_names is not None
        bad = valid & ((lab < 0) | (lab >= len(self.class_names)))
        if bad.any():
            raise UserError(f"{path}: label {int(lab[bad][0])} has no name in classes.json ({len(self.class_names)} classes)")
        onehot = torch.zeros(*lab.shape, len(self.class_names), dtype=torch.float32)
        onehot[valid] = torch.nn.functional.one_hot(lab[valid], len(self.class_names)).float()
        return FeatureMap(onehot, resize="nearest", valid=valid)

    def _load_npy(self, path: Path) -> FeatureMap:
        try:
            arr = np.load(path)
        except (OSError, ValueError) as e:
            raise UserError(f"{path}: cannot read feature map ({e})") from None
        if arr.ndim != 3 or arr.shape[2] != self.info.dim:
            raise UserError(f"{path}: expected shape [H, W, {self.info.dim}], got {arr.shape}")
        feats = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
        if not torch.isfinite(feats).all():
            raise UserError(f"{path}: contains NaN/inf values")
        return FeatureMap(feats, resize="bilinear")

    def __call__(self, images: Tensor | None, cameras: list[Camera]) -> list[FeatureMap]:
        return [self.load(c) for c in cameras]
