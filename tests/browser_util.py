"""Headless-browser helpers shared by the browser tests: Debian chromium driven by Python playwright.

Never runs `playwright install`: the browser is the system's /usr/bin/chromium (tests/ensure_browser.sh installs it
in CI). Tests that need it call `require_browser()`, which skips with a clear reason when it is missing.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pytest

CHROMIUM = Path(os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium"))
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
VIEWPORT = {"width": 1100, "height": 700}


def require_browser() -> None:
    """Skip the calling test unless chromium and playwright are available."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not found: install Debian's chromium (tests/ensure_browser.sh) to run browser tests")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip("python playwright is not installed (pip install playwright; never `playwright install`)")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(fn: Callable[[], Any], timeout: float = 30.0, interval: float = 0.05, what: str = "condition") -> Any:
    """Poll `fn()` until it returns something truthy (returned) or `timeout` seconds pass (TimeoutError)."""
    deadline = time.time() + timeout
    last_exc: Exception | None = None
    while time.time() < deadline:
        try:
            v = fn()
            if v:
                return v
        except Exception as e:  # keep polling through transient states
            last_exc = e
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout} s waiting for {what}" + (f" (last error: {last_exc})" if last_exc else ""))


@contextlib.contextmanager
def browser_page(viewport: dict | None = None) -> Iterator[Any]:
    """A fresh chromium (own temporary profile) with one page; closed and cleaned up afterwards."""
    from playwright.sync_api import sync_playwright

    profile = tempfile.mkdtemp(prefix="pw-profile-")
    try:
        with sync_playwright() as p:
            ctx = p.chromium.launch_persistent_context(
                profile, executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS,
                viewport=viewport or VIEWPORT,
            )
            try:
                page = ctx.pages[0] if ctx.pages else ctx.new_page()
                page.set_default_timeout(30_000)
                yield page
            finally:
                ctx.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


@dataclass
class CanvasBox:
    """The 3D canvas on the page, in CSS pixels."""

    x: float
    y: float
    width: float
    height: float

    def page_point(self, sx: float, sy: float) -> tuple[float, float]:
        """Screen position (0..1 from the canvas's top-left) -> page coordinates."""
        return self.x + sx * self.width, self.y + sy * self.height


def canvas_box(page) -> CanvasBox:
    """Bounding box of the largest canvas (the three.js view)."""
    boxes = [c.bounding_box() for c in page.locator("canvas").all()]
    boxes = [b for b in boxes if b and b["width"] > 50 and b["height"] > 50]
    if not boxes:
        raise AssertionError("no 3D canvas on the page")
    b = max(boxes, key=lambda b: b["width"] * b["height"])
    return CanvasBox(b["x"], b["y"], b["width"], b["height"])


def screenshot_rgb(page, path: str | Path | None = None) -> np.ndarray:
    """[H, W, 3] float in [0, 1] of the page (CSS pixels at device scale 1)."""
    from io import BytesIO

    from PIL import Image

    png = page.screenshot(path=str(path) if path else None)
    return np.asarray(Image.open(BytesIO(png)).convert("RGB"), dtype=np.float32) / 255.0


def patch_color(img: np.ndarray, x: float, y: float, r: int = 3) -> np.ndarray:
    """Median colour [3] of the (2r+1)^2 patch of `img` around page point (x, y)."""
    xi, yi = int(round(x)), int(round(y))
    patch = img[max(0, yi - r): yi + r + 1, max(0, xi - r): xi + r + 1].reshape(-1, 3)
    return np.median(patch, axis=0)


def thread_names() -> set[str]:
    return {t.name for t in threading.enumerate() if t.is_alive()}


def lift_demo_features(results_dir: str | Path) -> Path:
    """The demo's label maps lifted onto its Gaussians by backproject.py (the real pipeline), written to results_dir."""
    import backproject
    from utils.scene_args import SceneArgs

    return backproject.main(backproject.Args(scene=SceneArgs(demo=True), results_dir=Path(results_dir), quiet=True))


def interior_pixel(labels, cls: int) -> tuple[float, float] | None:
    """(x, y) pixel centre deepest inside the region labels == cls ([H, W] int tensor), or None if absent.

    Depth = number of 3x3 erosions the pixel survives, so a click there lands well inside the object.
    """
    import torch

    m = (labels == cls).float()[None, None]
    if m.sum() == 0:
        return None
    depth = torch.zeros_like(m)
    cur = m
    while cur.sum() > 0:
        depth += cur
        cur = -torch.nn.functional.max_pool2d(-cur, 3, stride=1, padding=1)  # erosion
    d = depth[0, 0]
    idx = int(torch.argmax(d))
    y, x = divmod(idx, d.shape[1])
    return x + 0.5, y + 0.5


# ---------------------------------------------------------------------------------------------------------------
# Ground truth of the demo scene for what the browser shows
# ---------------------------------------------------------------------------------------------------------------


def erode(m, k: int):
    """[H, W] bool mask eroded k times with a 3x3 structuring element."""
    import torch

    x = m.float()[None, None]
    for _ in range(k):
        x = -torch.nn.functional.max_pool2d(-x, 3, stride=1, padding=1)
    return x[0, 0] > 0.5


class ViewTruth:
    """The client's current render camera and the demo's ground-truth label map seen from it."""

    def __init__(self, viewer, client, splats, labels):
        from utils.demo_scene import CLASS_NAMES, render_label_map

        self.class_names = CLASS_NAMES
        self.cam = viewer.client_camera(client)
        self.lab = render_label_map(splats, labels, self.cam, len(CLASS_NAMES)).long()

    def page_xy(self, box: CanvasBox, x: float, y: float) -> tuple[float, float]:
        """Render-pixel coordinates -> page coordinates (the background image fills the canvas)."""
        return box.page_point(x / self.cam.width, y / self.cam.height)

    def region_colors(self, img: np.ndarray, box: CanvasBox, name: str, avoid=(), n: int = 300,
                      avoid_radius: float = 35.0) -> np.ndarray:
        """[M, 3] screenshot colours at page points inside the (eroded) GT region of `name`, away from `avoid`."""
        import torch

        m = erode(self.lab == self.class_names.index(name), 2)
        ys, xs = torch.nonzero(m, as_tuple=True)
        assert len(ys) > 20, f"the {name} is hardly visible"
        sel = torch.linspace(0, len(ys) - 1, min(n, len(ys))).long()
        out = []
        for y, x in zip(ys[sel].tolist(), xs[sel].tolist()):
            px, py = self.page_xy(box, x + 0.5, y + 0.5)
            if any((px - ax) ** 2 + (py - ay) ** 2 < avoid_radius**2 for ax, ay in avoid):
                continue
            out.append(img[int(py), int(px)])
        return np.array(out)


def frac_close(cols: np.ndarray, rgb, tol: float = 0.16) -> float:
    """Share of colours [M, 3] within `tol` (max abs per channel) of `rgb`."""
    return float((np.abs(cols - np.asarray(rgb, dtype=np.float32)[None]).max(axis=1) < tol).mean())


def pick_demo_view(splats, labels, cameras, names=("ball", "table")) -> int:
    """Index of a camera where the named objects are well visible in the left 60% of the canvas (the control panel
    covers the right part) and below the top-left notification area."""
    import torch

    from utils.demo_scene import CLASS_NAMES, render_label_map

    for i, cam in enumerate(cameras):
        lab = render_label_map(splats, labels, cam, len(CLASS_NAMES))
        ok = True
        for name in names:
            ys, xs = torch.nonzero(lab == CLASS_NAMES.index(name), as_tuple=True)
            if len(ys) < 300:
                ok = False
                break
            cx, cy = xs.float().mean() / cam.width, ys.float().mean() / cam.height
            ok &= bool(0.3 < cx < 0.6 and 0.3 < cy < 0.95)
        if ok:
            return i
    raise AssertionError(f"no demo view shows {names} in the free part of the canvas")


def show_view(viewer, client_id: int, camera, timeout: float = 30.0):
    """Move the client to `camera` from the server and wait for a frame rendered from it."""
    import torch

    client = viewer.server.get_clients()[client_id]
    viewer.set_client_camera(client, camera)
    return viewer.wait_for_frame(
        client_id, 0, timeout,
        predicate=lambda f: f.camera is not None and torch.allclose(f.camera.viewmat, camera.viewmat, atol=1e-3),
    )


def wait_shown(viewer, client_id: int, timeout: float = 30.0):
    """Wait until the client received a frame of the viewer's current state (scene, mask, mode)."""
    ver = viewer.version
    return viewer.wait_for_frame(client_id, 0, timeout, predicate=lambda f: f.scene_version >= ver)
