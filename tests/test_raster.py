"""CPU rasterizer vs the independent float64 reference (tests/reference_raster.py), contributions, backends, real data.

Tolerances: colours/features/alpha max abs error <= 1e-5; depth ("D", sum w z) <= 1e-5 * (largest scene depth)
since float32 weights carry ~1e-6 relative rounding that depth multiplies by z. Pixels flagged `ambiguous` by the
reference (an alpha within 1e-5 relative of 1/255, a T_next within 1e-4 relative of 1e-4, float32 depth-order
ties, borderline culls) are excluded, and the test asserts they are rare so it cannot pass vacuously.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from reference_raster import ref_render, ref_sh_colors

from utils.camera import Camera, look_at
from utils.errors import UserError
from utils.projection import project
from utils.raster_cpu import bin_tiles, pixel_contributions, pixel_weights, rasterize, rasterize_store
from utils.render import Contributions, render, render_contributions
from utils.splats import Splats

SHARED = Path(__file__).parents[1].parent / "shared"
ATOL = 1e-5
# Real scenes (600-px images, world coordinates far from the camera, tens of overlapping Gaussians per pixel):
# float32 means2d alone carry ~3e-5 px of rounding and T is a product over many factors, so a float32 rasterizer
# (gsplat's CUDA one included) is ~1e-5 from exact maths. Measured max 1.2e-5 on the garden views.
ATOL_REAL = 3e-5


def _cat(*splats: Splats) -> Splats:
    return Splats(**{k: torch.cat([getattr(s, k) for s in splats]) for k in splats[0].fields()})


def _block(g: torch.Generator, n: int, center, spread: float, log_scale: float, log_scale_std: float,
           logit_mean: float, logit_std: float, K: int) -> Splats:  # fmt: skip
    return Splats(
        means=torch.tensor(center, dtype=torch.float32) + torch.randn(n, 3, generator=g) * spread,
        quats=torch.randn(n, 4, generator=g),
        scales=torch.randn(n, 3, generator=g) * log_scale_std + log_scale,
        opacities=torch.randn(n, generator=g) * logit_std + logit_mean,
        sh0=torch.randn(n, 1, 3, generator=g) * 0.6,
        shN=torch.randn(n, K, 3, generator=g) * 0.2,
    )


def make_scene(seed: int, n: int, degree: int = 0) -> tuple[Splats, Camera]:
    """A random scene around the origin seen from z = -5, plus the special cases every test should meet:
    Gaussians behind the camera, just before the near plane (culled), off-screen, huge, tiny, a stack of
    near-opaque ones (T reaches 1e-4) and an exact duplicate pair (depth tie)."""
    g = torch.Generator().manual_seed(seed)
    K = (degree + 1) ** 2 - 1
    eye = torch.tensor([0.3, -0.2, -5.0])
    fwd = -eye / eye.norm()
    parts = [
        _block(g, n, [0, 0, 0], 1.0, -2.4, 0.35, 0.0, 2.0, K),  # bulk
        _block(g, 3, [0, 0, -8], 0.5, -2.0, 0.2, 2.0, 0.5, K),  # behind the camera (camera at z = -5)
        _block(g, 2, (eye + 0.005 * fwd).tolist(), 0.0002, -6.0, 0.1, 1.0, 0.5, K),  # z ~ 0.005 < near: culled
        _block(g, 4, [30, 0, 0], 1.0, -2.0, 0.2, 2.0, 0.5, K),  # off-screen
        _block(g, 2, [0.2, -0.1, 0.5], 0.2, 0.2, 0.1, -2.0, 0.3, K),  # huge, faint
        _block(g, 6, [0.1, 0.1, -0.5], 0.3, -7.0, 0.5, 3.0, 0.5, K),  # tiny (sub-pixel: eps2d dominates)
        _block(g, 12, [-0.3, 0.2, -1.0], 0.25, -1.6, 0.2, 7.0, 0.5, K),  # near-opaque stack: T hits 1e-4
    ]
    s = _cat(*parts)
    dup = s.subset(torch.tensor([5, 5]))  # identical twins: same depth, different colours
    dup.sh0 = dup.sh0.clone()
    dup.sh0[1] = -dup.sh0[1]
    dup.opacities = torch.zeros(2)
    return _cat(s, dup), look_at(eye.tolist(), [0, 0, 0], [0, -1, 0], 64, 48, fov_y_deg=50.0)


def _camera(cam: Camera, width: int, height: int, dcx: float, dcy: float) -> Camera:
    K = cam.K.clone()
    K[0, 2] = width / 2 + dcx
    K[1, 2] = height / 2 + dcy
    return Camera(cam.viewmat, K, width, height)


def _pixel_lists(c: Contributions, pixels: np.ndarray):
    off = c.offsets.numpy()
    g, w = c.gaussian.numpy(), c.weight.numpy()
    return [(g[off[p] : off[p + 1]], w[off[p] : off[p + 1]]) for p in pixels]


@dataclass
class Case:
    seed: int
    n: int
    colors: str  # "sh0".."sh3" or "feat7", "feat64"
    mode: str
    background: bool
    width: int
    height: int
    dcx: float
    dcy: float


CASES = [
    Case(0, 150, "sh0", "classic", False, 64, 48, 0.0, 0.0),
    Case(1, 300, "sh1", "antialiased", True, 48, 64, 5.5, -3.25),
    Case(2, 300, "sh2", "classic", True, 57, 33, -7.0, 4.0),
    Case(3, 200, "sh3", "antialiased", False, 64, 40, 10.0, 10.0),
    Case(4, 250, "feat7", "classic", True, 40, 56, -3.0, 0.0),
    Case(5, 250, "feat64", "antialiased", True, 64, 48, 0.0, -6.0),
    Case(6, 400, "feat64", "classic", False, 33, 17, 2.0, 1.0),
]


def _colors(case: Case, s: Splats, cam: Camera) -> tuple[torch.Tensor | None, int, np.ndarray]:
    """(features passed to render or None for SH, sh degree, float64 reference colours)."""
    if case.colors.startswith("sh"):
        deg = int(case.colors[2:])
        return None, deg, ref_sh_colors(s, cam, deg)
    D = int(case.colors[4:])
    f = torch.randn(s.num, D, generator=torch.Generator().manual_seed(case.seed + 100))
    return f, 0, f.double().numpy()


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.colors}-{c.mode}-{c.width}x{c.height}-bg{int(c.background)}")
def test_matches_reference(case: Case) -> None:
    s, cam0 = make_scene(case.seed, case.n, int(case.colors[2:]) if case.colors.startswith("sh") else 0)
    cam = _camera(cam0, case.width, case.height, case.dcx, case.dcy)
    feats, deg, ref_cols = _colors(case, s, cam)
    D = ref_cols.shape[1]
    bg = torch.linspace(0.2, 0.9, D) if case.background else None
    out = render(s, cam, features=feats, sh_degree=None if feats is not None else deg, background=bg,
                 render_mode="RGB+D", rasterize_mode=case.mode, return_contributions=True, backend="cpu")  # fmt: skip
    ref = ref_render(s, cam, ref_cols, background=bg, rasterize_mode=case.mode)
    ok = ~ref.ambiguous
    assert ok.mean() > 0.97, f"too many ambiguous pixels: {(~ok).sum()}"
    HW = case.width * case.height
    col = out.colors.reshape(HW, D).double().numpy()
    alpha = out.alpha.reshape(HW).double().numpy()
    depth = out.depth.reshape(HW).double().numpy()
    assert np.abs(col - ref.colors)[ok].max() <= ATOL
    assert np.abs(alpha - ref.alpha)[ok].max() <= ATOL
    zmax = 8.0
    assert np.abs(depth - ref.depth)[ok].max() <= ATOL * zmax
    # The scene must exercise what it claims: opaque pixels (the T stop rule) and partial coverage.
    assert (ref.alpha[ok] > 0.999).any() and ((ref.alpha > 0.2) & (ref.alpha < 0.8)).any()
    # Weights: same Gaussians in the same (front-to-back) order, values within ATOL.
    ours = _pixel_lists(out.contributions, np.arange(HW))
    for p in np.flatnonzero(ok):
        gi, wi = ours[p]
        gr, wr = ref.weights[p]
        assert np.array_equal(gi, gr), (p, gi, gr)
        assert np.abs(wi - wr).max(initial=0.0) <= ATOL


@pytest.mark.parametrize("mode", ["RGB", "D", "ED", "RGB+D", "RGB+ED"])
def test_render_modes(mode: str) -> None:
    s, cam = make_scene(11, 200)
    full = render(s, cam, render_mode="RGB+D", backend="cpu")
    out = render(s, cam, render_mode=mode, backend="cpu")
    torch.testing.assert_close(out.alpha, full.alpha, rtol=0, atol=0)
    if "RGB" in mode:
        torch.testing.assert_close(out.colors, full.colors, rtol=0, atol=0)
    else:
        assert out.colors is None
    if mode == "RGB":
        assert out.depth is None
    elif mode.endswith("ED"):
        torch.testing.assert_close(out.depth, full.depth / full.alpha.clamp_min(1e-10))
    else:
        torch.testing.assert_close(out.depth, full.depth, rtol=0, atol=0)


def test_contributions_reproduce_image() -> None:
    s, cam = make_scene(7, 400, degree=2)
    cam = _camera(cam, 80, 56, 3.0, -2.0)
    bg = torch.tensor([0.3, 0.6, 0.9])
    out = render(s, cam, background=bg, return_contributions=True, backend="cpu")
    c = out.contributions
    assert c.pixel.dtype == torch.int32 and c.gaussian.dtype == torch.int32 and c.weight.dtype == torch.float32
    assert c.num > 1000 and (c.weight > 0).all()
    # Grouped by ascending pixel, CSR offsets consistent, front to back within a pixel.
    assert (c.pixel[1:] >= c.pixel[:-1]).all()
    counts = torch.bincount(c.pixel.long(), minlength=cam.width * cam.height)
    assert torch.equal(c.offsets[1:] - c.offsets[:-1], counts)
    proj = project(s, cam)
    z = proj.depths[c.gaussian.long()]
    same = c.pixel[1:] == c.pixel[:-1]
    assert (z[1:][same] >= z[:-1][same]).all()
    # sum w c + T bg == colours; sum w == alpha.
    from utils.render import _sh_colors

    cols = _sh_colors(s, cam, None, proj.valid)
    HW = cam.width * cam.height
    img = torch.zeros(HW, 3).index_add_(0, c.pixel, c.weight[:, None] * cols[c.gaussian.long()])
    img += (1 - out.alpha.reshape(HW, 1)) * bg
    torch.testing.assert_close(img.reshape(out.colors.shape), out.colors, atol=1e-6, rtol=0)
    wsum = torch.zeros(HW).index_add_(0, c.pixel, c.weight)
    torch.testing.assert_close(wsum.reshape(out.alpha.shape), out.alpha, atol=2e-6, rtol=0)
    # The weights-only path gives bit-identical results.
    c2 = render_contributions(s, cam, backend="cpu")
    for name in ("pixel", "gaussian", "weight", "offsets"):
        assert torch.equal(getattr(c2, name), getattr(c, name)), name


def test_depth_ties_keep_index_order() -> None:
    """Two identical Gaussians (equal z) with different features: the lower index is composited first."""
    cam = Camera(torch.eye(4), torch.tensor([[40.0, 0, 16], [0, 40.0, 16], [0, 0, 1]]), 32, 32)
    n = 2
    s = Splats(
        torch.tensor([[0.0, 0.0, 2.0]] * n), torch.tensor([[1.0, 0, 0, 0]] * n), torch.full((n, 3), -1.5),
        torch.zeros(n), torch.zeros(n, 1, 3), torch.zeros(n, 0, 3),
    )  # fmt: skip
    f = torch.tensor([[1.0], [0.0]])
    out = render(s, cam, features=f, return_contributions=True, backend="cpu")
    c = out.contributions
    nonempty = c.offsets[1:] > c.offsets[:-1]
    first = c.offsets[:-1][nonempty]
    assert nonempty.sum() > 100
    assert (c.gaussian[first] == 0).all() and (c.gaussian[first + 1] == 1).all()
    # Colour = weight of the first twin (feature 1); the second (feature 0) adds nothing.
    torch.testing.assert_close(out.colors.reshape(-1)[nonempty], c.weight[first], rtol=0, atol=0)
    assert (c.weight[first + 1] < c.weight[first]).all()  # alpha (1 - alpha) < alpha


def test_near_plane_render() -> None:
    """Gaussians at z == near (kept), one float32 ulp closer (culled) and just beyond near (huge on screen), vs the
    reference. The camera sits at the world origin so camera z is exact: with a camera far from the origin, z ~ near
    is a float32 cancellation (~1e-5 relative, for gsplat's CUDA kernel as well)."""
    near = 0.25
    cam = Camera(torch.eye(4), torch.tensor([[60.0, 0, 31], [0, 60.0, 22], [0, 0, 1]]), 64, 40)
    g = torch.Generator().manual_seed(3)
    z = torch.tensor([near, float(np.nextafter(np.float32(near), np.float32(0))), near * 1.5, 2.0, 2.5, 3.0])
    n = len(z)
    means = torch.stack([torch.randn(n, generator=g) * 0.03 * z, torch.randn(n, generator=g) * 0.03 * z, z], dim=1)
    s = Splats(means, torch.randn(n, 4, generator=g), torch.randn(n, 3, generator=g) * 0.2 + float(np.log(0.004)),
               torch.randn(n, generator=g), torch.randn(n, 1, 3, generator=g), torch.zeros(n, 0, 3))  # fmt: skip
    s.scales[3:] += 4.0  # the far ones are normal-sized
    assert project(s, cam, near=near).valid.tolist() == [True, False, True, True, True, True]
    out = render(s, cam, near=near, render_mode="RGB+D", return_contributions=True, backend="cpu")
    ref = ref_render(s, cam, ref_sh_colors(s, cam, 0), near=near)
    ok = ~ref.ambiguous
    assert ok.mean() > 0.97
    HW = cam.width * cam.height
    assert np.abs(out.colors.reshape(HW, 3).double().numpy() - ref.colors)[ok].max() <= ATOL
    assert np.abs(out.alpha.reshape(HW).double().numpy() - ref.alpha)[ok].max() <= ATOL
    ours = _pixel_lists(out.contributions, np.arange(HW))
    seen = set()
    for p in np.flatnonzero(ok):
        assert np.array_equal(ours[p][0], ref.weights[p][0])
        assert np.abs(ours[p][1] - ref.weights[p][1]).max(initial=0.0) <= ATOL
        seen.update(ours[p][0].tolist())
    assert {0, 2} <= seen and 1 not in seen  # the z == near one renders, the culled one does not


def test_large_feature_width() -> None:
    """D = 1024 (wider than any register tile): every column equals a separate single-column render."""
    s, cam = make_scene(3, 150)
    f = torch.randn(s.num, 1024, generator=torch.Generator().manual_seed(0))
    out = render(s, cam, features=f, backend="cpu")
    for d in (0, 511, 1023):
        one = render(s, cam, features=f[:, d : d + 1].contiguous(), backend="cpu")
        torch.testing.assert_close(out.colors[..., d], one.colors[..., 0], rtol=0, atol=0)


def test_binning_covers_support() -> None:
    """Every (pixel, Gaussian) pair with alpha >= 1/255 lies in a tile the Gaussian is binned to."""
    s, cam = make_scene(4, 300)
    cam = _camera(cam, 70, 50, 0.0, 0.0)
    proj = project(s, cam)
    bins = bin_tiles(proj)
    ids = set()
    for t in range(bins.tiles_x * bins.tiles_y):
        for g in bins.ids[bins.offsets[t] : bins.offsets[t + 1]]:
            ids.add((t, int(g)))
    ref = ref_render(s, cam, None)
    for p, (gs, _) in enumerate(ref.weights):
        t = (p // cam.width // 16) * bins.tiles_x + (p % cam.width) // 16
        for g in gs:
            assert (t, int(g)) in ids
    # Within a tile, lists are sorted by depth.
    z = proj.depths.numpy()
    for t in range(bins.tiles_x * bins.tiles_y):
        zz = z[bins.ids[bins.offsets[t] : bins.offsets[t + 1]]]
        assert (np.diff(zz) >= 0).all()


def test_empty_and_all_culled() -> None:
    s, cam = make_scene(0, 10)
    s = s.subset(torch.arange(10, 15))  # the block behind the camera and the one before the near plane
    out = render(s, cam, return_contributions=True, render_mode="RGB+ED", background=torch.ones(3), backend="cpu")
    assert (out.colors == 1).all() and (out.alpha == 0).all() and (out.depth == 0).all()
    assert out.contributions.num == 0


def test_backend_selection_on_cpu() -> None:
    s, cam = make_scene(0, 20)
    a = render(s, cam, backend="auto")
    b = render(s, cam, backend="cpu")
    assert torch.equal(a.colors, b.colors)
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="CUDA"):
            render(s, cam, backend="gsplat")
        with pytest.raises(UserError, match="CUDA"):
            render_contributions(s, cam, backend="gsplat")


def _garden_scene() -> tuple[Splats, list[Camera]]:
    d = np.load(SHARED / "data" / "garden_sfm" / "test_garden.npz")
    means = torch.from_numpy(d["means3d"]).float()
    rgb = torch.from_numpy(d["colors"]).float() / 255.0
    n = means.shape[0]
    s = Splats(
        means=means,
        quats=torch.tensor([[1.0, 0, 0, 0]]).repeat(n, 1),
        scales=torch.full((n, 3), float(np.log(0.01))),
        opacities=torch.full((n,), 2.0),
        sh0=((rgb - 0.5) / 0.28209479177387814)[:, None, :],
        shN=torch.zeros(n, 0, 3),
    )
    W, H = int(d["width"]), int(d["height"])
    cams = [Camera(torch.from_numpy(v), torch.from_numpy(k), W, H) for v, k in zip(d["viewmats"], d["Ks"])]
    return s, cams


@pytest.mark.skipif(not (SHARED / "data" / "garden_sfm" / "test_garden.npz").exists(), reason="needs ../shared")
@pytest.mark.parametrize("view", [0, 2])
def test_garden_real_points(view: int) -> None:
    """Real Mip-NeRF 360 garden points and cameras: full 648x420 render, reference on 300 sampled pixels."""
    s, cams = _garden_scene()
    cam = cams[view]
    out = render(s, cam, render_mode="RGB+D", return_contributions=True, backend="cpu")
    assert out.alpha.mean() > 0.3  # the points actually cover the view
    rng = np.random.default_rng(view)
    pix = rng.choice(cam.width * cam.height, 300, replace=False)
    ref = ref_render(s, cam, ref_sh_colors(s, cam, 0), pixels=pix, chunk=8)
    ok = ~ref.ambiguous
    assert ok.mean() > 0.9
    col = out.colors.reshape(-1, 3)[pix].double().numpy()
    alpha = out.alpha.reshape(-1)[pix].double().numpy()
    depth = out.depth.reshape(-1)[pix].double().numpy()
    assert np.abs(col - ref.colors)[ok].max() <= ATOL_REAL
    assert np.abs(alpha - ref.alpha)[ok].max() <= ATOL_REAL
    zmax = float(project(s, cam).depths.max())
    assert np.abs(depth - ref.depth)[ok].max() <= ATOL_REAL * max(1.0, zmax)
    ours = _pixel_lists(out.contributions, pix)
    for i in np.flatnonzero(ok):
        assert np.array_equal(ours[i][0], ref.weights[i][0])
        assert np.abs(ours[i][1] - ref.weights[i][1]).max(initial=0.0) <= ATOL_REAL


@pytest.mark.skipif(not (SHARED / "data" / "plant" / "plant.splat").exists(), reason="needs ../shared")
def test_plant_scene() -> None:
    """The real trained plant (.splat, 113k Gaussians) at a small size, reference on sampled pixels."""
    from utils.scene_io import load_scene

    s = load_scene(SHARED / "data" / "plant" / "plant.splat")
    centre = s.means.median(dim=0).values
    cam = look_at((centre + torch.tensor([0.0, -0.4, -1.6])).tolist(), centre.tolist(), [0, -1, 0], 160, 120, 45.0)
    out = render(s, cam, render_mode="RGB+D", return_contributions=True, background=torch.ones(3), backend="cpu")
    assert out.alpha.max() > 0.99
    pix = np.random.default_rng(0).choice(cam.width * cam.height, 200, replace=False)
    ref = ref_render(s, cam, ref_sh_colors(s, cam, s.sh_degree), background=torch.ones(3), pixels=pix, chunk=8)
    ok = ~ref.ambiguous
    assert ok.mean() > 0.9
    assert np.abs(out.colors.reshape(-1, 3)[pix].double().numpy() - ref.colors)[ok].max() <= ATOL_REAL
    assert np.abs(out.alpha.reshape(-1)[pix].double().numpy() - ref.alpha)[ok].max() <= ATOL_REAL
    ours = _pixel_lists(out.contributions, pix)
    for i in np.flatnonzero(ok):
        assert np.array_equal(ours[i][0], ref.weights[i][0])


def _assert_pixel_weights_equal_full(proj, pixels: np.ndarray) -> int:
    """pixel_weights at `pixels` == the full rasterizer's contributions and final T there, bitwise."""
    full = rasterize(proj, None, return_contributions=True)
    pc, T = pixel_weights(proj, torch.from_numpy(pixels))
    uniq = np.unique(pixels)
    assert pc.pixel.numpy().tolist() == sorted(pc.pixel.numpy().tolist()), "grouped by ascending pixel"
    assert pc.num == sum(int(full.contributions.offsets[p + 1] - full.contributions.offsets[p]) for p in uniq)
    for k, (ours, want) in enumerate(zip(_pixel_lists(pc, uniq), _pixel_lists(full.contributions, uniq))):
        assert np.array_equal(ours[0], want[0]), f"pixel {uniq[k]}: Gaussian ids/order differ"
        assert np.array_equal(ours[1], want[1]), f"pixel {uniq[k]}: weights differ"
    assert torch.equal(T, full.transmittance.reshape(-1)[torch.from_numpy(uniq)])
    return pc.num


@pytest.mark.parametrize("case", CASES[:5], ids=lambda c: f"{c.mode}-{c.width}x{c.height}")
def test_pixel_contributions_equal_full_render(case: Case) -> None:
    s, cam0 = make_scene(case.seed, case.n)
    cam = _camera(cam0, case.width, case.height, case.dcx, case.dcy)
    proj = project(s, cam, rasterize_mode=case.mode)
    rng = np.random.default_rng(case.seed)
    pixels = np.concatenate([rng.integers(0, cam.width * cam.height, 150), [0, cam.width * cam.height - 1, 7, 7]])
    assert _assert_pixel_weights_equal_full(proj, pixels) > 100
    # pixel_contributions is the same without T
    a, b = pixel_contributions(proj, torch.from_numpy(pixels)), pixel_weights(proj, torch.from_numpy(pixels))[0]
    assert torch.equal(a.gaussian, b.gaussian) and torch.equal(a.weight, b.weight) and torch.equal(a.offsets, b.offsets)
    with pytest.raises(ValueError, match="pixel indices"):
        pixel_contributions(proj, torch.tensor([cam.width * cam.height]))


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.mode}-{c.width}x{c.height}")
def test_store_equals_contributions(case: Case, kernel: bool) -> None:
    """The one-pass tile store holds the (pixel, Gaussian, weight) entries of `rasterize_contributions`, each tile's
    inside the tile and grouped by Gaussian in depth order; a validity mask drops exactly its pixels. Bitwise for the
    numba kernel; the C kernels (their own vector exp) have the same entries and weights within 4e-6 relative."""
    native = kernel
    s, cam0 = make_scene(case.seed, case.n)
    cam = _camera(cam0, case.width, case.height, case.dcx, case.dcy)
    proj = project(s, cam, rasterize_mode=case.mode)
    bins = bin_tiles(proj)
    want = rasterize_contributions_sorted(proj)
    valid = np.random.default_rng(case.seed).random(cam.width * cam.height) > 0.3
    for mask in (None, valid):
        st = rasterize_store(proj, bins=bins, valid=mask, native=native)
        rank = np.empty(s.num, np.int64)
        rank[bins.order] = np.arange(bins.order.size)
        got = []
        for t in range(bins.tiles_x * bins.tiles_y):
            sl = slice(st.tile_start[t], st.tile_start[t] + st.tile_len[t])
            pix, gid = st.pixel[sl], st.gaussian[sl]
            ty, tx = divmod(t, bins.tiles_x)
            assert ((pix // cam.width // 16 == ty) & (pix % cam.width // 16 == tx)).all()
            runs = gid[np.r_[True, gid[1:] != gid[:-1]]] if gid.size else gid
            assert len(set(runs.tolist())) == runs.size  # one run per Gaussian
            assert (np.diff(rank[runs]) > 0).all()  # front to back
            got.append(np.stack([pix.astype(np.float64), gid, st.weight[sl].view(np.int32)], 1))
        got = np.concatenate(got)
        keep = np.ones(len(want), bool) if mask is None else mask[want[:, 0].astype(np.int64)]
        assert got.shape[0] == keep.sum() > 100
        got = got[np.lexsort(got.T[:2][::-1])]  # (pixel, gaussian) pairs are unique
        if not native:
            np.testing.assert_array_equal(got, want[keep])
            continue
        np.testing.assert_array_equal(got[:, :2], want[keep][:, :2])
        w_got, w_want = (a[:, 2].astype(np.int32).view(np.float32) for a in (got, want[keep]))
        np.testing.assert_allclose(w_got, w_want, rtol=4e-6, atol=0)


def rasterize_contributions_sorted(proj) -> np.ndarray:
    """[M, 3] rows (pixel, gaussian, weight bits) of `rasterize_contributions`, sorted lexicographically."""
    from utils.raster_cpu import rasterize_contributions

    c = rasterize_contributions(proj)
    rows = np.stack([c.pixel.numpy().astype(np.float64), c.gaussian.numpy(), c.weight.numpy().view(np.int32)], 1)
    return rows[np.lexsort(rows.T[::-1])]


def test_pixel_contributions_depth_ties_and_saturation() -> None:
    """The duplicate pair (depth tie) and the near-opaque stack (T reaches 1e-4) of make_scene, at every pixel."""
    s, cam = make_scene(0, 40)
    proj = project(s, cam)
    assert _assert_pixel_weights_equal_full(proj, np.arange(cam.width * cam.height)) > 500


@pytest.mark.skipif(not (SHARED / "data" / "plant" / "plant.splat").exists(), reason="needs ../shared")
def test_pixel_contributions_plant() -> None:
    from utils.scene_io import load_scene

    s = load_scene(SHARED / "data" / "plant" / "plant.splat")
    centre = s.means.median(dim=0).values
    cam = look_at((centre + torch.tensor([0.0, -0.4, -1.6])).tolist(), centre.tolist(), [0, -1, 0], 320, 240, 45.0)
    pix = np.random.default_rng(1).choice(cam.width * cam.height, 100, replace=False)
    assert _assert_pixel_weights_equal_full(project(s, cam), pix) > 1000


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (gsplat's rasterizer)")
@pytest.mark.parametrize("mode", ["classic", "antialiased"])
def test_gsplat_parity(mode: str) -> None:
    """gsplat CUDA vs our CPU kernel on the same scene (gsplat uses fast math: ~1e-6 agreement, some pixels flip)."""
    s, cam = make_scene(21, 500, degree=3)
    cam = _camera(cam, 96, 72, 4.0, -3.0)
    bg = torch.tensor([0.1, 0.2, 0.3])
    ours = render(s, cam, background=bg, render_mode="RGB+D", rasterize_mode=mode, backend="cpu")
    theirs = render(s.to("cuda"), cam.to("cuda"), background=bg.cuda(), render_mode="RGB+D", rasterize_mode=mode,
                    backend="gsplat")  # fmt: skip
    ref = ref_render(s, cam, ref_sh_colors(s, cam, 3), background=bg, rasterize_mode=mode)
    ok = torch.from_numpy(~ref.ambiguous).reshape(cam.height, cam.width)
    dc = (ours.colors - theirs.colors.cpu()).abs().amax(-1)
    da = (ours.alpha - theirs.alpha.cpu()).abs()
    assert dc[ok].max() <= 1e-4 and da[ok].max() <= 1e-4
    assert (dc[ok] > 1e-5).float().mean() < 0.01
    feats = torch.randn(s.num, 40, generator=torch.Generator().manual_seed(1))
    o1 = render(s, cam, features=feats, rasterize_mode=mode, backend="cpu")
    o2 = render(s.to("cuda"), cam.to("cuda"), features=feats.cuda(), rasterize_mode=mode, backend="gsplat")
    d = (o1.colors - o2.colors.cpu()).abs().amax(-1)
    assert d[ok].max() <= 1e-4
