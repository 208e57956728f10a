"""The interface every 2D feature source implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from ..camera import Camera


@dataclass
class FeatureMap:
    """Per-pixel features of one view, at the source's own resolution.

    features: [h, w, D] float32. For sources with a text space these are unit-normalised per pixel.
    resize: how the lifting engine maps them to the render size (H, W) when (h, w) != (H, W):
        "bilinear" = torch `interpolate(mode="bilinear", align_corners=False)`; "nearest" = `mode="nearest"`.
        Bilinear is linear in the features, so the engine may fold it into the weights instead of upsampling.
    valid: optional [h, w] bool; pixels with False contribute nothing (neither numerator nor weight).
    """

    features: Tensor
    resize: Literal["bilinear", "nearest"] = "bilinear"
    valid: Tensor | None = None

    def __post_init__(self) -> None:
        assert self.features.ndim == 3, self.features.shape
        if self.valid is not None:
            assert tuple(self.valid.shape) == tuple(self.features.shape[:2]), (self.valid.shape, self.features.shape)


@dataclass
class SourceInfo:
    """What a features file records about its feature space.

    name: the source name used on the command line (`rgb`, `maps`, `lseg`, `clip`, `dino`).
    space: the feature space, e.g. `clip:ViT-B-32-quickgelu`, `labels`, `rgb`, `dino:vit_small_patch14_dinov2`.
    dim: D.
    class_names: names of the label ids for label spaces, else None.
    text_encoder: how to encode text queries in this space (e.g. {"kind": "lseg", "checkpoint": path} or
        {"kind": "open_clip", "model": "ViT-B-16", "weights": path}); None when the space has no text.
    """

    name: str
    space: str
    dim: int
    class_names: list[str] | None = None
    text_encoder: dict | None = field(default=None)


class FeatureSource(ABC):
    """Computes 2D features for views. Runs on the scene's own RGB renders (and may ignore them, e.g. `maps`)."""

    info: SourceInfo
    # False for sources that read their maps from disk: the engine then skips the RGB render and passes None.
    needs_images: bool = True
    # How many views to hand over per call (a class default; `--batch-views` sets it per instance).
    batch_size: int = 1

    @abstractmethod
    def __call__(self, images: Tensor | None, cameras: list[Camera]) -> list[FeatureMap]:
        """images: [B, H, W, 3] float32 RGB renders in [0, 1] of `cameras` (B = len(cameras), all the same size),
        or None when `needs_images` is False. One FeatureMap per view."""

    def check_views(self, cameras: list[Camera]) -> None:
        """Raise `UserError` before any work if some view cannot be served (e.g. a missing map). Default: all fine."""
        return None


class PatchEncoderSource(FeatureSource):
    """A ViT patch encoder run on the renders: each is resized so its short side is ~`short_side` (sides multiples
    of `patch`), normalised with `mean`/`std`, and `features` gives one unit vector per patch, which the engine
    upsamples bilinearly. Subclasses set patch, short_side, mean, std ([1, 3, 1, 1]), device, batch_size and info."""

    patch: int
    short_side: int
    mean: Tensor
    std: Tensor
    device: torch.device

    def input_size(self, height: int, width: int) -> tuple[int, int]:
        """(h, w): short side ~`short_side`, aspect kept, multiples of the patch."""
        return patch_input_size(height, width, self.short_side, self.patch)

    @abstractmethod
    def features(self, x: Tensor) -> Tensor:
        """x: [B, 3, h, w] normalised model input -> [B, h/p, w/p, D] unit features."""

    def __call__(self, images: Tensor, cameras: list[Camera]) -> list[FeatureMap]:
        """images: [B, H, W, 3] RGB in [0, 1] -> B FeatureMaps [h/p, w/p, D] (resize="bilinear")."""
        assert images.ndim == 4 and images.shape[-1] == 3 and images.shape[0] == len(cameras), images.shape
        H, W = images.shape[1:3]
        x = to_model_input(images, self.input_size(H, W), self.mean, self.std, self.device)
        with torch.inference_mode():
            feats = self.features(x).float()
        return [FeatureMap(f, resize="bilinear") for f in feats]


def unit_normalize(features: Tensor, dim: int = -1, eps: float = 1e-12) -> Tensor:
    """L2-normalise along `dim`; zero vectors stay zero."""
    return features / features.norm(dim=dim, keepdim=True).clamp_min(eps)


def patch_input_size(height: int, width: int, short_side: int, patch: int) -> tuple[int, int]:
    """(h, w) for a ViT input: short side ~`short_side`, aspect kept, both multiples of `patch`."""
    scale = short_side / min(height, width)
    return max(patch, round(height * scale / patch) * patch), max(patch, round(width * scale / patch) * patch)


def to_model_input(images: Tensor, size: tuple[int, int], mean: Tensor, std: Tensor, device) -> Tensor:
    """images: [B, H, W, 3] RGB in [0, 1] -> [B, 3, h, w] on `device`, resized (bicubic, antialiased) and normalised."""
    import torch.nn.functional as F

    x = images.to(device, torch.float32).permute(0, 3, 1, 2)
    if tuple(size) != tuple(x.shape[2:]):
        x = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    return ((x - mean) / std).contiguous()
