"""`clip` feature source: dense MaskCLIP-style patch features of an open_clip ViT loaded from local weights.

In the last transformer block the patch tokens are replaced by their value embeddings (v projection, then the
attention's out-projection; the q/k attention, the residual and the MLP are skipped), followed by `ln_post` and
`proj`. Each patch then lives in the text embedding space, like the pooled image embedding (MaskCLIP, Zhou et al.
2022; dropping residual and MLP as in ClearCLIP). Optional sliding windows trade time for resolution.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import open_clip
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UserError
from .base import PatchEncoderSource, SourceInfo, unit_normalize

_OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
_OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def load_open_clip(model_name: str, weights: Path | str, device: str | torch.device = "cpu") -> nn.Module:
    """open_clip model `model_name` with the local state dict `weights` (strict), float32, eval, on `device`.

    open_clip's own loader does the reading (torch.load weights_only=True or safetensors; `state_dict` wrapper,
    `module.` prefix and third-party layouts converted). An absolute path is passed so it is never taken for a
    pretrained tag (which would mean a download).
    """
    weights = Path(weights).expanduser().resolve()
    if open_clip.get_model_config(model_name) is None:
        raise UserError(f"--clip-model {model_name}: unknown open_clip model (see open_clip.list_models())")
    if not weights.is_file():
        raise UserError(f"{weights}: open_clip weights file not found (pass a local file with --clip-weights)")
    try:
        model = open_clip.create_model(model_name, pretrained=str(weights))
    except Exception as e:  # strict-load mismatch, unreadable or unsafe pickle, TorchScript archive, ...
        msg = " ".join(str(e).split())[:300] or type(e).__name__
        raise UserError(f"{weights}: cannot load as open_clip {model_name}: {msg}") from None
    return model.float().to(device).eval()


def open_clip_text_encoder(
    model_name: str, weights: Path | str, device: str | torch.device = "cpu"
) -> Callable[[list[str]], Tensor]:
    """prompts -> [P, D] unit float32 text features (CPU) of the open_clip model in `weights`."""
    model = load_open_clip(model_name, weights, device)
    tokenizer = open_clip.get_tokenizer(model_name)

    def encode(prompts: list[str]) -> Tensor:
        with torch.inference_mode():
            tokens = tokenizer(list(prompts)).to(device)
            return F.normalize(model.encode_text(tokens).float(), dim=-1).cpu()

    return encode


def _check_supported(visual: nn.Module, model_name: str) -> None:
    blocks = getattr(getattr(visual, "transformer", None), "resblocks", None)
    ok = (
        hasattr(visual, "conv1")
        and blocks is not None
        and isinstance(getattr(blocks[-1], "attn", None), nn.MultiheadAttention)
        and getattr(visual, "attn_pool", None) is None
    )
    if not ok:
        raise UserError(f"--clip-model {model_name}: dense features need a plain open_clip ViT image tower")


def _positional_embedding(visual: nn.Module, gh: int, gw: int) -> Tensor:
    """[1 + gh*gw, C]: the model's grid embedding, resized bicubically when the patch grid differs."""
    pe = visual.positional_embedding
    n = pe.shape[0] - 1
    g = math.isqrt(n)
    assert g * g == n, pe.shape
    if (gh, gw) == (g, g):
        return pe
    grid = pe[1:].reshape(1, g, g, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(gh, gw), mode="bicubic", align_corners=False)
    return torch.cat([pe[:1], grid.permute(0, 2, 3, 1).reshape(gh * gw, -1)], dim=0)


def dense_clip_features(visual: nn.Module, x: Tensor) -> Tensor:
    """MaskCLIP patch features. x: [B, 3, h, w] normalised, h, w multiples of the patch -> [B, h/p, w/p, D]."""
    p = visual.conv1.kernel_size[0]
    B, _, h, w = x.shape
    assert h % p == 0 and w % p == 0, (x.shape, p)
    gh, gw = h // p, w // p
    t = visual.conv1(x).flatten(2).transpose(1, 2)  # [B, gh*gw, C]
    cls = visual.class_embedding.to(t.dtype).expand(B, 1, -1)
    t = torch.cat([cls, t], dim=1) + _positional_embedding(visual, gh, gw).to(t.dtype)
    t = visual.ln_pre(t)
    transformer = visual.transformer
    batch_first = getattr(transformer, "batch_first", True)
    blocks = transformer.resblocks
    if not batch_first:
        t = t.transpose(0, 1)
    for block in blocks[:-1]:
        t = block(t)
    if not batch_first:
        t = t.transpose(0, 1)
    last = blocks[-1]
    attn: nn.MultiheadAttention = last.attn
    c = t.shape[-1]
    v = F.linear(last.ln_1(t[:, 1:]), attn.in_proj_weight[2 * c :], attn.in_proj_bias[2 * c :])
    v = attn.out_proj(v)
    v = visual.ln_post(v)
    if visual.proj is not None:
        v = v @ visual.proj
    return v.reshape(B, gh, gw, -1)


def _window_starts(size: int, window: int, stride: int) -> list[int]:
    """Window offsets covering [0, size): every `stride`, the last one flush with the end."""
    if size <= window:
        return [0]
    starts = list(range(0, size - window, stride)) + [size - window]
    return sorted(set(starts))


class ClipSource(PatchEncoderSource):
    """Dense CLIP features [h/p, w/p, D], unit per patch, in the text space of an open_clip ViT.

    model_name: open_clip model name (e.g. "ViT-B-16"); weights: local state-dict file (.pt/.bin/.safetensors).
    short_side: the render is resized so its short side is ~this (sides rounded to multiples of the patch);
        default = the model's input size.
    window: None = the whole image at once (positional embedding resized); else square windows of this many
        pixels (multiple of the patch, default stride window/2 rounded to the patch), overlapping windows averaged.
    """

    def __init__(
        self,
        model_name: str,
        weights: Path | str,
        short_side: int | None = None,
        window: int | None = None,
        stride: int | None = None,
        device: str | torch.device = "cpu",
        batch_size: int | None = None,
    ) -> None:
        self.device = torch.device(device)
        self.weights = Path(weights).expanduser().resolve()
        self.model = load_open_clip(model_name, self.weights, self.device)
        self.visual = self.model.visual
        _check_supported(self.visual, model_name)
        self.patch = int(self.visual.conv1.kernel_size[0])
        input_size = self.visual.image_size
        input_size = int(input_size[0] if isinstance(input_size, (tuple, list)) else input_size)
        self.short_side = short_side or input_size
        p = self.patch
        if window is not None and (window < p or window % p):
            raise UserError(f"--clip-window {window}: must be a positive multiple of the patch size {p}")
        if stride is not None and (window is None or stride < p or stride % p):
            raise UserError(f"--clip-stride {stride}: needs --clip-window and must be a multiple of the patch size {p}")
        if window is not None and self.short_side < window:
            raise UserError(f"--clip-window {window}: larger than the short side {self.short_side}")
        self.window = window
        self.stride = stride or (max(p, (window // 2) // p * p) if window else None)
        mean = getattr(self.visual, "image_mean", None) or _OPENAI_MEAN
        std = getattr(self.visual, "image_std", None) or _OPENAI_STD
        self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self.batch_size = batch_size or 4
        dim = self.visual.proj.shape[1] if self.visual.proj is not None else self.visual.transformer.width
        self.info = SourceInfo(
            name="clip",
            space=f"clip:{model_name}",
            dim=int(dim),
            text_encoder={"kind": "open_clip", "model": model_name, "weights": str(self.weights)},
        )

    def features(self, x: Tensor) -> Tensor:
        """x: [B, 3, h, w] normalised -> [B, h/p, w/p, D] unit features (windows averaged if set)."""
        if self.window is None:
            return unit_normalize(dense_clip_features(self.visual, x))
        p, win = self.patch, self.window
        B, _, h, w = x.shape
        acc = x.new_zeros(B, h // p, w // p, self.info.dim)
        count = x.new_zeros(1, h // p, w // p, 1)
        for y0 in _window_starts(h, win, self.stride):
            for x0 in _window_starts(w, win, self.stride):
                crop = x[:, :, y0 : y0 + win, x0 : x0 + win]
                f = unit_normalize(dense_clip_features(self.visual, crop))
                acc[:, y0 // p : y0 // p + f.shape[1], x0 // p : x0 // p + f.shape[2]] += f
                count[:, y0 // p : y0 // p + f.shape[1], x0 // p : x0 // p + f.shape[2]] += 1
        return unit_normalize(acc / count)
