"""End to end: the sentence-driven editor in headless chromium on the demo scene, with the offline `rules` assistant.

Typed into the page's command box (Enter submits): "make the ball red" -> the ball's pixels turn red, the table's do
not; "top view" -> the browser camera looks straight down; "undo" -> the camera comes back; "undo" -> the ball is
yellow again. Pixel checks use ground-truth label maps of the demo scene from the browser's camera.
"""

from __future__ import annotations

import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from browser_util import (
    ViewTruth, browser_page, canvas_box, frac_close, free_port, lift_demo_features, pick_demo_view, require_browser,
    screenshot_rgb, show_view, wait_shown, wait_until,
)
from utils.demo_scene import COLORS

ROOT = Path(__file__).resolve().parents[1]
SHOT = Path("/tmp/llm_browser_red_ball.png")


def _red(cols: np.ndarray) -> float:
    return float(((cols[:, 0] > 0.5) & (cols[:, 1] < 0.2) & (cols[:, 2] < 0.2)).mean())


@pytest.mark.slow
def test_llm_editor_in_browser(tmp_path: Path):
    require_browser()
    from utils.llm_app import run_llm_viewer

    features = lift_demo_features(tmp_path / "lifted")
    port = free_port()
    cfg = SimpleNamespace(checkpoint=None, data_dir=None, features=features, demo=True, port=port, host="127.0.0.1",
                          assistant="rules", out=tmp_path / "llm")
    app = run_llm_viewer(cfg, block=False, max_render_width=320)
    v = app.viewer
    labels = torch.load(ROOT / "data" / "demo" / "gaussian_labels.pt", weights_only=True)
    try:
        with browser_page() as page:
            page.goto(v.url)
            cid = v.wait_for_client(60)
            v.wait_for_frame(cid, 0, 60)
            client = v.server.get_clients()[cid]
            view = v.cameras[pick_demo_view(v.original, labels, v.cameras)]
            show_view(v, cid, view)
            gt = ViewTruth(v, client, v.original, labels)
            box = canvas_box(page)
            command = page.locator("form input:not([type=hidden])").first

            def type_command(text: str, n_done: int) -> None:
                command.fill(text)
                command.press("Enter")
                wait_until(lambda: app.commands_done == n_done, 20, what=f"the command {text!r} to run")

            def colours():
                img = screenshot_rgb(page)
                return gt.region_colors(img, box, "ball"), gt.region_colors(img, box, "table")

            # The first frame of the chosen view may still be on its way to the page: poll, same bounds.
            wait_shown(v, cid)
            wait_until(lambda: (lambda b, t: frac_close(b, COLORS["ball"]) > 0.8
                                and frac_close(t, COLORS["table"]) > 0.8)(*colours()),
                       20, 0.2, what="the ball and table in their own colours in the browser")

            # "make the ball red": ball pixels red, table pixels unchanged
            type_command("make the ball red", 1)
            assert "painted ball red" in app.transcript[-2]
            wait_shown(v, cid)
            wait_until(lambda: (lambda b, t: _red(b) > 0.8 and frac_close(t, COLORS["table"]) > 0.8)(*colours()),
                       20, 0.2, what="a red ball next to a brown table in the browser")
            page.screenshot(path=str(SHOT))
            assert _red(colours()[1]) < 0.05
            # the transcript is shown in the panel
            assert page.get_by_text("painted ball red").count() >= 1

            # "top view": the browser camera looks straight down (-z in the z-up demo world)
            type_command("top view", 2)

            def looks_down():
                cam = v.client_camera(client)
                return cam is not None and float(cam.c2w[:3, 2] @ torch.tensor([0.0, 0.0, -1.0])) > 0.99

            wait_until(looks_down, 20, what="the top view")
            f = v.wait_for_frame(cid, 0, 30, predicate=lambda f: f.camera is not None
                                 and float(f.camera.c2w[:3, 2] @ torch.tensor([0.0, 0.0, -1.0])) > 0.99)
            assert f.camera is not None

            # "undo": back to the previous camera; "undo" again: the ball is yellow again
            type_command("undo", 3)
            show_frame = v.wait_for_frame(cid, 0, 30, predicate=lambda f: f.camera is not None
                                          and torch.allclose(f.camera.viewmat, view.viewmat, atol=1e-3))
            assert show_frame.camera is not None
            type_command("undo", 4)
            wait_shown(v, cid)
            wait_until(lambda: (lambda b, t: frac_close(b, COLORS["ball"]) > 0.8 and _red(b) < 0.05)(*colours()),
                       20, 0.2, what="the yellow ball after undo")
            assert torch.equal(v.scene.sh0, v.original.sh0)
            type_command("undo", 5)
            assert app.transcript[-2] == "→ nothing to undo"
            assert not v.errors, v.errors
    finally:
        app.editor.stop_orbit()
        v.stop()
    wait_until(lambda: not any(t.name.startswith("render-client") for t in threading.enumerate()), 10,
               what="render workers to stop")
