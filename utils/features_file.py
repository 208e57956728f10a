"""The features file written by back-projection: `features_<source>.pt`.

A dict loadable with `torch.load(weights_only=True)`:
    features: [N, D] float32 (or float16) weighted average sum w F / sum w; rows never seen are 0; not normalised.
    weight: [N] float32 sum w per Gaussian (0 = never seen; the pruning mask is weight > 0).
    meta: dict (source, space, class_names, text_encoder, dim, num_gaussians, scene_path, scene_hash, views,
          image_sizes, normalize, tool_version, created).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from .atomic import atomic_torch_save
from .errors import UserError
from .splats import Splats


@dataclass
class FeatureField:
    """A lifted feature field. features: [N, D]; weight: [N]; meta: what the file records."""

    features: Tensor
    weight: Tensor
    meta: dict

    @property
    def seen(self) -> Tensor:
        """[N] bool: Gaussians seen in at least one view."""
        return self.weight > 0

    @property
    def space(self) -> str:
        return str(self.meta.get("space", "unknown"))

    @property
    def class_names(self) -> list[str] | None:
        return self.meta.get("class_names")

    def normalized(self) -> Tensor:
        """[N, D] float32 unit rows (zero rows stay zero) for cosine similarity."""
        f = self.features.float()
        return f / f.norm(dim=1, keepdim=True).clamp_min(1e-12)


def save_feature_field(field: FeatureField, path: str | Path) -> None:
    assert field.features.ndim == 2 and field.weight.shape == (field.features.shape[0],)
    atomic_torch_save({"features": field.features, "weight": field.weight, "meta": field.meta}, path)


def load_feature_field(path: str | Path, splats: Splats | None = None) -> FeatureField:
    """Load and validate a features file; with `splats`, check it belongs to that scene (count and parameter hash)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: features file not found (run backproject.py first)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for corrupt files
        raise UserError(f"{path}: not a readable features file ({type(e).__name__}: {str(e).splitlines()[0][:120]})") from None
    if not isinstance(obj, dict) or not {"features", "weight", "meta"} <= set(obj):
        raise UserError(f"{path}: not a features file (expected a dict with features, weight, meta)")
    feats, weight, meta = obj["features"], obj["weight"], obj["meta"]
    if not isinstance(feats, Tensor) or feats.ndim != 2 or not isinstance(weight, Tensor) or weight.shape != (feats.shape[0],):
        raise UserError(f"{path}: features must be [N, D] and weight [N]")
    if splats is not None:
        if feats.shape[0] != splats.num:
            raise UserError(
                f"{path}: features are for {feats.shape[0]} Gaussians but the scene has {splats.num} "
                "(features file from another scene?)"
            )
        want = meta.get("scene_hash")
        if want is not None and want != splats.param_hash():
            raise UserError(f"{path}: features were lifted from a different scene (parameter hash mismatch)")
    return FeatureField(feats, weight, dict(meta))
