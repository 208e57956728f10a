"""`clip` feature source on a tiny randomly initialised open_clip ViT saved to a local file."""

from __future__ import annotations

import json

import open_clip
import pytest
import torch
import torch.nn.functional as F

from utils.camera import look_at
from utils.errors import UserError
from utils.feature_sources.clip_source import ClipSource, _window_starts, load_open_clip, open_clip_text_encoder
from utils.feature_sources.lseg_source import text_encoder_from_info

MODEL = "tiny-vit-test-clip"
CFG = {
    "embed_dim": 48,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 64, "layers": 3, "width": 64, "patch_size": 16, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    d = tmp_path_factory.mktemp("clipcfg")
    (d / f"{MODEL}.json").write_text(json.dumps(CFG))
    open_clip.add_model_config(d / f"{MODEL}.json")
    torch.manual_seed(0)
    model = open_clip.create_model(MODEL, pretrained=None)
    # random init leaves some parameters at exact zeros/ones; perturb all so every module matters
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    path = d / "tiny.pt"
    torch.save({"state_dict": model.state_dict()}, path)
    return path


def cams(n: int, h: int, w: int):
    return [look_at([0, 0, -3 - i], [0, 0, 0], [0, -1, 0], w, h) for i in range(n)]


def reference_patch_features(model, x: torch.Tensor) -> torch.Tensor:
    """Independent reference through open_clip's own forward: capture the last block's input with a hook, then run
    its attention module with a self-only mask (each token attends to itself => out_proj(v)), ln_post, proj."""
    visual = model.visual
    captured = {}
    handle = visual.transformer.resblocks[-1].register_forward_pre_hook(lambda m, a: captured.setdefault("x", a[0]))
    try:
        visual(x)
    finally:
        handle.remove()
    t = captured["x"]  # [B, N, C] (batch first)
    last = visual.transformer.resblocks[-1]
    y = last.ln_1(t)
    n = y.shape[1]
    self_only = torch.full((n, n), float("-inf")).fill_diagonal_(0.0)
    a = last.attn(y, y, y, need_weights=False, attn_mask=self_only)[0]
    out = visual.ln_post(a[:, 1:]) @ visual.proj
    g = int(round((n - 1) ** 0.5))
    return F.normalize(out, dim=-1).reshape(x.shape[0], g, g, -1)


def test_patch_features_equal_reference(weights):
    src = ClipSource(MODEL, weights)
    assert src.info.space == f"clip:{MODEL}" and src.info.dim == 48 and src.info.name == "clip"
    assert src.info.text_encoder == {"kind": "open_clip", "model": MODEL, "weights": str(weights.resolve())}
    torch.manual_seed(1)
    images = torch.rand(2, 64, 64, 3)
    maps = src(images, cams(2, 64, 64))
    assert len(maps) == 2
    ref = reference_patch_features(src.model, ((images.permute(0, 3, 1, 2) - src.mean) / src.std))
    for i, m in enumerate(maps):
        assert m.features.shape == (4, 4, 48) and m.resize == "bilinear"
        torch.testing.assert_close(m.features.norm(dim=-1), torch.ones(4, 4), atol=1e-5, rtol=0)
        torch.testing.assert_close(m.features, ref[i], atol=1e-5, rtol=1e-4)
    # patches differ from each other and from the pooled embedding direction (not a constant map)
    assert (maps[0].features[0, 0] - maps[0].features[3, 3]).abs().max() > 1e-3


def test_batching_invariance_and_resize(weights):
    src = ClipSource(MODEL, weights, short_side=96)
    assert src.batch_size == 4
    src.batch_size = 2  # what `backproject.py --batch-views 2` does
    assert src.batch_size == 2
    torch.manual_seed(2)
    images = torch.rand(2, 100, 150, 3)  # resized to 96 x 144
    both = src(images, cams(2, 100, 150))
    assert both[0].features.shape == (6, 9, 48)
    for i in range(2):
        single = src(images[i : i + 1], cams(1, 100, 150))[0]
        torch.testing.assert_close(both[i].features, single.features, atol=1e-5, rtol=1e-4)


def test_sliding_windows(weights):
    src = ClipSource(MODEL, weights, short_side=96, window=64, stride=32)
    torch.manual_seed(3)
    images = torch.rand(1, 96, 128, 3)
    f = src(images, cams(1, 96, 128))[0].features
    assert f.shape == (6, 8, 48)
    torch.testing.assert_close(f.norm(dim=-1), torch.ones(6, 8), atol=1e-5, rtol=0)
    # top-left 2x2 patches are covered only by the first window: equal to that window alone
    x = (images.permute(0, 3, 1, 2) - src.mean) / src.std
    ref = reference_patch_features(src.model, x[:, :, :64, :64])[0]
    torch.testing.assert_close(f[:2, :2], ref[:2, :2], atol=1e-5, rtol=1e-4)
    assert _window_starts(96, 64, 32) == [0, 32] and _window_starts(128, 64, 48) == [0, 48, 64]
    with pytest.raises(UserError):
        ClipSource(MODEL, weights, window=40)


def test_text_encoder_and_errors(weights, tmp_path):
    enc = open_clip_text_encoder(MODEL, weights)
    t = enc(["a plant", "a pot"])
    assert t.shape == (2, 48)
    torch.testing.assert_close(t.norm(dim=-1), torch.ones(2), atol=1e-5, rtol=0)
    model = load_open_clip(MODEL, weights)
    ref = F.normalize(model.encode_text(open_clip.get_tokenizer(MODEL)(["a plant", "a pot"])), dim=-1)
    torch.testing.assert_close(t, ref, atol=1e-5, rtol=1e-5)
    info_enc = text_encoder_from_info({"kind": "open_clip", "model": MODEL, "weights": str(weights)})
    torch.testing.assert_close(info_enc(["a plant", "a pot"]), t)
    with pytest.raises(UserError, match="not found"):
        ClipSource(MODEL, tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    torch.save({"visual.proj": torch.zeros(64, 48)}, bad)
    with pytest.raises(UserError, match="Missing key"):
        ClipSource(MODEL, bad)
    with pytest.raises(UserError, match="unknown open_clip model"):
        ClipSource("no-such-model", weights)
    with pytest.raises(UserError):
        text_encoder_from_info({"kind": "rgb"})
