"""`dino` feature source: dense DINOv2 patch features (timm ViT, local weights). No text space."""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from torch import Tensor, nn

from ..errors import UserError
from .base import PatchEncoderSource, SourceInfo, unit_normalize


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


class DinoSource(PatchEncoderSource):
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
        self.batch_size = batch_size or 2
        self.info = SourceInfo(name="dino", space=f"dino:{model_name}", dim=int(self.model.embed_dim))

    def features(self, x: Tensor) -> Tensor:
        """x: [B, 3, h, w] normalised -> [B, h/p, w/p, C] unit patch tokens (prefix tokens dropped)."""
        tokens = self.model.forward_features(x)  # [B, prefix + N, C], final norm applied
        patches = tokens[:, self.model.num_prefix_tokens :].float()
        return unit_normalize(patches.reshape(x.shape[0], x.shape[2] // self.patch, x.shape[3] // self.patch, -1))
