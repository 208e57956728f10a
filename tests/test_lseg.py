"""LSeg network: checkpoint layout, strict loading, forward against the shared fixture, text encoding."""

from __future__ import annotations

import argparse
import fractions
import json
import socket
import sys
from pathlib import Path

import pytest
import torch

from lseg import LSegNet, encode_text, load_lseg, load_lseg_text, text_features, tokenize
from lseg import text as lseg_text
from lseg.checkpoint import read_state_dict
from lseg.net import build_on_meta
from utils.camera import look_at
from utils.errors import UserError
from utils.feature_sources.lseg_source import LSegSource, model_input_size, text_encoder_from_info

SHARED = Path(__file__).parents[1].parent / "shared"
KEYS_JSON = SHARED / "lseg" / "lseg_keys.json"
FIXTURE = SHARED / "lseg" / "lseg_fixture.pt"

sys.path.insert(0, str(Path(__file__).parent))
import lseg_recipe  # noqa: E402


@pytest.fixture(scope="module")
def keys() -> list[list]:
    return json.loads(KEYS_JSON.read_text())


@pytest.fixture(scope="module")
def fixture() -> dict:
    return torch.load(FIXTURE, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def random_net() -> LSegNet:
    torch.manual_seed(0)
    return LSegNet()


# First in the file: runs before the module-scoped random_net exists (peak memory).
@pytest.mark.slow
def test_fixture_forward_and_text(tmp_path, keys, fixture):
    """Regenerate the 495M weights (REFERENCE §5), check every sha256, load through `load_lseg`, compare outputs."""
    torch.set_num_threads(2)
    inp = lseg_recipe.fixture_input()
    assert lseg_recipe.sha256_of(inp) == fixture["input_sha256_f32"]
    assert torch.equal(inp, fixture["input"])
    sd = lseg_recipe.state_dict(keys)
    bad = [k for k, v in sd.items() if lseg_recipe.sha256_of(v) != fixture["weight_sha256_f32"][k]]
    assert not bad, bad[:5]
    path = tmp_path / "lseg_minimal_e200.ckpt"
    torch.save(sd, path)
    del sd  # the loaded net maps the file instead
    net = load_lseg(path)

    with torch.inference_mode():
        out, inter = net.forward_intermediates(inp)
    img = dict(atol=1e-3, rtol=1e-4)
    assert list(out.shape) == fixture["out_shape"].tolist()
    torch.testing.assert_close(out[:, :, ::8, ::8], fixture["out_stride8"], **img)
    torch.testing.assert_close(out.norm(dim=1), fixture["out_pixel_norm"], **img)
    torch.testing.assert_close(out.mean(dim=(2, 3)), fixture["out_channel_mean"], **img)
    torch.testing.assert_close(out[:, :, 112:128, 112:128], fixture["out_center_crop"], **img)
    for i, h in enumerate(inter["hooks"], start=1):
        torch.testing.assert_close(h[:, ::15], fixture["hook_tokens_stride15"][str(i)], **img)
    for i, m in enumerate(inter["layer_rn"], start=1):
        torch.testing.assert_close(m[:, :, ::4, ::4], fixture["layer_rn_stride"][f"layer{i}_rn"], **img)
    for i, p in inter["refinenet"].items():
        assert list(p.shape) == fixture["refinenet_shapes"][f"refinenet{i}"].tolist()
        torch.testing.assert_close(p.mean(dim=(2, 3)), fixture["refinenet_out_mean"][f"refinenet{i}"], **img)

    tokens = tokenize(fixture["prompts"])
    assert torch.equal(tokens, fixture["text_tokens"])
    torch.testing.assert_close(text_features(net, tokens), fixture["text_features"], atol=1e-4, rtol=0)
    unit = fixture["text_features"] / fixture["text_features"].norm(dim=-1, keepdim=True)
    torch.testing.assert_close(encode_text(net, fixture["prompts"]), unit, atol=1e-5, rtol=0)
    clip = load_lseg_text(path)
    torch.testing.assert_close(text_features(clip, tokens), fixture["text_features"], atol=1e-4, rtol=0)

    # The feature source: resized render -> unit features; the text encoder a features file records.
    src = LSegSource(path, short_side=480)
    render = inp[0].permute(1, 2, 0)[:448, :448].clamp(0, 1)  # 448 x 448 -> resized to 480 x 480
    fmap = src(render[None], [look_at([0, 0, -3], [0, 0, 0], [0, -1, 0], 448, 448)])[0]
    x = torch.nn.functional.interpolate(
        render.permute(2, 0, 1)[None], size=(480, 480), mode="bilinear", align_corners=False, antialias=True
    )
    with torch.inference_mode():
        want = net(x)[0].permute(1, 2, 0)
    torch.testing.assert_close(fmap.features, want / want.norm(dim=-1, keepdim=True), atol=1e-5, rtol=1e-4)
    del src
    encode = text_encoder_from_info({"kind": "lseg", "checkpoint": str(path)})
    torch.testing.assert_close(encode(fixture["prompts"]), unit, atol=1e-5, rtol=0)

    # The comparison is sharp: the other input normalisation is far outside the tolerance.
    net.normalization = "half"
    with torch.inference_mode():
        other = net(inp)
    assert (other[:, :, ::8, ::8] - fixture["out_stride8"]).abs().max() > 0.1


def test_state_dict_layout_equals_checkpoint(keys):
    sd = build_on_meta().state_dict()
    assert len(keys) == 730
    assert list(sd) == [k for k, _, _ in keys]  # same keys, same order
    for k, shape, dtype in keys:
        assert list(sd[k].shape) == shape, k
        assert (sd[k].dtype == torch.int64) == (dtype == "int64"), k  # fp16 keys are stored fp32 in the model


def test_clip_text_tower_is_quickgelu(random_net):
    acts = {type(m).__name__ for m in random_net.clip_pretrained.transformer.modules()}
    assert "QuickGELU" in acts and "GELU" not in acts


def test_read_state_dict_variants(tmp_path):
    w = torch.arange(6, dtype=torch.float32).reshape(2, 3) / 7
    variants = {
        "raw.pt": {"a.b": w},
        "wrapped.pt": {"state_dict": {"a.b": w}, "epoch": 3},
        "prefixed.pt": {"state_dict": {"net.a.b": w}},
        "half.pt": {"net.a.b": w.half()},
        "lightning.ckpt": {"state_dict": {"net.a.b": w}, "hyper_parameters": argparse.Namespace(lr=1e-4)},
    }
    for name, obj in variants.items():
        torch.save(obj, tmp_path / name)
        sd = read_state_dict(tmp_path / name)
        assert list(sd) == ["a.b"], name
        assert sd["a.b"].dtype == torch.float32, name
        tol = 1e-3 if name == "half.pt" else 0.0
        torch.testing.assert_close(sd["a.b"], w, atol=tol, rtol=0), name
    (tmp_path / "garbage.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="garbage.ckpt: cannot read"):
        read_state_dict(tmp_path / "garbage.ckpt")
    torch.save({"state_dict": {"a.b": w}, "obj": fractions.Fraction(1, 3)}, tmp_path / "unsafe.ckpt")
    with pytest.raises(UserError, match="fractions.Fraction"):
        read_state_dict(tmp_path / "unsafe.ckpt")


@pytest.fixture(scope="module")
def const_ckpt(tmp_path_factory, keys) -> Path:
    """The real file's dtypes (195 fp16 tensors) under `state_dict` with `net.` keys; every key its own constant."""
    sd = {}
    for i, (k, shape, dtype) in enumerate(keys):
        dt = {"float32": torch.float32, "float16": torch.float16, "int64": torch.int64}[dtype]
        # a broadcast scalar: torch.save stores one element per key, keeping the file tiny
        sd["net." + k] = torch.tensor(i if dt == torch.int64 else (i % 97) / 64, dtype=dt).expand(shape)
    path = tmp_path_factory.mktemp("lseg") / "lseg_minimal_e200.ckpt"
    torch.save({"state_dict": sd, "epoch": 200}, path)
    return path


def test_load_lseg_strict_fp16_wrapped_prefixed(const_ckpt, keys):
    path = const_ckpt
    net = load_lseg(path)
    got = net.state_dict()
    assert list(got) == [k for k, _, _ in keys]
    for i, (k, _, dtype) in enumerate(keys):
        t = got[k]
        assert t.dtype == (torch.int64 if dtype == "int64" else torch.float32), k
        want = i if dtype == "int64" else (i % 97) / 64
        assert t.flatten()[0].item() == want and t.min() == t.max(), k
    assert not net.training
    mask = net.clip_pretrained.attn_mask
    assert mask.shape == (77, 77) and torch.isinf(mask[0, 1]) and mask[1, 0] == 0

    clip = load_lseg_text(path)  # only the clip_pretrained.* part
    for k, v in clip.state_dict().items():
        assert torch.equal(v, got["clip_pretrained." + k]), k


def test_model_input_size():
    assert model_input_size(480, 480, 480) == (480, 480)
    assert model_input_size(420, 648, 480) == (480, 736)  # 740.6 -> nearest multiple of 32
    assert model_input_size(1080, 720, 480) == (704, 480)
    assert model_input_size(10, 1000, 32) == (32, 3200)


def test_lseg_source_shapes_and_info(const_ckpt, random_net):
    src = LSegSource(const_ckpt, short_side=64)
    assert src.info.name == "lseg" and src.info.space == "clip:ViT-B-32-quickgelu" and src.info.dim == 512
    assert src.info.text_encoder == {"kind": "lseg", "checkpoint": str(const_ckpt.resolve())}
    assert src.batch_size == 1  # CPU default
    src.batch_size = 2  # what `backproject.py --batch-views 2` does
    assert src.batch_size == 2
    src.net = random_net  # constant weights give degenerate features; check the resize/normalise path on random ones
    cams = [look_at([0, 0, -3], [0, 0, 0], [0, -1, 0], 150, 100) for _ in range(2)]
    torch.manual_seed(4)
    images = torch.rand(2, 100, 150, 3)
    maps = src(images, cams)  # -> model input 64 x 96 -> features 32 x 48
    x = torch.nn.functional.interpolate(
        images.permute(0, 3, 1, 2), size=(64, 96), mode="bilinear", align_corners=False, antialias=True
    )
    with torch.inference_mode():
        want = random_net(x).permute(0, 2, 3, 1)
    want = want / want.norm(dim=-1, keepdim=True)
    assert len(maps) == 2
    for m, w in zip(maps, want):
        assert m.features.shape == (32, 48, 512) and m.resize == "bilinear" and m.features.dtype == torch.float32
        torch.testing.assert_close(m.features, w, atol=1e-5, rtol=1e-4)
    with pytest.raises(UserError, match="multiple of 32"):
        LSegSource(const_ckpt, short_side=100)


def test_load_lseg_missing_file(tmp_path):
    with pytest.raises(UserError, match=r"lseg_minimal_e200\.ckpt.*checkpoints/"):
        load_lseg(tmp_path / "nope.ckpt")


def test_load_lseg_wrong_keys(tmp_path, keys):
    path = tmp_path / "bad.ckpt"
    torch.save({"clip_pretrained.positional_embedding": torch.zeros(77, 512), "foo.bar": torch.zeros(1)}, path)
    with pytest.raises(UserError, match=r"729 missing .*1 unexpected \(e\.g\. foo\.bar\)"):
        load_lseg(path)
    torch.save([1, 2], path)
    with pytest.raises(UserError, match="not a state dict"):
        load_lseg(path)


def test_forward_shapes_and_normalization(random_net):
    torch.manual_seed(1)
    x = torch.rand(2, 3, 64, 96)  # non-square
    with torch.inference_mode():
        out = random_net(x)
        assert out.shape == (2, 512, 32, 48)
        assert torch.isfinite(out).all()
        single = random_net(x[1:])
        torch.testing.assert_close(out[1:], single, atol=1e-4, rtol=1e-4)
        random_net.normalization = "half"
        try:
            half = random_net(x[:1])
        finally:
            random_net.normalization = "none"
        torch.testing.assert_close(half, random_net(2 * x[:1] - 1), atol=1e-5, rtol=1e-5)
        assert (half - out[:1]).abs().max() > 1e-2
    with pytest.raises(ValueError, match="multiples of 32"):
        random_net(torch.rand(1, 3, 48, 64))
    with pytest.raises(ValueError):
        LSegNet(normalization="imagenet")


def test_tokenizer_offline_matches_fixture(fixture, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("tokenizer tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    lseg_text._tokenizer.cache_clear()
    tokens = tokenize(fixture["prompts"])
    assert tokens.dtype == torch.int64
    assert torch.equal(tokens, fixture["text_tokens"])
    long = tokenize(["a " * 200])
    assert long.shape == (1, 77) and long[0, -1] == 49407 and long[0, 0] == 49406


def test_encode_text_unit(random_net):
    f = encode_text(random_net, ["a plant", "a pot", "other"])
    assert f.shape == (3, 512) and f.dtype == torch.float32
    torch.testing.assert_close(f.norm(dim=-1), torch.ones(3), atol=1e-5, rtol=0)
    raw = text_features(random_net, tokenize(["a plant", "a pot", "other"]))
    torch.testing.assert_close(f, raw / raw.norm(dim=-1, keepdim=True))
    assert (f[0] - f[1]).abs().max() > 1e-3
