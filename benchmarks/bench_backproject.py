"""Back-projection accumulation benchmark (feature model excluded): weights + sum w F per view, against its floor.

For each scene (shared plant 113k, synthetic 1M / 5M) and D (64, 512) at 1297x840, in a fresh subprocess
(so peak memory is that configuration's): seconds per view for the weights (rasterizer contributions) and the
D-dimensional product, contributions per second, peak RSS, and the floor of the same run:
    compute floor = contributions * D * 2 FLOP / GEMM rate (torch matmul measured in the same process)
    memory floor  = (bytes of F read once + bytes of the accumulator written once) / copy bandwidth (same process)
    floor = max(compute, memory); ratio = measured time / floor.
Feature maps come full-resolution ("full") or at LSeg's output resolution (1/2 of a 480-short-side input,
"lseg-res"), where the engine folds the bilinear upsampling into the weights. The kernels are the native ones when
they can be built (FEATURE_SPLATTING_NATIVE=0 / =avx2 to measure numba's / the AVX2 build); the table says which.

    .venv/bin/python benchmarks/bench_backproject.py [--scenes plant,1m,5m] [--dims 64,512] [--views 2]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import PLANT, machine_info, print_table, synthetic_splats, write_results  # noqa: E402

W, H = 1297, 840


def _scene(name: str):
    from utils.camera import look_at

    if name == "plant":
        from utils.scene_io import load_scene

        splats = load_scene(PLANT)
        centre, dist = splats.means.median(dim=0).values, 1.6
    else:
        n = {"1m": 1_000_000, "5m": 5_000_000}[name]
        splats = synthetic_splats(n)
        centre, dist = torch.zeros(3), 4.5
    cams = []
    for i in range(4):
        a = 2 * np.pi * i / 4 + 0.3
        eye = centre + dist * torch.tensor([np.sin(a), -0.35, -np.cos(a)], dtype=torch.float32)
        cams.append(look_at(eye.tolist(), centre.tolist(), [0, -1, 0], W, H, 50.0, name=f"v{i}"))
    return splats, cams


def _gemm_rate(D: int) -> float:
    a, b = torch.randn(4096, 1024), torch.randn(1024, D)
    a @ b
    t0 = time.perf_counter()
    reps = 5
    for _ in range(reps):
        a @ b
    return reps * 2 * 4096 * 1024 * D / (time.perf_counter() - t0)


def _copy_bandwidth() -> float:
    """Bytes per second moved by a large tensor copy (counting the bytes read and the bytes written)."""
    src = torch.randn(64 * 2**20)
    dst = torch.empty_like(src)
    dst.copy_(src)
    t0 = time.perf_counter()
    for _ in range(3):
        dst.copy_(src)
    return 3 * 2 * src.numel() * 4 / (time.perf_counter() - t0)


def _render_contributions(splats, cam, workspace) -> int:
    from utils.feature_sources.base import FeatureMap
    from utils.lifting import view_weights

    return view_weights(splats, cam, FeatureMap(torch.zeros(cam.height, cam.width, 1)), workspace=workspace)[0].num


def run_one(scene: str, D: int, views: int, res: str) -> dict:
    from utils.feature_sources.base import FeatureMap
    from utils.lifting import Accumulator, accumulate_store, view_weights
    from utils.native import kernels_name
    from utils.raster_cpu import StoreWorkspace

    splats, cams = _scene(scene)
    workspace = StoreWorkspace()  # as a lifting job does: one per job, reused by every view
    # Warm-up: compile (or load from cache) every kernel on a tiny view, and size the workspace on a full one.
    small = cams[0].scaled(0.05)
    warm = Accumulator.zeros(splats.num, D)
    for fm in (FeatureMap(torch.randn(small.height, small.width, D)), FeatureMap(torch.randn(8, 12, D))):
        accumulate_store(warm, *view_weights(splats, small, fm, workspace=workspace))
    del warm
    fh, fw = (H, W) if res == "full" else (240, 368)
    view_weights(splats, cams[-1], FeatureMap(torch.zeros(fh, fw, 1)), workspace=workspace)

    acc = Accumulator.zeros(splats.num, D)
    g = torch.Generator().manual_seed(0)
    t_w, t_p, contribs = [], [], []
    for cam in cams[:views]:
        F = torch.randn(fh, fw, D, generator=g)
        F /= F.norm(dim=-1, keepdim=True)
        fmap = FeatureMap(F)
        t0 = time.perf_counter()
        store, feats = view_weights(splats, cam, fmap, workspace=workspace)
        t1 = time.perf_counter()
        accumulate_store(acc, store, feats)
        t2 = time.perf_counter()
        t_w.append(t1 - t0)
        t_p.append(t2 - t1)
        # The floor counts the render-size contributions (w > 0), whatever the map's resolution.
        contribs.append(_render_contributions(splats, cam, workspace) if res != "full" else store.num)
        del store, feats, fmap, F  # feats and fmap share F: keep no second map alive while the next one is drawn
    gemm, bw = _gemm_rate(D), _copy_bandwidth()
    M = float(np.mean(contribs))
    t_weights, t_product = float(np.median(t_w)), float(np.median(t_p))
    total = t_weights + t_product
    floor_compute = M * D * 2 / gemm
    floor_memory = (H * W * D * 4 + splats.num * D * 4) / (bw / 2)  # bw counts read+write bytes
    floor = max(floor_compute, floor_memory)
    return {
        "scene": scene,
        "gaussians": splats.num,
        "D": D,
        "features": res,
        "contributions": int(M),
        "weights_s": t_weights,
        "product_s": t_product,
        "total_s": total,
        "contrib_per_s": M / total,
        "gemm_gflops": gemm / 1e9,
        "copy_gbps": bw / 1e9,
        "floor_s": floor,
        "floor_compute_s": floor_compute,
        "floor_memory_s": floor_memory,
        "ratio": total / floor,
        "product_ratio": t_product / floor,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "kernels": kernels_name(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scenes", default="plant,1m,5m")
    ap.add_argument("--dims", default="64,512")
    ap.add_argument("--res", default="full,lseg-res")
    ap.add_argument("--views", type=int, default=2)
    ap.add_argument("--one", nargs=3, metavar=("SCENE", "D", "RES"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print("RESULT " + json.dumps(run_one(args.one[0], int(args.one[1]), args.views, args.one[2])))
        return
    rows = []
    for scene in args.scenes.split(","):
        for D in [int(d) for d in args.dims.split(",")]:
            for res in args.res.split(","):
                cmd = [sys.executable, __file__, "--one", scene, str(D), res, "--views", str(args.views)]
                out = subprocess.run(cmd, capture_output=True, text=True)
                line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
                if out.returncode != 0 or not line:
                    print(f"{scene} D={D} {res}: failed\n{out.stderr[-2000:]}", file=sys.stderr)
                    continue
                rows.append(json.loads(line[0][7:]))
                print_table(rows[-1:], COLS)
    print(f"\nback-projection accumulation, {W}x{H}, per view (median of {args.views})")
    print_table(rows, COLS)
    write_results("bench_backproject", {"machine": machine_info(), "resolution": [W, H], "results": rows})


COLS = [
    ("scene", "scene", "{}"), ("gaussians", "N", "{:,}"), ("D", "D", "{}"), ("features", "F res", "{}"),
    ("contributions", "contribs", "{:,}"), ("weights_s", "weights s", "{:.3f}"), ("product_s", "product s", "{:.3f}"),
    ("total_s", "total s", "{:.3f}"), ("contrib_per_s", "contrib/s", "{:.3g}"), ("floor_s", "floor s", "{:.3f}"),
    ("ratio", "total/floor", "{:.2f}"), ("product_ratio", "product/floor", "{:.2f}"), ("peak_rss_gb", "peak GB", "{:.1f}"),
    ("kernels", "kernels", "{}"),
]  # fmt: skip

if __name__ == "__main__":
    main()
