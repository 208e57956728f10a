"""Click -> updated frame latency of the click-and-segment app, server side and as seen in a real browser.

    .venv/bin/python benchmarks/bench_click.py                   # demo + shared plant scene, 5 clicks each
    .venv/bin/python benchmarks/bench_click.py --scenes demo --clicks 3 --width 320

Per click (view mode "extracted", so the frame changes visibly once the selection exists):
  pick      server: render unit features + expected depth at the client camera, read the pixel
  update    server: score the prompts, rebuild the panel/markers, request the redraw
  render    server: the redraw itself (RGB render of the selection at the client's render size)
  server    click message received -> new frame handed to the websocket
  browser   playwright mouse click -> first screenshot whose pixels (away from the marker) changed
            (resolution = one screenshot poll, printed as poll_ms)
Scenes: the demo with its lifted label features (D=5); the plant .splat (113k Gaussians, SH0) from ../shared with
orbit cameras and synthetic D=512 features (the feature cost of an LSeg field; the selection itself is meaningless).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from io import BytesIO
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from browser_util import browser_page, canvas_box, require_browser, show_view, wait_shown, wait_until  # noqa: E402
from utils.click_app import ClickApp, ClickAppOptions, ClickSegmenter  # noqa: E402
from utils.features_file import FeatureField  # noqa: E402
from utils.viewer import Viewer, ViewerOptions, project_points  # noqa: E402

PLANT = ROOT.parent / "shared" / "data" / "plant" / "plant.splat"


def load_demo():
    import backproject
    from utils.features_file import load_feature_field
    from utils.scene_args import SceneArgs, load_scene_and_cameras

    splats, cams = load_scene_and_cameras(SceneArgs(demo=True), verbose=False)
    path = ROOT / "results" / "demo" / "features_maps.pt"
    if not path.exists():
        backproject.main(backproject.Args(scene=SceneArgs(demo=True), results_dir=path.parent, quiet=True))
    labels = torch.load(ROOT / "data" / "demo" / "gaussian_labels.pt", weights_only=True)
    target = splats.means[labels == 2].mean(0)  # the ball
    return splats, cams, load_feature_field(path, splats), target, "lifted labels, D=5", None


def load_plant():
    from utils.camera_paths import orbit_for_scene
    from utils.scene_io import load_scene

    splats = load_scene(PLANT)
    cams = orbit_for_scene(splats, 24, 640, 480)
    g = torch.Generator().manual_seed(0)
    rgb = (splats.sh0[:, 0] * 0.28209479177387814 + 0.5).clamp(0, 1)
    feats = rgb @ torch.randn(3, 512, generator=g) + 0.1 * torch.randn(splats.num, 512, generator=g)
    ff = FeatureField(feats, torch.ones(splats.num), {"space": "features"})
    # a high threshold so the selection (leaves of a similar colour) differs visibly from the whole plant
    return splats, cams, ff, None, "synthetic, D=512", 0.97


def _png(b: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(BytesIO(b)).convert("RGB"), dtype=np.float32) / 255.0


def bench_scene(name: str, loader, clicks: int, width: int) -> dict:
    splats, cams, ff, target, feat_desc, threshold = loader()
    viewer = Viewer(splats, cams, ViewerOptions(port=0, max_render_width=width), title=f"bench {name}")
    app = ClickApp(viewer, ClickSegmenter(splats, ff, threshold=threshold), ClickAppOptions(save_views=0))
    rows = []
    try:
        with browser_page() as page:
            page.goto(viewer.url)
            cid = viewer.wait_for_client(60)
            viewer.wait_for_frame(cid, 0, 60)
            show_view(viewer, cid, cams[0 if name != "demo" else 2], timeout=60)
            client = viewer.server.get_clients()[cid]
            cam = viewer.client_camera(client)
            box = canvas_box(page)
            if target is not None:
                uv, _ = project_points(cam, target[None])
                x, y = float(uv[0, 0]), float(uv[0, 1])
            else:  # the opaque pixel nearest the image centre
                from utils.render import render

                a = render(splats, cam).alpha
                ys, xs = torch.nonzero(a > 0.9, as_tuple=True)
                k = int(torch.argmin((xs - cam.width / 2) ** 2 + (ys - cam.height / 2) ** 2))
                x, y = float(xs[k]) + 0.5, float(ys[k]) + 0.5
            px, py = box.page_point(x / cam.width, y / cam.height)
            # a small region around the click keeps each screenshot poll short (software WebGL is slow)
            cx0 = min(max(px - 150, box.x), box.x + box.width - 300)
            cy0 = min(max(py - 150, box.y), box.y + box.height - 300)
            clip = {"x": cx0, "y": cy0, "width": 300, "height": 300}
            viewer.set_mode("extracted")
            hh, ww = int(clip["height"]), int(clip["width"])
            yy, xx = np.mgrid[0:hh, 0:ww]
            away = ((xx + clip["x"] - px) ** 2 + (yy + clip["y"] - py) ** 2) > 45**2  # not the marker
            for i in range(clicks):
                app.clear()
                wait_shown(viewer, cid, 60)
                time.sleep(0.3)  # let the browser paint the full frame before the baseline
                base = _png(page.screenshot(clip=clip, type="jpeg", quality=80))
                n_before = len(app.timings)
                polls = []
                t_click = time.time()
                page.mouse.click(px, py)

                def changed():
                    t = time.time()
                    img = _png(page.screenshot(clip=clip, type="jpeg", quality=80))
                    polls.append(time.time() - t)
                    d = np.abs(img[: base.shape[0], : base.shape[1]] - base).max(axis=2)
                    return float((d[away[: d.shape[0], : d.shape[1]]] > 0.15).mean()) > 0.02

                try:
                    wait_until(changed, 30, 0.0, what="the browser frame to change")
                except TimeoutError:
                    page.screenshot(path="/tmp/bench_click_timeout.png")
                    print(f"{name} click {i}: no visible change (prompts={len(app.seg.prompts)}, "
                          f"timings={len(app.timings) - n_before}, pick={app.last_pick})", file=sys.stderr)
                    raise
                t_seen = time.time()
                wait_until(lambda: len(app.timings) > n_before, 30, what="the click timing")
                tm = app.timings[-1]
                fr = viewer.wait_for_frame(cid, 0, 30, predicate=lambda f: f.scene_version >= tm.version)
                rows.append({
                    "pick_s": tm.pick_seconds, "update_s": tm.update_seconds, "render_s": fr.render_seconds,
                    "server_s": fr.sent_at - tm.received_at, "browser_s": t_seen - t_click,
                    "poll_s": statistics.mean(polls), "selected": int(viewer.mask.sum()) if viewer.mask is not None else 0,
                })
    finally:
        viewer.stop()
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0] if k != "selected"}
    return {"scene": name, "gaussians": splats.num, "features": feat_desc, "render_size": [cam.width, cam.height],
            "clicks": rows, "median": med}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenes", nargs="+", default=["demo", "plant"], choices=["demo", "plant"])
    ap.add_argument("--clicks", type=int, default=5)
    ap.add_argument("--width", type=int, default=640, help="server render width (height from the browser aspect)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "bench_click.json")
    a = ap.parse_args()
    require_browser()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    results = []
    for s in a.scenes:
        if s == "plant" and not PLANT.exists():
            print(f"skipping plant: {PLANT} not found")
            continue
        results.append(bench_scene(s, load_demo if s == "demo" else load_plant, a.clicks, a.width))
    hdr = f"{'scene':<7}{'gaussians':>10} {'render':>9} {'features':<20}{'pick':>7}{'update':>8}{'render':>8}{'server':>8}{'browser':>9}{'poll':>7}"
    print(hdr)
    print("-" * len(hdr))
    for r in results:
        m = r["median"]
        print(f"{r['scene']:<7}{r['gaussians']:>10,} {r['render_size'][0]:>4}x{r['render_size'][1]:<4} {r['features']:<20}"
              f"{m['pick_s']*1e3:>6.0f}ms{m['update_s']*1e3:>6.0f}ms{m['render_s']*1e3:>6.0f}ms{m['server_s']*1e3:>6.0f}ms"
              f"{m['browser_s']*1e3:>7.0f}ms{m['poll_s']*1e3:>5.0f}ms")
    print(f"(medians over {a.clicks} clicks; CPU renderer, {torch.get_num_threads()} threads)")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"created": time.strftime("%Y-%m-%d %H:%M:%S"), "cpu_threads": torch.get_num_threads(),
            "cuda": torch.cuda.is_available(), "viewport": "1100x700", "clicks": a.clicks}
    from utils.atomic import atomic_write_text

    atomic_write_text(json.dumps({"meta": meta, "results": results}, indent=1) + "\n", a.out)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
