"""`dino` feature source on a randomly initialised timm DINOv2 ViT-S/14 saved to a local file."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F

from utils.camera import look_at
from utils.errors import UserError
from utils.feature_sources.dino_source import DinoSource

MODEL = "vit_small_patch14_dinov2"


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    torch.manual_seed(0)
    model = timm.create_model(MODEL, pretrained=False)
    path = tmp_path_factory.mktemp("dino") / "dino.pt"
    torch.save(model.state_dict(), path)
    return path


def cams(n, h, w):
    return [look_at([0, 0, -3 - i], [0, 0, 0], [0, -1, 0], w, h) for i in range(n)]


def test_dino_features_shapes_reference_batching(weights):
    src = DinoSource(MODEL, weights, short_side=112)
    assert src.info.name == "dino" and src.info.space == f"dino:{MODEL}" and src.info.dim == 384
    assert src.info.text_encoder is None
    assert src.batch_size == 2
    src.batch_size = 3  # what `backproject.py --batch-views 3` does
    assert src.batch_size == 3
    torch.manual_seed(1)
    images = torch.rand(2, 100, 150, 3)  # -> 112 x 168 -> 8 x 12 patches
    maps = src(images, cams(2, 100, 150))
    x = F.interpolate(images.permute(0, 3, 1, 2), size=(112, 168), mode="bicubic", align_corners=False,
                      antialias=True).clamp(0, 1)
    x = (x - src.mean) / src.std
    with torch.inference_mode():  # timm's own dense path: last layer, final norm, reshaped to the grid
        ref = src.model.get_intermediate_layers(x, n=1, reshape=True, norm=True)[0]
    ref = F.normalize(ref.permute(0, 2, 3, 1), dim=-1)
    for i, m in enumerate(maps):
        assert m.features.shape == (8, 12, 384) and m.resize == "bilinear"
        torch.testing.assert_close(m.features, ref[i], atol=1e-5, rtol=1e-4)
        single = src(images[i : i + 1], cams(1, 100, 150))[0]
        torch.testing.assert_close(m.features, single.features, atol=1e-5, rtol=1e-4)


def test_dino_errors(weights, tmp_path):
    with pytest.raises(UserError, match="not found"):
        DinoSource(MODEL, tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    torch.save({"foo": torch.zeros(2)}, bad)
    with pytest.raises(UserError, match="does not match"):
        DinoSource(MODEL, bad)
    with pytest.raises(UserError, match="unknown timm model"):
        DinoSource("no_such_model", weights)
