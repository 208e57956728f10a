"""End to end: click-and-segment in headless chromium on the demo scene.

The app runs in-process on a free loopback port; playwright drives a real browser. We move the browser's camera to a
COLMAP view from the server, click the ball where its ground-truth centroid projects, and check the server's prompts,
the extracted/deleted frames the browser shows (pixel colours inside ground-truth object regions), Shift+click
negatives, removing a prompt through its panel button, saving, and a clean shutdown.
"""

from __future__ import annotations

import re
import socket
import threading
from pathlib import Path

import pytest
import torch

from browser_util import (
    ViewTruth, browser_page, canvas_box, frac_close, free_port, interior_pixel, lift_demo_features, pick_demo_view,
    require_browser, screenshot_rgb, show_view, wait_shown, wait_until,
)
from utils.demo_scene import CLASS_NAMES, COLORS

ROOT = Path(__file__).resolve().parents[1]
SHOT = Path("/tmp/click_browser_extracted.png")


def _shown(app, cid, mode: str):
    app.viewer.set_mode(mode)
    return wait_shown(app.viewer, cid)


@pytest.mark.slow
def test_click_and_segment_in_browser(tmp_path: Path):
    require_browser()
    import click_and_segment
    from utils.scene_args import SceneArgs

    threads_before = {t.ident for t in threading.enumerate()}
    features = lift_demo_features(tmp_path / "lifted")
    out_dir = tmp_path / "out"
    port = free_port()
    args = click_and_segment.Args(scene=SceneArgs(demo=True), features=features, port=port, max_render_width=320,
                                  out=out_dir, save_views=1, quiet=True)
    app = click_and_segment.build_app(args)
    labels = torch.load(ROOT / "data" / "demo" / "gaussian_labels.pt", weights_only=True)
    ball_ids, table_ids = labels == CLASS_NAMES.index("ball"), labels == CLASS_NAMES.index("table")
    try:
        assert app.viewer.url == f"http://127.0.0.1:{port}"
        with browser_page() as page:
            page.goto(app.viewer.url)
            cid = app.viewer.wait_for_client(60)
            app.viewer.wait_for_frame(cid, 0, 60)  # first frame arrived
            client = app.viewer.server.get_clients()[cid]

            # 1. Put the browser on a known COLMAP view (from the server) and wait for its frame.
            view = app.viewer.cameras[pick_demo_view(app.seg.splats, labels, app.viewer.cameras)]
            show_view(app.viewer, cid, view)
            gt = ViewTruth(app.viewer, client, app.seg.splats, labels)
            assert torch.allclose(gt.cam.viewmat, view.viewmat, atol=1e-3)
            box = canvas_box(page)

            # 2. Click the ball at its centroid's projection -> one positive prompt, the ball selected.
            from utils.viewer import project_points

            uv, _ = project_points(gt.cam, app.seg.splats.means[ball_ids].mean(0, keepdim=True))
            ball_xy = gt.page_xy(box, float(uv[0, 0]), float(uv[0, 1]))
            page.mouse.click(*ball_xy)
            wait_until(lambda: len(app.seg.prompts) == 1, 20, what="the click to reach the server")
            assert app.seg.prompts[0].positive and app.seg.prompts[0].point is not None
            # The prompt is registered before the selection is recomputed: wait for the new mask.
            wait_until(lambda: app.viewer.mask is not None and (app.viewer.mask & ball_ids).sum() > 0.9 * ball_ids.sum(),
                       20, what="the ball to be selected")
            mask = app.viewer.mask
            assert (mask & table_ids).sum() == 0

            # 3. Extracted view in the browser: ball pixels yellow, table pixels background (black).
            _shown(app, cid, "extracted")

            def extracted_ok():
                img = screenshot_rgb(page)
                ball = frac_close(gt.region_colors(img, box, "ball", [ball_xy]), COLORS["ball"])
                table = frac_close(gt.region_colors(img, box, "table", [ball_xy]), (0, 0, 0), 0.1)
                return ball > 0.8 and table > 0.9

            wait_until(extracted_ok, 20, 0.2, what="the extracted frame (ball only) in the browser")
            page.screenshot(path=str(SHOT))

            # 4. Positive click on the table (in the original view), then Shift+click on it: excluded again.
            _shown(app, cid, "original")
            tx, ty = interior_pixel(gt.lab, CLASS_NAMES.index("table"))
            table_xy = gt.page_xy(box, tx, ty)
            page.mouse.click(*table_xy)
            wait_until(lambda: len(app.seg.prompts) == 2, 20, what="the table click")
            wait_until(lambda: (app.viewer.mask & table_ids).sum() > 0.8 * table_ids.sum(), 20, what="the table selected")
            page.keyboard.down("Shift")
            page.mouse.click(*table_xy)
            page.keyboard.up("Shift")
            wait_until(lambda: len(app.seg.prompts) == 3, 20, what="the Shift+click")
            assert [p.positive for p in app.seg.prompts] == [True, True, False]
            # A handful of table Gaussians seen mostly behind the ball carry ball-like lifted features (back-projection
            # votes by what each Gaussian contributes to), so "excluded" allows 0.5% of the table.
            wait_until(lambda: (app.viewer.mask & table_ids).sum() <= 0.005 * table_ids.sum(), 20, what="the table excluded")
            assert (app.viewer.mask & ball_ids).sum() > 0.9 * ball_ids.sum()
            _shown(app, cid, "deleted")

            def deleted_ok():  # the ball is gone, the table is still there
                img = screenshot_rgb(page)
                ball = frac_close(gt.region_colors(img, box, "ball", [ball_xy]), COLORS["ball"])
                table = frac_close(gt.region_colors(img, box, "table", [ball_xy, table_xy]), COLORS["table"])
                return ball < 0.05 and table > 0.8

            wait_until(deleted_ok, 20, 0.2, what="the deleted frame (no ball) in the browser")

            # 5. Remove the positive table prompt with its panel button.
            label = app.seg.prompts[1].label()
            page.get_by_role("button", name=re.compile(re.escape(f"✕ {label}"))).click()
            wait_until(lambda: len(app.seg.prompts) == 2, 20, what="the remove button")
            assert [p.positive for p in app.seg.prompts] == [True, False]
            wait_until(lambda: page.get_by_role("button", name=re.compile(re.escape(label))).count() == 0, 10,
                       what="the removed prompt's button to disappear")
            assert page.get_by_role("button", name=re.compile(re.escape(app.seg.prompts[1].label()))).count() == 1

            # 6. Save through the panel: mask.pt equals the server's selection.
            page.get_by_role("button", name="Save selection").click()
            wait_until(lambda: (out_dir / "mask.pt").exists() and (out_dir / "extracted.ply").exists(), 60,
                       what="saved files")
            saved = torch.load(out_dir / "mask.pt", weights_only=True)
            assert torch.equal(saved, app.viewer.mask)
            assert (saved & ball_ids).sum() > 0.9 * ball_ids.sum() and (saved & table_ids).sum() == 0
            assert (out_dir / "prompts.json").exists() and (out_dir / "deleted.pt").exists()
            assert not app.viewer.errors, app.viewer.errors
    finally:
        app.viewer.stop()

    # Clean shutdown: no render workers left, the port is closed, no new non-daemon threads.
    wait_until(lambda: not any(t.name.startswith("render-client") for t in threading.enumerate()), 10,
               what="render workers to stop")
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0, "server still listening"
    wait_until(lambda: not [t for t in threading.enumerate()
                            if t.ident not in threads_before and not t.daemon and t.is_alive()], 10,
               what="non-daemon threads to end")
