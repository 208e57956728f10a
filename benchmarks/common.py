"""Shared pieces of the benchmark scripts: synthetic scenes, machine facts, tables and result files."""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from utils.atomic import atomic_write_text  # noqa: E402
from utils.splats import Splats  # noqa: E402

PLANT = ROOT.parent / "shared" / "data" / "plant" / "plant.splat"
RESULTS = ROOT / "benchmarks" / "results"


def synthetic_splats(n: int, seed: int = 0) -> Splats:
    """n Gaussians in a 4x4x4 box around the origin with plausible trained-scene statistics (SH degree 0)."""
    g = torch.Generator().manual_seed(seed)
    return Splats(
        means=(torch.rand(n, 3, generator=g) - 0.5) * 4.0,
        quats=torch.randn(n, 4, generator=g),
        scales=torch.randn(n, 3, generator=g) * 0.5 - 4.6,
        opacities=torch.randn(n, generator=g) * 2.0,
        sh0=torch.randn(n, 1, 3, generator=g) * 0.5,
        shN=torch.zeros(n, 0, 3),
    )


def machine_info() -> dict:
    import numba

    return {
        "date": datetime.date.today().isoformat(),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "numba_threads": numba.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def print_table(rows: list[dict], cols: list[tuple[str, str, str]]) -> None:
    """cols: (key, header, format)."""
    table = [[c[1] for c in cols]] + [[c[2].format(r[c[0]]) if r.get(c[0]) is not None else "-" for c in cols] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
    for row in table:
        print("  ".join(v.rjust(w) for v, w in zip(row, widths)))


def write_results(name: str, info: dict) -> Path:
    path = RESULTS / f"{name}.json"
    atomic_write_text(json.dumps(info, indent=2), path)
    print(f"wrote {path}")
    return path
