"""Projection and SH against gsplat's pure-torch implementation (runs on CPU) and between our two implementations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from gsplat.cuda._torch_impl import _fully_fused_projection, _quat_scale_to_covar_preci, _spherical_harmonics

from utils.camera import Camera, look_at
from utils.projection import project, project_numba, project_torch
from utils.sh import eval_sh
from utils.splats import Splats


def _scene(seed: int, n: int, aniso: float = 0.4, opacity_logit_std: float = 2.0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(n, 3, generator=g) * 2.0
    quats = torch.randn(n, 4, generator=g)
    scales = torch.exp(torch.randn(n, 3, generator=g) * aniso - 2.5)
    opac = torch.sigmoid(torch.randn(n, generator=g) * opacity_logit_std)
    return means, quats, scales, opac


def _camera(width: int = 320, height: int = 200, dcx: float = 23.0, dcy: float = -11.0) -> Camera:
    cam = look_at([0.4, -0.3, -7.0], [0.1, 0.0, 0.0], [0, -1, 0], width, height, fov_y_deg=55.0)
    cam.K[0, 2] += dcx  # off-centre principal point exercises the asymmetric Jacobian clamp
    cam.K[1, 2] += dcy
    return cam


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_eval_sh_matches_gsplat(degree: int) -> None:
    g = torch.Generator().manual_seed(degree)
    n = 500
    sh0 = torch.randn(n, 1, 3, generator=g)
    shN = torch.randn(n, 15, 3, generator=g) * 0.5
    dirs = torch.randn(n, 3, generator=g) * 5.0  # not unit: eval_sh normalises
    ours = eval_sh(sh0, shN, dirs, degree)
    ref = torch.clamp_min(_spherical_harmonics(degree, dirs, torch.cat([sh0, shN], 1)) + 0.5, 0.0)
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=1e-6)
    assert (ours == 0).any() and (ours > 0).any()  # the clamp is exercised


@pytest.mark.parametrize("antialiased", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_numba_matches_torch(seed: int, antialiased: bool) -> None:
    means, quats, scales, opac = _scene(seed, 5000)
    cam = _camera()
    args = (cam.viewmat, cam.K, cam.width, cam.height)
    a = project_numba(means, quats, scales, opac, *args, antialiased=antialiased)
    # float64 torch: the numba float32 result must be within float32 rounding of exact maths.
    b = project_torch(means.double(), quats.double(), scales.double(), opac.double(), *args, antialiased=antialiased)
    assert 0.3 < a.valid.float().mean() < 0.99  # a mix of culled and kept Gaussians
    assert torch.equal(a.valid, b.valid)
    v = a.valid
    torch.testing.assert_close(a.means2d[v].double(), b.means2d[v], atol=1e-4, rtol=1e-6)
    scale = b.conics[v].abs().amax(dim=1, keepdim=True)
    assert ((a.conics[v].double() - b.conics[v]).abs() / scale).max() < 5e-5
    torch.testing.assert_close(a.depths.double(), b.depths, atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(a.opacities[v].double(), b.opacities[v], atol=1e-6, rtol=1e-5)
    # Radii are ceil()ed: equal except where extend * sigma is within rounding of an integer.
    assert (a.radii[v] - b.radii[v]).abs().max() <= 1
    assert (a.radii[v] == b.radii[v]).float().mean() > 0.999
    # Culled rows are zeroed.
    assert (a.radii[~v] == 0).all() and (a.means2d[~v] == 0).all()


def test_numba_matches_torch_float32() -> None:
    means, quats, scales, opac = _scene(5, 3000)
    cam = _camera(200, 320, -15.0, 30.0)
    a = project_numba(means, quats, scales, opac, cam.viewmat, cam.K, cam.width, cam.height)
    b = project_torch(means, quats, scales, opac, cam.viewmat, cam.K, cam.width, cam.height)
    assert torch.equal(a.valid, b.valid)
    v = a.valid
    torch.testing.assert_close(a.means2d[v], b.means2d[v], atol=1e-4, rtol=1e-6)
    scale = b.conics[v].abs().amax(dim=1, keepdim=True)
    assert ((a.conics[v] - b.conics[v]).abs() / scale).max() < 5e-5


@pytest.mark.parametrize("antialiased", [False, True])
def test_matches_gsplat_torch_impl(antialiased: bool) -> None:
    n = 4000
    means, quats, scales, _ = _scene(3, n)
    # gsplat's torch projection always uses 3.33 sigma and has no opacity cull: opacity 1 makes ours comparable
    # (extend = min(3.33, sqrt(2 ln 255)) = 3.3290 < 3.33, so our radii may be 1 px smaller at integer boundaries).
    opac = torch.ones(n)
    cam = _camera()
    ours = project_numba(means, quats, scales, opac, cam.viewmat, cam.K, cam.width, cam.height, antialiased=antialiased)
    covars, _ = _quat_scale_to_covar_preci(quats, scales, compute_preci=False)
    radii, m2, depths, conics, comp = _fully_fused_projection(
        means, covars, cam.viewmat[None], cam.K[None], cam.width, cam.height, calc_compensations=True
    )
    radii, m2, depths, conics, comp = radii[0], m2[0], depths[0], conics[0], comp[0]
    theirs_valid = (radii > 0).all(dim=-1)
    v = ours.valid
    assert v.sum() > 1000
    assert (v & ~theirs_valid).sum() == 0
    # Theirs may keep a Gaussian whose 3.33-sigma box just reaches the image while ours (3.329) does not.
    assert (theirs_valid & ~v).sum() <= 0.002 * n
    torch.testing.assert_close(ours.means2d[v], m2[v], atol=1e-4, rtol=1e-6)
    torch.testing.assert_close(ours.depths, depths, atol=1e-6, rtol=1e-6)
    scale = conics[v].abs().amax(dim=1, keepdim=True)
    assert ((ours.conics[v] - conics[v]).abs() / scale).max() < 5e-5
    d = radii[v] - ours.radii[v]
    assert d.min() >= 0 and d.max() <= 1
    torch.testing.assert_close(ours.compensations[v], comp[v], atol=1e-5, rtol=1e-5)
    expect_opac = comp[v] if antialiased else torch.ones_like(comp[v])
    torch.testing.assert_close(ours.opacities[v], expect_opac, atol=1e-5, rtol=1e-5)


def test_opacity_aware_radius_and_culls() -> None:
    """Hand-checked culls: opacity < 1/255, z < near (z == near kept), behind camera, off-screen, radius formula."""
    cam = Camera(torch.eye(4), torch.tensor([[100.0, 0, 40], [0, 100.0, 30], [0, 0, 1]]), 80, 60)
    near = 0.5  # exactly representable, so z == near is exact in float32 and float64
    means = torch.tensor(
        [
            [0.0, 0.0, 3.0],  # plain
            [0.0, 0.0, near],  # at the near plane: kept
            [0.0, 0.0, float(np.nextafter(np.float32(near), np.float32(0.0)))],  # 1 float32 ulp closer: culled
            [0.0, 0.0, -2.0],  # behind the camera
            [40.0, 0.0, 3.0],  # far off-screen to the right
            [0.0, 0.0, 3.0],  # opacity below 1/255
            [0.0, 0.0, 3.0],  # opacity just above 1/255
        ]
    )
    n = len(means)
    quats = torch.tensor([[1.0, 0, 0, 0]]).repeat(n, 1)
    scales = torch.full((n, 3), 0.05)
    opac = torch.full((n,), 0.8)
    opac[5] = 1.0 / 255.0 * 0.99
    opac[6] = 1.0 / 255.0 * 1.5
    for fn in (project_numba, project_torch):
        p = fn(means, quats, scales, opac, cam.viewmat, cam.K, cam.width, cam.height, near=near)
        assert p.valid.tolist() == [True, True, False, False, False, False, True], fn
        # Radius: ceil(min(3.33, sqrt(2 ln(255 o))) * sqrt(s^2 f^2 / z^2 + 0.3)).
        for i in (0, 6):
            sd = math.sqrt((0.05 * 100.0 / 3.0) ** 2 + 0.3)
            extend = min(3.33, math.sqrt(2.0 * math.log(255.0 * float(opac[i]))))
            assert p.radii[i].tolist() == [math.ceil(extend * sd)] * 2


def test_project_splats_entry_point() -> None:
    """`project()` activates raw parameters (exp, sigmoid) and both implementations agree through it."""
    g = torch.Generator().manual_seed(9)
    n = 800
    s = Splats(
        torch.randn(n, 3, generator=g),
        torch.randn(n, 4, generator=g),
        torch.randn(n, 3, generator=g) * 0.3 - 3,
        torch.randn(n, generator=g),
        torch.randn(n, 1, 3, generator=g),
        torch.zeros(n, 0, 3),
    )
    cam = _camera(96, 64)
    a = project(s, cam, impl="numba", rasterize_mode="antialiased")
    b = project(s, cam, impl="torch", rasterize_mode="antialiased")
    assert torch.equal(a.valid, b.valid) and a.valid.any()
    v = a.valid
    np.testing.assert_allclose(a.opacities[v].numpy(), b.opacities[v].numpy(), rtol=1e-5)
    expect = torch.sigmoid(s.opacities)[v] * a.compensations[v]
    np.testing.assert_allclose(a.opacities[v].numpy(), expect.numpy(), rtol=1e-6)
