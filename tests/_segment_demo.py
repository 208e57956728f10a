"""The demo scene + lifted label fields shared by test_segment.py and test_evaluation.py (built once per session).

Not a conftest: imported by those files; the cache keeps one build per pytest base temp dir.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from utils.camera import Camera
from utils.features_file import FeatureField, load_feature_field
from utils.splats import Splats


@dataclass
class DemoData:
    root: Path  # the built demo dataset (data/demo layout)
    splats: Splats
    cameras: list[Camera]  # all views, loaded from the demo's COLMAP model like a user's scene
    train: list[Camera]
    test: list[Camera]
    labels: torch.Tensor  # [N] per-Gaussian ground truth
    class_names: list[str]
    features_path: Path  # lifted from the TRAIN label maps
    field: FeatureField
    work: Path


@functools.lru_cache(maxsize=None)
def demo_data(base: Path) -> DemoData:
    from utils.demo_scene import build_demo_scene
    from utils.evaluation import lift_label_maps
    from utils.scene_args import SceneArgs, load_scene_and_cameras

    root = build_demo_scene(base / "data" / "demo")
    splats, cameras = load_scene_and_cameras(SceneArgs(checkpoint=root / "ckpts" / "ckpt_demo.pt", data_dir=root), verbose=False)
    split = json.loads((root / "split.json").read_text())
    train = [c for c in cameras if c.name in split["train"]]
    test = [c for c in cameras if c.name in split["test"]]
    assert len(train) == 21 and len(test) == 3 and not set(split["train"]) & set(split["test"])
    work = base / "work"
    path = work / "features_maps.pt"
    lift_label_maps(splats, train, root / "labels", path)
    labels = torch.load(root / "gaussian_labels.pt", weights_only=True)
    names = json.loads((root / "labels" / "classes.json").read_text())
    return DemoData(root, splats, cameras, train, test, labels, names, path, load_feature_field(path, splats), work)


@functools.lru_cache(maxsize=None)
def noisy_field(base: Path, fraction: float = 0.2, seed: int = 0) -> FeatureField:
    """The demo's TRAIN label maps with `fraction` of pixels relabelled at random (seeded), lifted."""
    from utils.evaluation import lift_label_maps, write_noisy_labels

    d = demo_data(base)
    noisy = write_noisy_labels(d.root / "labels", d.work / f"labels_noise{fraction:g}", fraction, seed)
    return lift_label_maps(d.splats, d.train, noisy, d.work / f"features_noise{fraction:g}.pt")
