"""End-to-end back-projection on the demo scene: `backproject.py --demo` (label maps) and `--features lseg`.

LSeg runs with random weights in the checkpoint layout (the real weights cannot be downloaded here); its cost does not
depend on the weight values. Each run is a fresh subprocess with a fresh results folder, timed from the outside, and
split into rendering+lifting vs the feature model using the per-stage timer of a second in-process run.

    .venv/bin/python benchmarks/bench_end_to_end.py [--skip-lseg]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, machine_info, print_table, write_results  # noqa: E402


def _run(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def _lseg_breakdown(ckpt: Path, out: Path) -> dict:
    """Time the LSeg forward and the rest separately over the demo's training views (in this process)."""
    from utils.backprojection import LiftOptions, lift_features
    from utils.feature_sources.base import FeatureSource
    from utils.feature_sources.lseg_source import LSegSource
    from utils.scene_args import SceneArgs, load_scene_and_cameras

    class Timed(FeatureSource):
        def __init__(self, inner: FeatureSource) -> None:
            self.inner, self.info, self.batch_size, self.seconds = inner, inner.info, inner.batch_size, 0.0

        def __call__(self, images, cameras):
            t0 = time.perf_counter()
            out = self.inner(images, cameras)
            self.seconds += time.perf_counter() - t0
            return out

    splats, cams = load_scene_and_cameras(SceneArgs(demo=True), verbose=False)
    cams = [c for i, c in enumerate(cams) if i % 8 != 0]
    source = Timed(LSegSource(ckpt))
    t0 = time.perf_counter()
    lift_features(splats, cams, source, out, LiftOptions(progress=False, resume=False))
    total = time.perf_counter() - t0
    return {"views": len(cams), "model_s": source.seconds, "total_s": total, "rest_s": total - source.seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--skip-lseg", action="store_true")
    args = ap.parse_args()
    py = sys.executable
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        _run([py, "backproject.py", "--demo", "--results-dir", str(tmp / "warm"), "--quiet"])  # builds data/demo, numba cache
        t = _run([py, "backproject.py", "--demo", "--results-dir", str(tmp / "maps"), "--quiet"])
        rows.append({"run": "backproject.py --demo (maps, 21 views 320x240)", "wall_s": t})
        if not args.skip_lseg:
            from lseg import LSegNet

            ckpt = tmp / "lseg_random.ckpt"
            torch.manual_seed(0)
            torch.save({k: v.half() if v.is_floating_point() else v for k, v in LSegNet().state_dict().items()}, ckpt)
            t = _run([py, "backproject.py", "--demo", "--features", "lseg", "--lseg-checkpoint", str(ckpt),
                      "--results-dir", str(tmp / "lseg"), "--quiet"])  # fmt: skip
            rows.append({"run": "backproject.py --demo --features lseg (21 views, LSeg 480x640)", "wall_s": t})
            b = _lseg_breakdown(ckpt, tmp / "lseg2" / "f.pt")
            rows.append({"run": "  of which LSeg forward (in-process)", "wall_s": b["model_s"]})
            rows.append({"run": "  of which render + lifting (in-process)", "wall_s": b["rest_s"]})
    print_table(rows, [("run", "run", "{}"), ("wall_s", "seconds", "{:.1f}")])
    write_results("bench_end_to_end", {"machine": machine_info(), "results": rows})


if __name__ == "__main__":
    main()
