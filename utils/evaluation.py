"""Segmentation-quality protocol for a lifted feature field against ground-truth label maps.

Inputs: the scene, its features file, the class names of the ground truth, per-view label PNGs (id = index into
the class names, 255 = ignore) for HELD-OUT views (not used for lifting), optionally per-Gaussian labels [N].
Each class name becomes a query in the field's space (labels space: its one-hot; text spaces: the text encoder).

(a) rendered: render the per-Gaussian unit features as a D-channel image, normalise per pixel, predict the argmax
    over the class queries; pixels with alpha < 0.5 predict "nothing".
(b) 3D masks: class c's 3D mask is the segmentation rule with positive c and the other classes as negatives
    (= `segment.py --prompt c --neg-prompt "<other classes>"`, optional kNN clean-up); render the mask as a
    1-channel feature with the FULL scene's weights; a pixel is in c where the composited value > 0.5.
    Pixel prediction = argmax over classes of that value if > 0.5, else "nothing".
Metrics over all evaluated views, pixels with label 255 ignored: per-class IoU = TP / (TP + FP + FN) summed over
views (NaN for a class absent from both GT and prediction; mIoU = nanmean), pixel accuracy = share of valid pixels
whose prediction equals the label. 3D: argmax over class queries per Gaussian vs the per-Gaussian label, over
Gaussians with weight > 0 (accuracy and per-class IoU of the 3D masks).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from .camera import Camera
from .errors import UserError
from .features_file import FeatureField
from .query import TextEncoder, cosine_scores, knn_clean, mask_from_scores, space_kind, text_encoder_for
from .segmentation import composited_value, render_unit_features
from .splats import Splats

IGNORE = 255


@dataclass
class LabelledView:
    """camera: the view; labels: [H, W] int64 ground truth (IGNORE = not evaluated)."""

    camera: Camera
    labels: Tensor

    def __post_init__(self) -> None:
        assert tuple(self.labels.shape) == (self.camera.height, self.camera.width), (self.labels.shape, self.camera)


def load_labelled_views(cameras: list[Camera], labels_dir: str | Path, names: list[str] | None = None) -> list[LabelledView]:
    """Pair cameras with `<labels_dir>/<image stem>.png`; `names` restricts to those view names (e.g. the test split)."""
    labels_dir = Path(labels_dir)
    by_name = {c.name: c for c in cameras}
    chosen = cameras if names is None else []
    if names is not None:
        missing = [n for n in names if n not in by_name]
        if missing:
            raise UserError(f"evaluation views not among the scene's cameras: {', '.join(missing[:3])}")
        chosen = [by_name[n] for n in names]
    if not chosen:
        raise UserError("no views to evaluate")
    views = []
    for cam in chosen:
        path = labels_dir / f"{Path(cam.name).stem}.png"
        if not path.exists():
            raise UserError(f"{path}: ground-truth label map missing for view {cam.name}")
        try:
            lab = np.asarray(Image.open(path))
        except OSError as e:
            raise UserError(f"{path}: cannot read label map ({e})") from None
        if lab.ndim != 2:
            raise UserError(f"{path}: label map must be single-channel, got shape {lab.shape}")
        if lab.shape != (cam.height, cam.width):
            raise UserError(f"{path}: label map is {lab.shape[1]}x{lab.shape[0]} but view {cam.name} is {cam.width}x{cam.height}")
        views.append(LabelledView(cam, torch.from_numpy(lab.astype(np.int64))))
    return views


def class_queries(ff: FeatureField, class_names: list[str], text_encoder: TextEncoder | None = None) -> Tensor:
    """[C, D] unit query per ground-truth class name in the field's space."""
    D = ff.features.shape[1]
    kind = space_kind(ff.space)
    if kind == "labels":
        known = [c.lower() for c in (ff.class_names or [])]
        q = torch.zeros(len(class_names), D)
        for i, name in enumerate(class_names):
            if name.lower() not in known:
                raise UserError(f"class {name!r} of the ground truth is not in the features file ({', '.join(ff.class_names or [])})")
            q[i, known.index(name.lower())] = 1.0
        return q
    if kind == "text":
        enc = (text_encoder or text_encoder_for(ff.meta))(list(class_names)).detach().float().cpu()
        assert enc.shape == (len(class_names), D), enc.shape
        return enc / enc.norm(dim=1, keepdim=True).clamp_min(1e-12)
    raise UserError(f"features space {ff.space!r} has no text: class names cannot be turned into queries")


def class_masks_3d(ff: FeatureField, queries: Tensor, threshold: float | None = None) -> Tensor:
    """[C, N] bool: per class c, the segmentation rule with positive c and the other classes as negatives."""
    scores = cosine_scores(ff.normalized(), queries)  # [N, C]
    C = queries.shape[0]
    masks = []
    for c in range(C):
        others = [j for j in range(C) if j != c]
        masks.append(mask_from_scores(scores[:, c : c + 1], scores[:, others], ff.seen, threshold))
    return torch.stack(masks)


@dataclass
class Counts:
    """Running per-class TP / FP / FN and valid / correct pixel counts."""

    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray
    correct: int = 0
    valid: int = 0

    @staticmethod
    def zeros(C: int) -> "Counts":
        return Counts(np.zeros(C, np.int64), np.zeros(C, np.int64), np.zeros(C, np.int64))

    def add_masks(self, pred_masks: Tensor, gt: Tensor) -> None:
        """pred_masks [C, ...] bool (may overlap), gt [...] int64 with IGNORE."""
        valid = gt != IGNORE
        for c in range(pred_masks.shape[0]):
            p, g = pred_masks[c] & valid, (gt == c) & valid
            self.tp[c] += int((p & g).sum())
            self.fp[c] += int((p & ~g).sum())
            self.fn[c] += int((~p & g).sum())

    def add_labels(self, pred: Tensor, gt: Tensor) -> None:
        """pred [...] int64 (-1 = nothing), gt [...] int64 with IGNORE: accuracy counts only."""
        valid = gt != IGNORE
        self.correct += int(((pred == gt) & valid).sum())
        self.valid += int(valid.sum())

    def iou(self) -> list[float]:
        den = self.tp + self.fp + self.fn
        return [float(t / d) if d > 0 else math.nan for t, d in zip(self.tp, den)]

    def accuracy(self) -> float:
        return self.correct / self.valid if self.valid else math.nan


def _nanmean(x: list[float]) -> float:
    v = [a for a in x if not math.isnan(a)]
    return float(np.mean(v)) if v else math.nan


@dataclass
class EvalResult:
    """Per-class IoU lists follow `class_names`. 3D entries are None without per-Gaussian labels."""

    class_names: list[str]
    num_views: int
    iou_rendered: list[float]
    acc_rendered: float
    iou_mask: list[float]
    acc_mask: float
    acc_3d: float | None = None
    iou_3d: list[float] | None = None
    num_selected: list[int] = field(default_factory=list)
    settings: dict = field(default_factory=dict)

    @property
    def miou_rendered(self) -> float:
        return _nanmean(self.iou_rendered)

    @property
    def miou_mask(self) -> float:
        return _nanmean(self.iou_mask)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["miou_rendered"] = self.miou_rendered
        d["miou_mask"] = self.miou_mask
        return d

    def table(self) -> str:
        """A small per-class table."""
        head = f"{'class':<12}{'IoU rendered':>14}{'IoU 3D mask':>13}{'IoU 3D':>9}{'selected':>10}"
        rows = [head, "-" * len(head)]
        for i, name in enumerate(self.class_names):
            i3 = f"{self.iou_3d[i]:9.3f}" if self.iou_3d is not None else f"{'-':>9}"
            sel = self.num_selected[i] if i < len(self.num_selected) else 0
            rows.append(f"{name:<12}{self.iou_rendered[i]:14.3f}{self.iou_mask[i]:13.3f}{i3}{sel:10d}")
        rows.append("-" * len(head))
        a3 = f"  3D acc {self.acc_3d:.3f}" if self.acc_3d is not None else ""
        rows.append(
            f"mIoU rendered {self.miou_rendered:.3f} (pixel acc {self.acc_rendered:.3f})  "
            f"mIoU 3D masks {self.miou_mask:.3f} (pixel acc {self.acc_mask:.3f}){a3}  [{self.num_views} views]"
        )
        return "\n".join(rows)


def evaluate(
    splats: Splats,
    ff: FeatureField,
    class_names: list[str],
    views: list[LabelledView],
    gaussian_labels: Tensor | None = None,
    *,
    text_encoder: TextEncoder | None = None,
    clean_knn: int = 0,
    threshold: float | None = None,
    min_alpha: float = 0.5,
) -> EvalResult:
    """Run the protocol (module docstring). gaussian_labels: [N] int64 per-Gaussian GT (negative = unlabelled)."""
    if ff.features.shape[0] != splats.num:
        raise UserError(f"features are for {ff.features.shape[0]} Gaussians but the scene has {splats.num}")
    C = len(class_names)
    q = class_queries(ff, class_names, text_encoder)
    masks = class_masks_3d(ff, q, threshold)
    if clean_knn > 0:
        masks = torch.stack([knn_clean(splats.means, m, ff.seen, clean_knn) for m in masks])
    unit = ff.normalized()
    rendered, from_masks = Counts.zeros(C), Counts.zeros(C)
    for v in views:
        gt = v.labels
        f, alpha = render_unit_features(splats, unit, v.camera)
        pred = cosine_scores(f, q).argmax(dim=-1)
        pred[alpha < min_alpha] = -1
        rendered.add_masks(torch.stack([pred == c for c in range(C)]), gt)
        rendered.add_labels(pred, gt)
        val = composited_value(splats, masks.T.float(), v.camera)  # [H, W, C]
        inside = (val > 0.5).permute(2, 0, 1)
        from_masks.add_masks(inside, gt)
        best, arg = val.max(dim=-1)
        from_masks.add_labels(torch.where(best > 0.5, arg, torch.full_like(arg, -1)), gt)
    res = EvalResult(
        class_names=list(class_names),
        num_views=len(views),
        iou_rendered=rendered.iou(),
        acc_rendered=rendered.accuracy(),
        iou_mask=from_masks.iou(),
        acc_mask=from_masks.accuracy(),
        num_selected=[int(m.sum()) for m in masks],
        settings={"clean_knn": clean_knn, "threshold": threshold, "space": ff.space},
    )
    if gaussian_labels is not None:
        gl = gaussian_labels.long()
        if gl.shape != (splats.num,):
            raise UserError(f"per-Gaussian labels have shape {tuple(gl.shape)}, expected ({splats.num},)")
        keep = ff.seen & (gl >= 0) & (gl < C)
        pred3 = cosine_scores(unit[keep], q).argmax(dim=-1)
        res.acc_3d = float((pred3 == gl[keep]).float().mean()) if keep.any() else math.nan
        c3 = Counts.zeros(C)
        gl_eval = torch.where(keep, gl, torch.full_like(gl, IGNORE))
        c3.add_masks(masks, gl_eval)
        res.iou_3d = c3.iou()
    return res


# ----------------------------------------------------------------------------------------------------------------
# label noise (robustness check)


def relabel_noise(labels: np.ndarray, fraction: float, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """Copy of labels [H, W] with `fraction` of ALL pixels (ignored ones included) set to a uniform random class id."""
    out = labels.copy()
    flat = out.reshape(-1)
    pick = rng.choice(flat.size, size=int(round(fraction * flat.size)), replace=False)
    flat[pick] = rng.integers(0, num_classes, size=pick.size).astype(out.dtype)
    return out


def write_noisy_labels(src_dir: str | Path, dst_dir: str | Path, fraction: float, seed: int = 0) -> Path:
    """A copy of a label-map folder (PNGs + classes.json) with `relabel_noise` applied to every map (seeded)."""
    from .atomic import atomic_path, atomic_write_text
    from .feature_sources.maps_source import read_class_names

    src_dir, dst_dir = Path(src_dir), Path(dst_dir)
    names = read_class_names(src_dir / "classes.json")
    rng = np.random.default_rng(seed)
    for p in sorted(src_dir.glob("*.png")):
        lab = np.asarray(Image.open(p))
        with atomic_path(dst_dir / p.name) as tmp:
            Image.fromarray(relabel_noise(lab, fraction, len(names), rng)).save(tmp, format="PNG")
    atomic_write_text(json.dumps(names), dst_dir / "classes.json")
    return dst_dir


def lift_label_maps(
    splats: Splats, cameras: list[Camera], labels_dir: str | Path, out_path: str | Path, progress: bool = False
) -> FeatureField:
    """Lift label PNGs of `cameras` with the `maps` source (one-hot, 255 ignored) into `out_path`."""
    from .backprojection import LiftOptions, lift_features
    from .feature_sources.maps_source import MapsSource

    ff = lift_features(splats, cameras, MapsSource(Path(labels_dir)), out_path, LiftOptions(progress=progress, resume=False))
    assert ff is not None
    return ff
