"""The LSeg network of lseg-minimal (`clip_vitl16_384` backbone, 256 features, arch_option 0, block_depth 0).

Module names and registration order reproduce the checkpoint's `state_dict` exactly (730 keys):
`clip_pretrained.*` (OpenAI CLIP ViT-B/32, QuickGELU; only the text tower is used), `pretrained.model.*`
(timm `vit_large_patch16_384`), `pretrained.act_postprocess{1..4}.*` (DPT readout + reassembly) and `scratch.*`
(DPT decoder + `head1`). The ViT forward is written here (not timm's) because the positional embedding must be
resized bilinearly (align_corners=False) and the raw outputs of four blocks are needed.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Literal

import open_clip
import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn

CLIP_MODEL = "ViT-B-32-quickgelu"
HOOK_BLOCKS = (5, 11, 17, 23)  # 0-based ViT-L blocks whose outputs feed the decoder
PATCH = 16
FEATURES = 256
OUT_DIM = 512

Normalization = Literal["none", "half"]
"""Input normalisation: "none" feeds RGB in [0, 1] as-is (lseg-minimal's examples, the default);
"half" maps it with mean = std = 0.5 to [-1, 1] (what lang-seg trained with)."""


def build_clip() -> nn.Module:
    """open_clip's ViT-B-32-quickgelu with random weights, children ordered like OpenAI CLIP's state dict."""
    cfg = open_clip.get_model_config(CLIP_MODEL)
    assert cfg is not None and cfg.get("quick_gelu"), "open_clip must know ViT-B-32-quickgelu (QuickGELU)"
    model = open_clip.model.CLIP(**cfg)
    # OpenAI's residual blocks register attn, ln_1, mlp, ln_2; open_clip registers ln_1 first. Reordering the
    # child dict changes only the state_dict order (forward looks children up by name).
    order = ("attn", "ln_1", "mlp", "ln_2")
    for tower in (model.transformer, model.visual.transformer):
        for block in tower.resblocks:
            rest = [(k, m) for k, m in block._modules.items() if k not in order]
            block._modules = OrderedDict([(k, block._modules[k]) for k in order] + rest)
    return model


def causal_mask(context_length: int) -> Tensor:
    """[L, L] additive causal mask of CLIP's text transformer (what open_clip builds, non-persistent)."""
    return torch.full((context_length, context_length), float("-inf")).triu_(1)


class ProjectReadout(nn.Module):
    """DPT readout "project": Linear(2C -> C) + GELU on [patch tokens, class token broadcast]."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.project = nn.Sequential(nn.Linear(2 * dim, dim), nn.GELU())

    def forward(self, tokens: Tensor) -> Tensor:
        """tokens: [B, 1 + N, C] -> [B, N, C]."""
        patches = tokens[:, 1:]
        cls = tokens[:, :1].expand_as(patches)
        return self.project(torch.cat([patches, cls], dim=-1))


def _postprocess(dim: int, out: int, resample: nn.Module | None) -> nn.Sequential:
    # Indices 1 and 2 were Transpose/Unflatten upstream (parameter-free, size-dependent); kept as Identity so the
    # conv and resample layers keep their state-dict indices 3 and 4. `_reassemble` does the reshape itself.
    layers: list[nn.Module] = [ProjectReadout(dim), nn.Identity(), nn.Identity(), nn.Conv2d(dim, out, 1)]
    if resample is not None:
        layers.append(resample)
    return nn.Sequential(*layers)


class Backbone(nn.Module):
    """`pretrained`: the timm ViT-L/16 plus the four reassembly heads."""

    def __init__(self) -> None:
        super().__init__()
        self.model = timm.create_model("vit_large_patch16_384", pretrained=False)
        c = self.model.embed_dim
        self.act_postprocess1 = _postprocess(c, 256, nn.ConvTranspose2d(256, 256, kernel_size=4, stride=4))
        self.act_postprocess2 = _postprocess(c, 512, nn.ConvTranspose2d(512, 512, kernel_size=2, stride=2))
        self.act_postprocess3 = _postprocess(c, 1024, None)
        self.act_postprocess4 = _postprocess(c, 1024, nn.Conv2d(1024, 1024, kernel_size=3, stride=2, padding=1))

    def pos_embed(self, gh: int, gw: int) -> Tensor:
        """[1, 1 + gh*gw, C]: the 24x24 grid resized bilinearly (align_corners=False); class entry unchanged."""
        pe = self.model.pos_embed
        n_old = pe.shape[1] - 1
        g = int(round(n_old**0.5))
        assert g * g == n_old, pe.shape
        grid = pe[:, 1:].reshape(1, g, g, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(gh, gw), mode="bilinear", align_corners=False)
        return torch.cat([pe[:, :1], grid.permute(0, 2, 3, 1).reshape(1, gh * gw, -1)], dim=1)

    def tokens(self, x: Tensor) -> list[Tensor]:
        """x: [B, 3, H, W] -> raw outputs of blocks HOOK_BLOCKS, each [B, 1 + (H/16)(W/16), C]."""
        gh, gw = x.shape[2] // PATCH, x.shape[3] // PATCH
        t = self.model.patch_embed.proj(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.model.cls_token.expand(t.shape[0], -1, -1), t], dim=1)
        t = t + self.pos_embed(gh, gw)
        hooks = []
        for i, block in enumerate(self.model.blocks[: HOOK_BLOCKS[-1] + 1]):
            t = block(t)
            if i in HOOK_BLOCKS:
                hooks.append(t)
        return hooks

    def reassemble(self, hooks: list[Tensor], gh: int, gw: int) -> list[Tensor]:
        """Block outputs -> 4 maps [B, 256|512|1024|1024, H/4|H/8|H/16|H/32, ...]."""
        outs = []
        for level, t in enumerate(hooks, start=1):
            post: nn.Sequential = getattr(self, f"act_postprocess{level}")
            y = post[0](t)  # [B, N, C]
            y = y.transpose(1, 2).reshape(y.shape[0], y.shape[2], gh, gw)  # row-major token grid
            for layer in post[3:]:
                y = layer(y)
            outs.append(y)
        return outs


class ResidualConvUnit(nn.Module):
    """relu -> conv3x3 -> BN -> relu -> conv3x3 -> BN, plus the input. (Registration order = checkpoint order.)"""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x: Tensor) -> Tensor:
        y = self.bn1(self.conv1(F.relu(x)))
        y = self.bn2(self.conv2(F.relu(y)))
        return y + x


class FusionBlock(nn.Module):
    """DPT fusion: x0 (+ RCU1(skip)) -> RCU2 -> bilinear x2 (align_corners=True) -> 1x1 out_conv."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.out_conv = nn.Conv2d(c, c, 1)
        self.resConfUnit1 = ResidualConvUnit(c)
        self.resConfUnit2 = ResidualConvUnit(c)

    def forward(self, x: Tensor, skip: Tensor | None = None) -> Tensor:
        if skip is not None:
            x = x + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        return self.out_conv(x)


class Scratch(nn.Module):
    """`scratch`: DPT decoder and LSeg's 1x1 `head1` to the 512-d CLIP space."""

    def __init__(self) -> None:
        super().__init__()
        self.layer1_rn = nn.Conv2d(256, FEATURES, 3, padding=1, bias=False)
        self.layer2_rn = nn.Conv2d(512, FEATURES, 3, padding=1, bias=False)
        self.layer3_rn = nn.Conv2d(1024, FEATURES, 3, padding=1, bias=False)
        self.layer4_rn = nn.Conv2d(1024, FEATURES, 3, padding=1, bias=False)
        self.refinenet1 = FusionBlock(FEATURES)
        self.refinenet2 = FusionBlock(FEATURES)
        self.refinenet3 = FusionBlock(FEATURES)
        self.refinenet4 = FusionBlock(FEATURES)
        self.head1 = nn.Conv2d(FEATURES, OUT_DIM, 1)


class LSegNet(nn.Module):
    """LSeg image encoder + the CLIP text tower it was trained with. `net(x)`: [B,3,H,W] -> [B,512,H/2,W/2].

    normalization: see `Normalization`. Not part of the state dict.
    Output features are NOT normalised (normalise per pixel before comparing with text features).
    """

    def __init__(self, normalization: Normalization = "none") -> None:
        super().__init__()
        if normalization not in ("none", "half"):
            raise ValueError(f"normalization must be 'none' or 'half', got {normalization!r}")
        self.normalization = normalization
        self.clip_pretrained = build_clip()
        self.pretrained = Backbone()
        self.scratch = Scratch()
        self.eval()

    def forward(self, x: Tensor) -> Tensor:
        """x: [B, 3, H, W] RGB in [0, 1], H and W multiples of 32 -> [B, 512, H/2, W/2]."""
        return self.forward_intermediates(x)[0]

    def forward_intermediates(self, x: Tensor) -> tuple[Tensor, dict[str, object]]:
        """As `forward`, plus {"hooks": 4 block outputs, "layer_rn": 4 maps, "refinenet": {1..4: maps}}."""
        assert x.ndim == 4 and x.shape[1] == 3, x.shape
        H, W = x.shape[2:]
        if H % 32 or W % 32:
            raise ValueError(f"LSeg input height and width must be multiples of 32, got {H}x{W}")
        if self.normalization == "half":
            x = (x - 0.5) / 0.5
        gh, gw = H // PATCH, W // PATCH
        hooks = self.pretrained.tokens(x)
        l1, l2, l3, l4 = self.pretrained.reassemble(hooks, gh, gw)
        s = self.scratch
        rn = [s.layer1_rn(l1), s.layer2_rn(l2), s.layer3_rn(l3), s.layer4_rn(l4)]
        p4 = s.refinenet4(rn[3])
        p3 = s.refinenet3(p4, rn[2])
        p2 = s.refinenet2(p3, rn[1])
        p1 = s.refinenet1(p2, rn[0])
        out = s.head1(p1)
        return out, {"hooks": hooks, "layer_rn": rn, "refinenet": {1: p1, 2: p2, 3: p3, 4: p4}}


def build_on_meta(normalization: Normalization = "none") -> LSegNet:
    """An LSegNet whose parameters live on the meta device (no memory, no init): load with `assign=True`."""
    with torch.device("meta"):
        net = LSegNet(normalization)
    return net


def restore_clip_mask(clip: nn.Module) -> None:
    """Rebuild CLIP's causal mask (a non-persistent buffer a state dict does not carry) after a meta-device build."""
    clip.attn_mask = causal_mask(clip.context_length).to(clip.positional_embedding.device)
