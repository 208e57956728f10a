"""`lseg` feature source: dense LSeg (lseg-minimal) features in CLIP ViT-B/32 text space, and text encoders."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from lseg import encode_text, load_lseg, load_lseg_text
from lseg.net import CLIP_MODEL, Normalization

from ..camera import Camera
from ..errors import UserError
from .base import FeatureMap, FeatureSource, SourceInfo, unit_normalize

_MULTIPLE = 32  # LSeg needs H, W divisible by 32


def model_input_size(height: int, width: int, short_side: int) -> tuple[int, int]:
    """(h, w) for LSeg: short side ~`short_side`, aspect kept, both multiples of 32 (at least 32)."""
    scale = short_side / min(height, width)
    h = max(_MULTIPLE, round(height * scale / _MULTIPLE) * _MULTIPLE)
    w = max(_MULTIPLE, round(width * scale / _MULTIPLE) * _MULTIPLE)
    return h, w


class LSegSource(FeatureSource):
    """Per-view LSeg features [h/2, w/2, 512], unit per pixel, for the (resized) render of each view.

    checkpoint: `lseg_minimal_e200.ckpt`. short_side: model input short side (multiple of 32; 480 = LSeg's
    training size). normalization: "none" (RGB in [0,1] as-is, lseg-minimal's examples) or "half" (mean=std=0.5).
    On CUDA the forward runs under fp16 autocast unless `autocast=False`; on CPU always float32.
    """

    def __init__(
        self,
        checkpoint: Path | str,
        short_side: int = 480,
        normalization: Normalization = "none",
        device: str | torch.device = "cpu",
        batch_size: int | None = None,
        autocast: bool = True,
    ) -> None:
        if short_side < _MULTIPLE or short_side % _MULTIPLE:
            raise UserError(f"--lseg-short-side {short_side}: must be a positive multiple of {_MULTIPLE}")
        self.checkpoint = Path(checkpoint).expanduser().resolve()
        self.short_side = short_side
        self.device = torch.device(device)
        self.net = load_lseg(self.checkpoint, device=self.device, normalization=normalization)
        self.autocast = autocast and self.device.type == "cuda"
        self.batch_size = batch_size or (4 if self.device.type == "cuda" else 1)
        self.info = SourceInfo(
            name="lseg",
            space=f"clip:{CLIP_MODEL}",
            dim=512,
            text_encoder={"kind": "lseg", "checkpoint": str(self.checkpoint)},
        )

    def __call__(self, images: Tensor, cameras: list[Camera]) -> list[FeatureMap]:
        """images: [B, H, W, 3] RGB in [0, 1] -> B FeatureMaps with features [h/2, w/2, 512] (resize="bilinear")."""
        assert images.ndim == 4 and images.shape[-1] == 3 and images.shape[0] == len(cameras), images.shape
        H, W = images.shape[1:3]
        h, w = model_input_size(H, W, self.short_side)
        x = images.to(self.device, torch.float32).permute(0, 3, 1, 2)
        if (h, w) != (H, W):
            x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=self.autocast):
            feats = self.net(x.contiguous())  # [B, 512, h/2, w/2]
        feats = unit_normalize(feats.float().permute(0, 2, 3, 1))
        return [FeatureMap(f, resize="bilinear") for f in feats]


def text_encoder_from_info(text_encoder: dict, device: str | torch.device = "cpu") -> Callable[[list[str]], Tensor]:
    """A function prompts -> [P, D] unit float32 text features in a features file's space.

    text_encoder: `SourceInfo.text_encoder`: {"kind": "lseg", "checkpoint": path} (loads only the checkpoint's
    `clip_pretrained.*` tower) or {"kind": "open_clip", "model": name, "weights": path}.
    """
    te = text_encoder if isinstance(text_encoder, dict) else {}
    kind = te.get("kind")
    if kind == "lseg" and te.get("checkpoint"):
        clip = load_lseg_text(te["checkpoint"], device=device)
        return lambda prompts: encode_text(clip, list(prompts)).cpu()
    if kind == "open_clip" and te.get("model") and te.get("weights"):
        from .clip_source import open_clip_text_encoder  # only needed for this kind

        return open_clip_text_encoder(te["model"], te["weights"], device=device)
    raise UserError(f"features file: no text encoder for this feature space (text_encoder={text_encoder!r})")
