"""LSeg forward time per view on CPU (fp32, 2 threads) and peak memory, at 480x480 and a 480x640-ish demo size.

Random weights (timing does not depend on them). Each resolution runs in a fresh subprocess so that the peak
resident memory (`ru_maxrss`) belongs to that resolution alone. Writes benchmarks/results/bench_lseg.json.

    .venv/bin/python benchmarks/bench_lseg.py [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SIZES = [(480, 480), (480, 640), (480, 736)]  # 736 = what LSegSource makes of a 648x420 (garden) render


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KB


def worker(h: int, w: int, repeats: int, threads: int) -> dict:
    import torch

    sys.path.insert(0, str(ROOT))
    from lseg.net import LSegNet

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    net = LSegNet().eval()
    build_s = time.perf_counter() - t0
    rss_model = _rss_mb()
    x = torch.rand(1, 3, h, w)
    times = []
    with torch.inference_mode():
        for _ in range(repeats + 1):  # first run is warm-up
            t0 = time.perf_counter()
            out = net(x)
            times.append(time.perf_counter() - t0)
    assert out.shape == (1, 512, h // 2, w // 2)
    t = sorted(times[1:])
    return {
        "height": h,
        "width": w,
        "threads": threads,
        "dtype": "float32",
        "repeats": repeats,
        "forward_s_median": t[len(t) // 2],
        "forward_s_min": t[0],
        "warmup_s": times[0],
        "build_random_s": build_s,
        "rss_after_model_mb": rss_model,
        "peak_rss_mb": _rss_mb(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--one", type=int, nargs=2, metavar=("H", "W"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(worker(*args.one, args.repeats, args.threads)))
        return

    rows = []
    for h, w in SIZES:
        cmd = [sys.executable, __file__, "--one", str(h), str(w), "--repeats", str(args.repeats),
               "--threads", str(args.threads)]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
        r = rows[-1]
        print(f"{h}x{w}: {r['forward_s_median']:.2f} s/view, peak {r['peak_rss_mb']:.0f} MB", flush=True)

    print(f"\n{'input':>9} | {'s/view (median)':>15} | {'min':>6} | {'warm-up':>7} | {'model MB':>8} | {'peak MB':>7}")
    for r in rows:
        print(f"{r['height']:>4}x{r['width']:<4} | {r['forward_s_median']:>15.2f} | {r['forward_s_min']:>6.2f} | "
              f"{r['warmup_s']:>7.2f} | {r['rss_after_model_mb']:>8.0f} | {r['peak_rss_mb']:>7.0f}")

    out_dir = ROOT / "benchmarks" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": "lseg_forward_cpu",
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "load_average_at_end": os.getloadavg(),
        "rows": rows,
    }
    with tempfile.NamedTemporaryFile("w", dir=out_dir, suffix=".tmp", delete=False) as f:
        json.dump(payload, f, indent=2)
    os.replace(f.name, out_dir / "bench_lseg.json")
    print(f"\nwrote {out_dir / 'bench_lseg.json'}")


if __name__ == "__main__":
    main()
