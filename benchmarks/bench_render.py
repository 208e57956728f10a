"""CPU rasterizer benchmark: per-view time for RGB renders and Contributions-only, with stage breakdown.

Scenes: the shared plant `.splat` (113k Gaussians) from orbit cameras, and a 1M-Gaussian synthetic scene, both at
1297x840. Times are warm (numba compile excluded and reported separately), median of `--repeats` views.

    .venv/bin/python benchmarks/bench_render.py [--plant PATH] [--repeats 3] [--skip-1m]

Prints a table and writes benchmarks/results/bench_render.json (atomically).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numba
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, synthetic_splats  # noqa: E402

from utils.camera import Camera, look_at  # noqa: E402
from utils.projection import project  # noqa: E402
from utils.raster_cpu import bin_tiles, rasterize, rasterize_contributions  # noqa: E402
from utils.render import _sh_colors, render, render_contributions  # noqa: E402
from utils.scene_io import load_scene  # noqa: E402
from utils.splats import Splats  # noqa: E402

W, H = 1297, 840


def _orbit(centre: torch.Tensor, dist: float, n: int, elevation: float = 20.0) -> list[Camera]:
    up = torch.tensor([0.0, -1.0, 0.0])
    cams = []
    for i in range(n):
        az = 2 * np.pi * i / n
        el = np.radians(elevation)
        off = torch.tensor([np.cos(el) * np.sin(az), -np.sin(el), -np.cos(el) * np.cos(az)], dtype=torch.float32)
        cams.append(look_at((centre + dist * off).tolist(), centre.tolist(), up.tolist(), W, H, 50.0))
    return cams


def _time(fn, repeats: int) -> tuple[float, float, object]:
    """Median wall time, median process CPU time (all threads) and the last result."""
    ts, cs, out = [], [], None
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        out = fn()
        ts.append(time.perf_counter() - t0)
        cs.append(time.process_time() - c0)
    return float(np.median(ts)), float(np.median(cs)), out


def _per_view(fn, cams: list[Camera]) -> tuple[float, float, object]:
    ws, cs, out = [], [], None
    for c in cams:
        w, cpu, out = _time(lambda c=c: fn(c), 1)
        ws.append(w)
        cs.append(cpu)
    return float(np.median(ws)), float(np.median(cs)), out


def bench_scene(name: str, splats: Splats, cams: list[Camera], repeats: int) -> dict:
    cam = cams[0]
    cams = cams[:repeats]
    rgb_w, rgb_c, _ = _per_view(lambda c: render(splats, c, backend="cpu"), cams)
    con_w, con_c, contrib = _per_view(lambda c: render_contributions(splats, c, backend="cpu"), cams)
    both_w, both_c, _ = _per_view(lambda c: render(splats, c, backend="cpu", return_contributions=True), cams)
    # Stage breakdown on the first view.
    t_proj, c_proj, proj = _time(lambda: project(splats, cam), repeats)
    t_bin, c_bin, bins = _time(lambda: bin_tiles(proj), repeats)
    t_sh, c_sh, cols = _time(lambda: _sh_colors(splats, cam, None, proj.valid), repeats)
    t_comp, c_comp, _ = _time(lambda: rasterize(proj, cols, bins=bins), repeats)
    t_cont, c_cont, _ = _time(lambda: rasterize_contributions(proj, bins=bins), repeats)
    feats = torch.randn(splats.num, 64)
    t_f64, c_f64, _ = _time(lambda: rasterize(proj, feats, bins=bins), max(1, repeats // 2))
    return {
        "scene": name,
        "gaussians": splats.num,
        "visible": int(proj.valid.sum()),
        "tile_isects": bins.num_isects,
        "contributions": contrib.num,
        "contrib_MB": round((contrib.pixel.nbytes + contrib.gaussian.nbytes + contrib.weight.nbytes) / 2**20, 1),
        "views": len(cams),
        "wall_s": {
            "render_rgb": rgb_w, "contributions_only": con_w, "render_rgb_plus_contrib": both_w,
            "stage_project": t_proj, "stage_sort_bin": t_bin, "stage_sh": t_sh, "stage_composite_rgb": t_comp,
            "stage_contrib": t_cont, "stage_composite_64ch": t_f64,
        },
        "cpu_s": {
            "render_rgb": rgb_c, "contributions_only": con_c, "render_rgb_plus_contrib": both_c,
            "stage_project": c_proj, "stage_sort_bin": c_bin, "stage_sh": c_sh, "stage_composite_rgb": c_comp,
            "stage_contrib": c_cont, "stage_composite_64ch": c_f64,
        },
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--plant", type=Path, default=ROOT.parent / "shared" / "data" / "plant" / "plant.splat")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-1m", action="store_true")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "bench_render.json")
    args = ap.parse_args()

    # Compile time: first call on a tiny scene compiles (or loads from cache) every kernel.
    tiny = synthetic_splats(500, 1)
    tcam = look_at([0, 0, -6], [0, 0, 0], [0, -1, 0], 64, 48)
    t0 = time.perf_counter()
    render(tiny, tcam, backend="cpu", return_contributions=True, render_mode="RGB+D")
    render_contributions(tiny, tcam, backend="cpu")
    rasterize(project(tiny, tcam), torch.randn(tiny.num, 64))
    compile_s = time.perf_counter() - t0

    rows = []
    if args.plant.exists():
        plant = load_scene(args.plant)
        centre = plant.means.median(dim=0).values
        rows.append(bench_scene("plant (.splat)", plant, _orbit(centre, 1.6, args.repeats), args.repeats))
    else:
        print(f"plant scene not found at {args.plant}: skipped", file=sys.stderr)
    if not args.skip_1m:
        syn = synthetic_splats(1_000_000)
        rows.append(bench_scene("synthetic 1M", syn, _orbit(torch.zeros(3), 4.5, args.repeats), args.repeats))

    info = {
        "resolution": [W, H],
        "threads": numba.get_num_threads(),
        "threading_layer": numba.threading_layer(),
        "cpu": platform.processor() or platform.machine(),
        "loadavg_1min_at_end": os.getloadavg()[0],
        "compile_or_cache_load_s": compile_s,
        "note": "wall = median per view; cpu = process CPU time over all threads (robust to other load on the host)",
        "results": rows,
    }
    print(f"CPU rasterizer, {W}x{H}, {info['threads']} threads ({info['threading_layer']}); first call (numba compile "
          f"or cache load) {compile_s:.2f} s; 1-min load average {info['loadavg_1min_at_end']:.1f}")  # fmt: skip
    keys = [("render_rgb", "RGB"), ("contributions_only", "contrib-only"), ("render_rgb_plus_contrib", "RGB+contrib"),
            ("stage_project", "project"), ("stage_sort_bin", "sort+bin"), ("stage_sh", "SH"),
            ("stage_composite_rgb", "composite"), ("stage_contrib", "contrib pass"),
            ("stage_composite_64ch", "64-ch composite")]  # fmt: skip
    for r in rows:
        print(f"\n{r['scene']}: {r['gaussians']:,} Gaussians, {r['visible']:,} visible, {r['tile_isects']:,} tile "
              f"intersections, {r['contributions']:,} contributions ({r['contrib_MB']} MB), {r['views']} views")  # fmt: skip
        print(f"  {'seconds':<16}{'wall':>8}{'cpu':>8}")
        for k, label in keys:
            print(f"  {label:<16}{r['wall_s'][k]:8.3f}{r['cpu_s'][k]:8.3f}")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=args.out.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(info, f, indent=2)
    os.replace(tmp, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
