"""Build a feature source from its command-line name (imports lazily: only the chosen model is loaded)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..errors import UserError
from .base import FeatureSource

SourceName = Literal["rgb", "maps", "lseg", "clip", "dino"]


@dataclass
class SourceArgs:
    """Options of the 2D feature sources."""

    maps_dir: Path | None = None
    """`maps`: folder of per-image label PNGs (+ classes.json) or .npy feature maps, named like the images."""
    lseg_checkpoint: Path = Path("checkpoints/lseg_minimal_e200.ckpt")
    """`lseg`: the LSeg weights."""
    lseg_short_side: int = 480
    """`lseg`: model input size on the short side (multiple of 32)."""
    clip_model: str = "ViT-B-16"
    """`clip`: open_clip model name."""
    clip_weights: Path | None = None
    """`clip`: local open_clip weights file."""
    clip_short_side: int | None = None
    """`clip`: resize renders to this short side first (default: the model's input size)."""
    clip_window: int | None = None
    """`clip`: sliding-window size in pixels (a multiple of the patch size) for finer features (default: one window)."""
    clip_stride: int | None = None
    """`clip`: sliding-window stride (default: half the window)."""
    dino_model: str = "vit_small_patch14_dinov2"
    """`dino`: timm model name."""
    dino_weights: Path | None = None
    """`dino`: local timm weights file."""


def make_source(name: str, args: SourceArgs, device: str = "cpu") -> FeatureSource:
    if name == "rgb":
        from .rgb_source import RGBSource

        return RGBSource()
    if name == "maps":
        from .maps_source import MapsSource

        if args.maps_dir is None:
            raise UserError("--features maps needs --maps-dir DIR")
        return MapsSource(args.maps_dir)
    if name == "lseg":
        from .lseg_source import LSegSource

        return LSegSource(args.lseg_checkpoint, short_side=args.lseg_short_side, device=device)
    if name == "clip":
        from .clip_source import ClipSource

        if args.clip_weights is None:
            raise UserError("--features clip needs --clip-weights PATH (a local open_clip weights file)")
        return ClipSource(
            args.clip_model, args.clip_weights, short_side=args.clip_short_side, window=args.clip_window,
            stride=args.clip_stride, device=device,
        )  # fmt: skip
    if name == "dino":
        try:
            from .dino_source import DinoSource
        except ImportError:
            raise UserError("--features dino is not available in this version") from None
        if args.dino_weights is None:
            raise UserError("--features dino needs --dino-weights PATH (local timm weights)")
        return DinoSource(args.dino_model, args.dino_weights, device=device)
    raise UserError(f"unknown feature source {name!r}; choose one of rgb, maps, lseg, clip, dino")
