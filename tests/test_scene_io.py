"""Scene loading/saving: round trips in every format, detection, per-rank checkpoints, bad inputs, real .splat."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from utils.errors import UserError
from utils.scene_io import (
    C0,
    detect_format,
    load_scene,
    save_gsplat_checkpoint,
    save_inria_ply,
    save_inria_pth,
    save_scene,
    save_splat,
)
from utils.splats import Splats

SHARED = Path(__file__).parents[1].parent / "shared"
PLANT = SHARED / "data" / "plant" / "plant.splat"


def random_splats(n: int = 257, degree: int = 3, seed: int = 0) -> Splats:
    g = torch.Generator().manual_seed(seed)
    k = (degree + 1) ** 2 - 1
    return Splats(
        means=torch.randn(n, 3, generator=g) * 2,
        quats=torch.randn(n, 4, generator=g),
        scales=torch.randn(n, 3, generator=g) - 3,
        opacities=torch.randn(n, generator=g) * 2,
        sh0=torch.randn(n, 1, 3, generator=g),
        shN=torch.randn(n, k, 3, generator=g) * 0.3,
    )


def assert_same(a: Splats, b: Splats) -> None:
    for k, v in a.fields().items():
        w = getattr(b, k)
        assert v.shape == w.shape, (k, v.shape, w.shape)
        assert torch.equal(v, w), k


# ---------------------------------------------------------------- round trips (exact)


@pytest.mark.parametrize("degree", [0, 1, 3])
@pytest.mark.parametrize("saver,name", [(save_gsplat_checkpoint, "ckpt_99_rank0.pt"), (save_inria_ply, "a.ply"),
                                        (save_inria_pth, "chkpnt7.pth")])
def test_exact_round_trip(tmp_path, saver, name, degree):
    s = random_splats(degree=degree, seed=degree)
    saver(s, tmp_path / name)
    assert_same(s, load_scene(tmp_path / name))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # temp file renamed away


def test_ply_f_rest_is_channel_major(tmp_path):
    """Independent PLY writer: f_rest_i for i = c*K + k holds channel c of coefficient k."""
    n, K = 5, 15
    rng = np.random.default_rng(1)
    shN = rng.normal(size=(n, K, 3)).astype(np.float32)
    names = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"] + [f"f_rest_{i}" for i in range(45)]
    names += ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    rows = np.zeros((n, len(names)), np.float32)
    rows[:, :3] = rng.normal(size=(n, 3))
    rows[:, 59] = 1.0  # rot_0 = w
    for c in range(3):
        for k in range(K):
            rows[:, 9 + c * K + k] = shN[:, k, c]
    hdr = f"ply\nformat binary_little_endian 1.0\nelement vertex {n}\n" + "".join(f"property float {x}\n" for x in names)
    (tmp_path / "m.ply").write_bytes((hdr + "end_header\n").encode() + rows.astype("<f4").tobytes())
    s = load_scene(tmp_path / "m.ply")
    assert s.sh_degree == 3
    assert torch.equal(s.shN, torch.from_numpy(shN))
    assert torch.equal(s.means, torch.from_numpy(rows[:, :3]))
    # and our writer produces the same bytes layout
    save_inria_ply(s, tmp_path / "w.ply")
    data = (tmp_path / "w.ply").read_bytes()
    body = np.frombuffer(data[data.index(b"end_header\n") + 11:], "<f4").reshape(n, len(names))
    assert np.array_equal(body[:, 9:54], rows[:, 9:54])
    assert np.array_equal(body[:, 3:6], np.zeros((n, 3), np.float32))  # nx ny nz


def test_ascii_ply(tmp_path):
    s = random_splats(n=4, degree=1)
    save_inria_ply(s, tmp_path / "b.ply")
    data = (tmp_path / "b.ply").read_bytes()
    i = data.index(b"end_header\n") + 11
    header = data[:i].decode().replace("binary_little_endian", "ascii")
    body = np.frombuffer(data[i:], "<f4").reshape(4, -1)
    text = "\n".join(" ".join(repr(float(x)) for x in row) for row in body) + "\n"
    (tmp_path / "a.ply").write_text(header + text)
    assert_same(s, load_scene(tmp_path / "a.ply"))


def test_inria_pth_with_parameters_and_optimizer_state(tmp_path):
    """A real-looking Inria chkpnt: nn.Parameters, optimizer state dict, float spatial_lr_scale; active degree 1."""
    s = random_splats(n=50, degree=3)
    P = torch.nn.Parameter
    params = [P(s.means.clone()), P(s.sh0.clone()), P(s.shN.clone()), P(s.scales.clone()), P(s.quats.clone()),
              P(s.opacities[:, None].clone())]
    opt = torch.optim.Adam(params, lr=1e-3)
    sum(p.sum() for p in params).backward()
    opt.step()
    mp = (1, params[0], params[1], params[2], params[3], params[4], params[5], torch.zeros(50), torch.zeros(50, 1),
          torch.zeros(50, 1), opt.state_dict(), 2.5)
    torch.save((mp, 30000), tmp_path / "chkpnt30000.pth")
    got = load_scene(tmp_path / "chkpnt30000.pth")
    assert got.sh_degree == 1  # SH beyond the active degree are dropped
    assert torch.equal(got.shN, params[2].detach()[:, :3])
    assert torch.equal(got.means, params[0].detach())
    assert torch.equal(got.opacities, params[5].detach()[:, 0])


def test_splat_round_trip_within_quantisation(tmp_path):
    s = random_splats(n=300, degree=2)
    # keep colours/opacities inside the representable range so only rounding remains
    s.sh0 = s.sh0.clamp(-1.5, 1.5)
    s.opacities = s.opacities.clamp(-4, 4)
    save_splat(s, tmp_path / "x.splat")
    assert (tmp_path / "x.splat").stat().st_size == 32 * 300
    t = load_scene(tmp_path / "x.splat")
    assert t.sh_degree == 0 and t.shN.shape == (300, 0, 3)
    assert torch.equal(t.means, s.means)
    assert torch.allclose(t.scales, s.scales, atol=1e-6)  # f32 exp/log
    rgb_s, rgb_t = s.sh0 * C0 + 0.5, t.sh0 * C0 + 0.5
    assert (rgb_s - rgb_t).abs().max() <= 0.5 / 255 + 1e-6
    a_s, a_t = torch.sigmoid(s.opacities), torch.sigmoid(t.opacities)
    assert (a_s - a_t).abs().max() <= 0.5 / 255 + 1e-4
    qs = s.quats / s.quats.norm(dim=1, keepdim=True)
    qt = t.quats / t.quats.norm(dim=1, keepdim=True)
    assert (qs * qt).sum(1).abs().min() > 0.999  # same rotation up to byte rounding


def test_splat_independent_decode(tmp_path):
    """Hand-packed records decode per the antimatter15 spec (incl. opacity 0/255 staying finite)."""
    recs = [((1.0, 2.0, 3.0), (0.5, 1.0, 2.0), (255, 0, 128, 0), (255, 128, 128, 128)),
            ((0.0, 0.0, 0.0), (1e-3, 1e-3, 1e-3), (10, 20, 30, 255), (128, 128, 128, 128))]
    b = b"".join(struct.pack("<6f8B", *p, *sc, *rgba, *rot) for p, sc, rgba, rot in recs)
    (tmp_path / "h.splat").write_bytes(b)
    s = load_scene(tmp_path / "h.splat")
    assert torch.allclose(s.scales[0], torch.log(torch.tensor([0.5, 1.0, 2.0])))
    assert torch.allclose(s.sh0[0, 0], (torch.tensor([255, 0, 128]) / 255 - 0.5) / C0, atol=1e-6)
    assert torch.isfinite(s.opacities).all()
    assert torch.sigmoid(s.opacities[0]) < 1e-3 and torch.sigmoid(s.opacities[1]) > 0.999
    assert torch.allclose(s.quats[0], torch.tensor([1.0, 0, 0, 0]), atol=1e-6)
    assert torch.equal(s.quats[1], torch.tensor([1.0, 0, 0, 0]))  # zero quaternion -> identity


# ---------------------------------------------------------------- gsplat multi-rank, detection, override


def test_per_rank_concatenation(tmp_path):
    parts = [random_splats(n=n, degree=3, seed=i) for i, n in enumerate([10, 7, 12])]
    for r, p in enumerate(parts):
        save_gsplat_checkpoint(p, tmp_path / f"ckpt_6999_rank{r}.pt", step=6999)
    save_gsplat_checkpoint(parts[0], tmp_path / "ckpt_999_rank0.pt", step=999)  # an older step, ignored
    expect = Splats(**{k: torch.cat([getattr(p, k) for p in parts]) for k in parts[0].fields()})
    assert_same(expect, load_scene(tmp_path / "ckpt_6999_rank1.pt"))  # any rank file finds its siblings
    assert_same(expect, load_scene(tmp_path))  # directory: highest step
    assert_same(expect, load_scene(str(tmp_path / "ckpt_6999_rank*.pt")))  # glob
    assert_same(parts[0], load_scene(tmp_path / "ckpt_999_rank0.pt"))
    (tmp_path / "ckpt_6999_rank1.pt").unlink()
    with pytest.raises(UserError, match=r"not contiguous from 0 \(found ranks \[0, 2\]\)"):
        load_scene(tmp_path / "ckpt_6999_rank0.pt")


def test_ckpts_subdir(tmp_path):
    s = random_splats(n=9)
    save_gsplat_checkpoint(s, tmp_path / "ckpts" / "ckpt_29999_rank0.pt")
    assert_same(s, load_scene(tmp_path))


def test_format_detection_by_content_and_override(tmp_path):
    s = random_splats(n=32, degree=1)
    # misleading extensions: content wins
    save_inria_ply(s, tmp_path / "scene.splat")
    save_gsplat_checkpoint(s, tmp_path / "scene.ply.bak")
    save_inria_pth(s, tmp_path / "scene.pt")
    assert detect_format(tmp_path / "scene.splat") == "ply"
    assert detect_format(tmp_path / "scene.ply.bak") == "gsplat"
    assert detect_format(tmp_path / "scene.pt") == "inria-pth"
    assert_same(s, load_scene(tmp_path / "scene.splat"))
    assert_same(s, load_scene(tmp_path / "scene.ply.bak"))
    assert_same(s, load_scene(tmp_path / "scene.pt"))
    # .splat has no magic: the extension decides; an override reads any file as .splat
    save_splat(s, tmp_path / "raw.bin")
    with pytest.raises(UserError, match=r"raw\.bin: unknown scene format"):
        load_scene(tmp_path / "raw.bin")
    assert load_scene(tmp_path / "raw.bin", format="splat").num == 32
    # override contradicting the content
    with pytest.raises(UserError, match=r"scene\.pt: holds a inria-pth checkpoint, not gsplat"):
        load_scene(tmp_path / "scene.pt", format="gsplat")
    with pytest.raises(UserError, match=r"raw\.bin: not a PLY file"):
        load_scene(tmp_path / "raw.bin", format="ply")
    with pytest.raises(UserError, match=r"unknown format 'obj'"):
        load_scene(tmp_path / "raw.bin", format="obj")
    # save_scene picks the format from the extension
    save_scene(s, tmp_path / "o.pth")
    assert detect_format(tmp_path / "o.pth") == "inria-pth"


def test_app_opt_refused(tmp_path):
    n = 5
    sp = {"means": torch.zeros(n, 3), "quats": torch.ones(n, 4), "scales": torch.zeros(n, 3),
          "opacities": torch.zeros(n), "features": torch.zeros(n, 32), "colors": torch.zeros(n, 3)}
    torch.save({"step": 10, "splats": sp}, tmp_path / "ckpt_10_rank0.pt")
    with pytest.raises(UserError, match=r"ckpt_10_rank0\.pt: gsplat checkpoint trained with --app_opt.*not supported yet"):
        load_scene(tmp_path / "ckpt_10_rank0.pt")


# ---------------------------------------------------------------- bad inputs


def one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match=r"nope\.ply: file not found") as e:
        load_scene(tmp_path / "nope.ply")
    one_line(e)


def test_truncated_checkpoint(tmp_path):
    save_gsplat_checkpoint(random_splats(n=200), tmp_path / "full.pt")
    data = (tmp_path / "full.pt").read_bytes()
    (tmp_path / "half.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match=r"half\.pt: corrupt or truncated checkpoint") as e:
        load_scene(tmp_path / "half.pt")
    one_line(e)


def test_truncated_ply_and_splat(tmp_path):
    save_inria_ply(random_splats(n=20), tmp_path / "a.ply")
    data = (tmp_path / "a.ply").read_bytes()
    (tmp_path / "t.ply").write_bytes(data[:-7])
    with pytest.raises(UserError, match=r"t\.ply: truncated PLY"):
        load_scene(tmp_path / "t.ply")
    (tmp_path / "t.splat").write_bytes(b"\0" * 33)
    with pytest.raises(UserError, match=r"t\.splat: size 33 bytes is not a positive multiple of 32"):
        load_scene(tmp_path / "t.splat")
    (tmp_path / "e.splat").write_bytes(b"")
    with pytest.raises(UserError, match=r"e\.splat: file is empty"):
        load_scene(tmp_path / "e.splat")


def test_wrong_format(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(UserError, match=r"notes\.txt: unknown scene format"):
        load_scene(tmp_path / "notes.txt")
    (tmp_path / "fake.pt").write_text("hello")
    with pytest.raises(UserError, match=r"fake\.pt: corrupt or truncated checkpoint"):
        load_scene(tmp_path / "fake.pt")
    torch.save({"model": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(UserError, match=r"other\.pt: torch file is neither a gsplat checkpoint"):
        load_scene(tmp_path / "other.pt")
    # a mesh PLY
    (tmp_path / "mesh.ply").write_bytes(b"ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\nproperty float y\n"
                                        b"property float z\nend_header\n0 0 0\n")
    with pytest.raises(UserError, match=r"mesh\.ply: not an Inria 3DGS PLY: missing vertex properties \['f_dc_0'"):
        load_scene(tmp_path / "mesh.ply")


class Custom:  # module level so pickle can save it; weights_only loading must refuse it
    pass


def test_weights_only_refusal(tmp_path):
    torch.save({"step": 1, "splats": {"means": Custom()}}, tmp_path / "obj.pt")
    with pytest.raises(UserError, match=r"obj\.pt: holds objects that cannot be loaded safely with weights_only=True"):
        load_scene(tmp_path / "obj.pt")


def test_missing_keys(tmp_path):
    sp = random_splats(n=4).fields()
    del sp["quats"]
    torch.save({"step": 0, "splats": sp}, tmp_path / "m.pt")
    with pytest.raises(UserError, match=r"m\.pt: not a gsplat checkpoint: missing keys \['quats'\]"):
        load_scene(tmp_path / "m.pt")


def test_mismatched_counts(tmp_path):
    sp = random_splats(n=4).fields()
    sp["opacities"] = torch.zeros(3)
    torch.save({"step": 0, "splats": sp}, tmp_path / "c.pt")
    with pytest.raises(UserError, match=r"c\.pt: mismatched per-Gaussian counts across fields \(means 4, .*opacities 3"):
        load_scene(tmp_path / "c.pt")
    sp = random_splats(n=4).fields()
    sp["shN"] = torch.zeros(4, 5, 3)  # not a valid SH count
    torch.save({"step": 0, "splats": sp}, tmp_path / "k.pt")
    with pytest.raises(UserError, match=r"k\.pt: .*shN has 5 coefficients"):
        load_scene(tmp_path / "k.pt")


@pytest.mark.parametrize("fmt,name", [("gsplat", "n.pt"), ("ply", "n.ply"), ("inria-pth", "n.pth")])
def test_nan_parameters(tmp_path, fmt, name):
    s = random_splats(n=10)
    s.scales[3, 1] = float("nan")
    s.scales[7, 0] = float("inf")
    save_scene(s, tmp_path / name, format=fmt)
    with pytest.raises(UserError, match=rf"{name.replace('.', '[.]')}: scales contains NaN/inf values in 2 Gaussians"):
        load_scene(tmp_path / name)


def test_nan_in_splat(tmp_path):
    s = random_splats(n=10, degree=0)
    s.means[2, 0] = float("nan")
    save_splat(s, tmp_path / "n.splat")
    with pytest.raises(UserError, match=r"n\.splat: means contains NaN/inf values in 1 Gaussians"):
        load_scene(tmp_path / "n.splat")


# ---------------------------------------------------------------- real data


@pytest.mark.skipif(not PLANT.exists(), reason="shared plant data not available")
def test_real_plant_splat():
    s = load_scene(PLANT)
    assert s.num == 113_648 and s.sh_degree == 0
    for k, v in s.fields().items():
        assert torch.isfinite(v).all(), k
    scales = s.scales.exp()
    assert (scales > 0).all() and scales.median() < 0.05 * (s.means.max(0).values - s.means.min(0).values).max()
    # meta.json: extent [0.5172, 1.0, 0.6098] (y is the long/up axis)
    ext = s.means.max(0).values - s.means.min(0).values
    assert torch.allclose(ext, torch.tensor([0.5172, 1.0, 0.6098]), atol=2e-3)
    rgb = s.sh0[:, 0] * C0 + 0.5
    assert (rgb >= -1e-6).all() and (rgb <= 1 + 1e-6).all()
    q = s.quats.norm(dim=1)
    assert ((q - 1).abs() < 1e-6).all()
    a = torch.sigmoid(s.opacities)
    assert 0.05 < a.mean() < 0.95
    # save as .splat again: same records up to float32 exp/log and quaternion re-normalisation
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        save_splat(s, os.path.join(d, "p.splat"))
        dt = np.dtype([("pos", "<f4", 3), ("scale", "<f4", 3), ("rgba", "u1", 4), ("rot", "u1", 4)])
        new, ref = np.fromfile(Path(d, "p.splat"), dt), np.fromfile(PLANT, dt)
    assert np.array_equal(new["pos"], ref["pos"])
    assert np.array_equal(new["rgba"], ref["rgba"])
    # the loader normalises the byte quaternion, so re-encoding may move a byte by one step
    assert np.abs(new["rot"].astype(int) - ref["rot"].astype(int)).max() <= 1
    assert np.allclose(new["scale"], ref["scale"], rtol=1e-6, atol=0)  # exp(log(x)) in float32
