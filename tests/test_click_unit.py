"""Click-and-segment logic on the demo scene with its lifted label features (no browser).

References: the demo's ground-truth object id per Gaussian (data/demo/gaussian_labels.pt), ground-truth label maps
rendered from those ids, and the Gaussian means (the picked 3D point must lie on the clicked object's surface).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from browser_util import interior_pixel, lift_demo_features
from utils.click_app import ClickSegmenter, pick
from utils.demo_scene import CLASS_NAMES, render_label_map
from utils.errors import UserError
from utils.features_file import FeatureField, load_feature_field, save_feature_field
from utils.query import PromptSet
from utils.scene_args import SceneArgs, load_scene_and_cameras
from utils.viewer import camera_from_viser, pixel_ray, project_points, render_size, viser_pose

ROOT = Path(__file__).resolve().parents[1]
SURFACE_TOL = 0.05  # world units; the demo's Gaussians are 0.03 apart


class Demo:
    def __init__(self, features_path: Path) -> None:
        self.splats, self.cameras = load_scene_and_cameras(SceneArgs(demo=True), verbose=False)
        self.labels = torch.load(ROOT / "data" / "demo" / "gaussian_labels.pt", weights_only=True)
        self.features_path = features_path
        self.field = load_feature_field(features_path, self.splats)

    def cls(self, name: str) -> int:
        return CLASS_NAMES.index(name)

    def click_pixel(self, name: str, cam_index: int | None = None):
        """(camera, x, y): the projection of the object's GT centroid in the first view where the GT label there is
        the object (the table's centroid floats under its top, so it gets the deepest interior pixel instead)."""
        c = self.cls(name)
        centroid = self.splats.means[self.labels == c].mean(0, keepdim=True)
        order = range(len(self.cameras)) if cam_index is None else [cam_index]
        for i in order:
            cam = self.cameras[i]
            lab = render_label_map(self.splats, self.labels, cam, len(CLASS_NAMES)).long()
            if name == "table":
                p = interior_pixel(lab, c)
                if p is not None and (lab == c).sum() > 200:
                    return cam, p[0], p[1]
                continue
            uv, z = project_points(cam, centroid)
            x, y = float(uv[0, 0]), float(uv[0, 1])
            if z[0] > 0 and 0 <= x < cam.width and 0 <= y < cam.height and int(lab[int(y), int(x)]) == c:
                return cam, x, y
        raise AssertionError(f"no view shows the {name} at its centroid")


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Demo:
    return Demo(lift_demo_features(tmp_path_factory.mktemp("lifted")))


@pytest.mark.parametrize("name", ["ball", "vase", "box", "table"])
def test_click_selects_clicked_object(demo: Demo, name: str):
    seg = ClickSegmenter(demo.splats, demo.field)
    cam, x, y = demo.click_pixel(name)
    pk, prompt = seg.click(cam, x, y, positive=True)
    assert prompt is not None and prompt.positive and pk.hit
    # the 3D point is on the object's surface
    obj = demo.labels == demo.cls(name)
    d = (demo.splats.means[obj] - pk.point).norm(dim=1).min().item()
    assert d < SURFACE_TOL, f"picked point {pk.point.tolist()} is {d:.3f} from the {name}"
    # ... and projects back to the clicked pixel centre at the rendered expected depth
    uv, z = project_points(cam, pk.point[None])
    assert abs(uv[0, 0] - (np.floor(x) + 0.5)) < 1e-2 and abs(uv[0, 1] - (np.floor(y) + 0.5)) < 1e-2
    assert abs(float(z[0]) - pk.depth) < 1e-4
    # the selection is that object: mostly its Gaussians, and most of its (seen) Gaussians
    mask = seg.mask()
    seen_obj = obj & demo.field.seen
    precision = (mask & obj).sum().item() / max(1, mask.sum().item())
    recall = (mask & obj).sum().item() / seen_obj.sum().item()
    # The vase's precision is lowest (0.88 measured): table-top Gaussians around its foot, seen only at grazing
    # angles under its bulge, are lifted as vase.
    assert precision > (0.85 if name == "vase" else 0.9) and recall > 0.9, (name, precision, recall)
    # never-seen Gaussians are never selected
    assert not (mask & ~demo.field.seen).any()


def test_query_vector_is_the_rendered_unit_feature(demo: Demo):
    """Reference: composite the unit per-Gaussian features with the full render and normalise that one pixel."""
    from utils.render import render

    cam, x, y = demo.click_pixel("vase")
    pk = pick(demo.splats, demo.field.normalized(), cam, x, y)
    ref = render(demo.splats, cam, features=demo.field.normalized()).colors[int(y), int(x)]
    assert torch.allclose(pk.vector, ref / ref.norm(), atol=1e-5)
    assert abs(pk.vector.norm().item() - 1) < 1e-5
    # label features: the vase pixel's feature points at the vase class
    assert int(pk.vector.argmax()) == demo.cls("vase")


def test_shift_click_negative_excludes(demo: Demo):
    seg = ClickSegmenter(demo.splats, demo.field)
    ball, table = demo.labels == demo.cls("ball"), demo.labels == demo.cls("table")
    cam_b, xb, yb = demo.click_pixel("ball")
    cam_t, xt, yt = demo.click_pixel("table")
    seg.click(cam_b, xb, yb, positive=True)
    seg.click(cam_t, xt, yt, positive=True)
    both = seg.mask()
    assert (both & table).sum() > 0.9 * (table & demo.field.seen).sum()
    _, neg = seg.click(cam_t, xt, yt, positive=False)
    assert neg is not None and not neg.positive
    m = seg.mask()
    assert (m & table).sum() == 0, "the negative click did not exclude the table"
    assert (m & ball).sum() > 0.9 * (ball & demo.field.seen).sum(), "the ball should stay selected"


def test_remove_prompt(demo: Demo):
    seg = ClickSegmenter(demo.splats, demo.field)
    cam_b, xb, yb = demo.click_pixel("ball")
    cam_t, xt, yt = demo.click_pixel("table")
    _, pb = seg.click(cam_b, xb, yb)
    ball_only = seg.mask().clone()
    _, pt = seg.click(cam_t, xt, yt)
    assert not torch.equal(seg.mask(), ball_only)
    assert seg.remove(pt.uid)
    assert [p.uid for p in seg.prompts] == [pb.uid]
    assert torch.equal(seg.mask(), ball_only)
    assert not seg.remove(12345)
    seg.clear()
    assert seg.prompts == [] and seg.mask() is None


def test_click_on_background_adds_nothing(demo: Demo):
    from utils.render import render

    seg = ClickSegmenter(demo.splats, demo.field)
    for cam in demo.cameras:
        alpha = render(demo.splats, cam).alpha
        empty = torch.nonzero(alpha < 0.05)
        if len(empty):
            y, x = empty[0].tolist()
            pk, p = seg.click(cam, x + 0.5, y + 0.5)
            assert p is None and not pk.hit and seg.prompts == []
            return
    pytest.skip("every pixel of every demo view is covered")


def test_text_prompt_and_prompt_set_roundtrip(demo: Demo, tmp_path: Path):
    seg = ClickSegmenter(demo.splats, demo.field)
    assert seg.accepts_text
    seg.add_text("Ball")
    ball = demo.labels == demo.cls("ball")
    m = seg.mask()
    # lifted features bleed a little at contact points (a few floor Gaussians under the ball)
    assert (m & ~ball).sum() < 0.05 * m.sum() and (m & ball).sum() > 0.9 * (ball & demo.field.seen).sum()
    with pytest.raises(UserError, match="unknown class"):
        seg.add_text("giraffe")
    assert len(seg.prompts) == 1
    cam, x, y = demo.click_pixel("box")
    seg.click(cam, x, y, positive=True)
    seg.threshold = 0.3
    path = tmp_path / "prompts.json"
    seg.prompt_set().save(path)
    other = ClickSegmenter(demo.splats, demo.field)
    other.load_prompt_set(PromptSet.load(path))
    assert other.threshold == 0.3 and len(other.prompts) == 2
    assert torch.equal(other.mask(), seg.mask())
    # vectors of another dimension are refused with a one-line error
    bad = PromptSet(positive_vectors=[[1.0, 0.0]])
    with pytest.raises(UserError, match="dimension"):
        other.load_prompt_set(bad)


def test_camera_conversions_roundtrip(demo: Demo):
    """viser pose (wxyz from the pose's rotation, vertical fov) -> our Camera reproduces the COLMAP view."""
    import viser.transforms as vtf

    cam = demo.cameras[3]
    p = viser_pose(cam)
    R = cam.c2w.double().numpy()[:3, :3]
    wxyz = vtf.SO3.from_matrix(R).wxyz
    w, h = render_size(cam.width * 4, cam.height * 4, max_width=cam.width)
    back = camera_from_viser(wxyz, p.position, p.fov, w, h)
    assert (w, h) == (cam.width, cam.height)
    assert torch.allclose(back.viewmat, cam.viewmat, atol=1e-5)
    assert torch.allclose(back.K, cam.K, atol=1e-3)
    # look_at lies on the optical axis, up is image-up
    fwd = (p.look_at - p.position) / np.linalg.norm(p.look_at - p.position)
    assert np.allclose(fwd, R[:, 2], atol=1e-6) and np.allclose(p.up, -R[:, 1], atol=1e-6)
    # the ray through the principal point is the optical axis
    o, d = pixel_ray(cam, cam.width / 2, cam.height / 2)
    assert torch.allclose(d.double(), torch.from_numpy(R[:, 2]), atol=1e-6)


def test_refuses_features_of_another_scene(demo: Demo, tmp_path: Path):
    import click_and_segment

    ff = load_feature_field(demo.features_path)
    wrong_hash = FeatureField(ff.features, ff.weight, {**ff.meta, "scene_hash": "0123456789abcdef"})
    save_feature_field(wrong_hash, tmp_path / "other_scene.pt")
    fewer = FeatureField(ff.features[:-10], ff.weight[:-10], ff.meta)
    save_feature_field(fewer, tmp_path / "fewer.pt")
    for bad, msg in ((tmp_path / "other_scene.pt", "different scene"), (tmp_path / "fewer.pt", "another scene")):
        args = click_and_segment.Args(scene=SceneArgs(demo=True), features=bad, port=0, quiet=True)
        with pytest.raises(UserError, match=msg):
            click_and_segment.build_app(args)
    # the CLI prints one line and exits 2 (before any server starts)
    r = subprocess.run(
        [sys.executable, "click_and_segment.py", "--demo", "--features", str(tmp_path / "other_scene.pt"), "--port", "0"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "different scene" in lines[0], r.stderr
