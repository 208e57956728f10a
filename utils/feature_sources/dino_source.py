"""`dino` feature source: dense DINOv2 patch features (timm ViT, local weights). No text space."""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from torch import Tensor, nn

from ..camera import Camera
from ..errors import UserError
from .base import FeatureMap, FeatureSource, SourceInfo, patch_input_size, to_model_input, unit_normalize


def _read_weights(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise UserError(f"{path}: DINOv2 weights file not found (pass a local timm/DINOv2 state dict)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt file or pickled objects
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{path}: cannot read DINOv2 weights: {msg}") from None
    for wrapper in ("state_dict", "model", "teacher"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise UserError(f"{path}: not a state dict")
    return obj


def load_dino(model_name: str, weights: Path | str, device: str | torch.device = "cpu") -> nn.Module:
    """timm ViT `model_name` (e.g. vit_small_patch14_dinov2) with `weights` (timm or original DINOv2 keys), strict."""
    weights = Path(weights).expanduser()
    if not timm.is_model(model_name):
        raise UserError(f"--dino-model {model_name}: unknown timm model")
    sd = _read_weights(weights)
    model = timm.create_model(model_name, pretrained=False, dynamic_img_size=True)
    # timm's filter converts the original DINOv2 release's key layout (and drops its unused mask token).
    from timm.models.vision_transformer import checkpoint_filter_fn

    try:
        sd = checkpoint_filter_fn(sd, model)
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise UserError(f"{weights}: does not match timm {model_name}: {str(e).splitlines()[0]}") from None
    return model.float().to(device).eval()


class DinoSource(FeatureSource):
    """Patch features [h/p, w/p, C] of the last layer (after the final norm), unit per patch.

    short_side: the render is resized so its short side is ~this, sides rounded to multiples of the patch.
    """

    def __init__(
        self,
        model_name: str,
        weights: Path | str,
        short_side: int = 448,
        device: str | torch.device = "cpu",
        batch_size: int | None = None,
    ) -> None:
        self.device = torch.device(device)
        self.model = load_dino(model_name, weights, self.device)
        self.patch = int(self.model.patch_embed.patch_size[0])
        if short_side < self.patch:
            raise UserError(f"--dino-short-side {short_side}: smaller than the patch size {self.patch}")
        self.short_side = short_side
        cfg = self.model.pretrained_cfg
        self.mean = torch.tensor(cfg.get("mean", (0.485, 0.456, 0.406)), device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(cfg.get("std", (0.229, 0.224, 0.225)), device=self.device).view(1, 3, 1, 1)
        self._batch_size = batch_size or 2
        self.info = SourceInfo(name="dino", space=f"dino:{model_name}", dim=int(self.model.embed_dim))

    @property
    def batch_size(self) -> int:
        return self._batch_size

    def input_size(self, height: int, width: int) -> tuple[int, int]:
        """(h, w): short side ~`short_side`, aspect kept, multiples of the patch."""
        return patch_input_size(height, width, self.short_side, self.patch)

    def __call__(self, images: Tensor, cameras: list[Camera]) -> list[FeatureMap]:
        """images: [B, H, W, 3] RGB in [0, 1] -> B FeatureMaps [h/p, w/p, C] (resize="bilinear")."""
        assert images.ndim == 4 and images.shape[-1] == 3 and images.shape[0] == len(cameras), images.shape
        H, W = images.shape[1:3]
        h, w = self.input_size(H, W)
        x = to_model_input(images, (h, w), self.mean, self.std, self.device)
        with torch.inference_mode():
            tokens = self.model.forward_features(x)  # [B, prefix + N, C], final norm applied
        patches = tokens[:, self.model.num_prefix_tokens :].float()
        feats = unit_normalize(patches.reshape(x.shape[0], h // self.patch, w // self.patch, -1))
        return [FeatureMap(f, resize="bilinear") for f in feats]
