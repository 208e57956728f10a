"""`rgb`: the scene's own render as the feature (a sanity source: lifted colour ~ the Gaussian's colour)."""

from __future__ import annotations

from torch import Tensor

from ..camera import Camera
from .base import FeatureMap, FeatureSource, SourceInfo


class RGBSource(FeatureSource):
    info = SourceInfo(name="rgb", space="rgb", dim=3)
    batch_size = 8

    def __call__(self, images: Tensor, cameras: list[Camera]) -> list[FeatureMap]:
        assert images.ndim == 4 and images.shape[-1] == 3 and images.shape[0] == len(cameras), images.shape
        return [FeatureMap(img.float(), resize="bilinear") for img in images]
