"""Segmentation quality of a lifted feature field against ground-truth label maps (protocol: utils/evaluation.py).

    python benchmarks/eval_segmentation.py --demo
        demo scene: lift the TRAIN label maps (clean, and with 20% of pixels relabelled at random), evaluate on the
        held-out TEST views with and without kNN clean-up; prints the table, writes
        benchmarks/results/eval_segmentation_demo.json
    python benchmarks/eval_segmentation.py --checkpoint ckpt.pt --data-dir COLMAP_DIR \
        --features results/<scene>/features_lseg.pt --labels-dir GT_LABELS [--test-views a.png,b.png | --split split.json]
        [--gaussian-labels labels.pt] [--clean-knn K]
"""

from __future__ import annotations

import datetime
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

import torch  # noqa: E402
import tyro  # noqa: E402

from utils.atomic import atomic_write_text  # noqa: E402
from utils.errors import UserError, run_cli  # noqa: E402
from utils.evaluation import (  # noqa: E402
    EvalResult, evaluate, lift_label_maps, load_labelled_views, write_noisy_labels,
)
from utils.features_file import load_feature_field  # noqa: E402
from utils.scene_args import SceneArgs, load_scene_and_cameras  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class Args:
    scene: Annotated[SceneArgs, tyro.conf.OmitArgPrefixes] = field(default_factory=SceneArgs)
    features: Path | None = None
    """Features file to evaluate (not needed with --demo)."""
    labels_dir: Path | None = None
    """Ground-truth label PNGs named like the images (255 = ignore) and classes.json."""
    split: Path | None = None
    """JSON {"test": [view names]} choosing the held-out views."""
    test_views: str = ""
    """Comma-separated held-out view names (alternative to --split)."""
    gaussian_labels: Path | None = None
    """Optional [N] int64 per-Gaussian ground truth (.pt) for 3D accuracy."""
    clean_knn: int = 8
    """K of the kNN clean-up row(s) (0 = only without clean-up)."""
    noise: float = 0.2
    """--demo: fraction of label-map pixels relabelled at random for the robustness rows."""
    seed: int = 0
    out: Path | None = None
    """JSON output (default benchmarks/results/eval_segmentation_<scene>.json)."""


@dataclass
class Row:
    noise: float
    clean_knn: int
    result: EvalResult

    def as_dict(self) -> dict:
        return {"noise": self.noise, "clean_knn": self.clean_knn, **self.result.to_dict()}


def format_rows(rows: list[Row]) -> str:
    """The summary table (one line per setting) followed by per-class IoU of the 3D masks."""
    names = rows[0].result.class_names
    head = f"{'noise':>6} {'kNN':>4} {'mIoU render':>12} {'acc render':>11} {'mIoU 3Dmask':>12} {'acc 3Dmask':>11} {'acc 3D':>7}  " + " ".join(
        f"{n[:7]:>7}" for n in names
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        e = r.result
        a3 = f"{e.acc_3d:7.4f}" if e.acc_3d is not None else f"{'-':>7}"
        lines.append(
            f"{r.noise:6.2f} {r.clean_knn:4d} {e.miou_rendered:12.4f} {e.acc_rendered:11.4f} {e.miou_mask:12.4f} "
            f"{e.acc_mask:11.4f} {a3}  " + " ".join(f"{v:7.4f}" for v in e.iou_mask)
        )
    lines.append("(last columns: IoU of each class's rendered 3D mask)")
    return "\n".join(lines)


def demo_rows(root: Path, work_dir: Path, clean_knn: int = 8, noise: float = 0.2, seed: int = 0,
              progress: bool = False) -> list[Row]:
    """The demo table: lift TRAIN label maps (clean / noisy), evaluate TEST views, with / without kNN clean-up."""
    from utils.feature_sources.maps_source import read_class_names

    splats, cameras = load_scene_and_cameras(SceneArgs(checkpoint=root / "ckpts" / "ckpt_demo.pt", data_dir=root), verbose=False)
    split = json.loads((root / "split.json").read_text())
    train = [c for c in cameras if c.name in set(split["train"])]
    names = read_class_names(root / "labels" / "classes.json")
    views = load_labelled_views(cameras, root / "labels", split["test"])
    gl = torch.load(root / "gaussian_labels.pt", map_location="cpu", weights_only=True)
    rows = []
    for nz in (0.0, noise):
        labels_dir = root / "labels" if nz == 0 else write_noisy_labels(root / "labels", work_dir / f"labels_noise{nz:g}", nz, seed)
        path = work_dir / f"features_maps_noise{nz:g}.pt"
        ff = lift_label_maps(splats, train, labels_dir, path, progress=progress)
        for k in sorted({0, clean_knn}):
            rows.append(Row(nz, k, evaluate(splats, ff, names, views, gl, clean_knn=k)))
    return rows


def main(args: Args) -> list[Row]:
    from utils.feature_sources.maps_source import read_class_names
    from utils.scene_args import demo_paths

    if args.scene.demo:
        ckpt, root = demo_paths()
        rows = demo_rows(root, Path("results") / "demo" / "eval", args.clean_knn, args.noise, args.seed, progress=True)
        scene_name = "demo"
    else:
        if args.features is None or args.labels_dir is None:
            raise UserError("pass --features FILE and --labels-dir DIR (or --demo)")
        splats, cameras = load_scene_and_cameras(args.scene)
        ff = load_feature_field(args.features, splats)
        names = read_class_names(args.labels_dir / "classes.json")
        if args.split is not None:
            try:
                test = list(json.loads(args.split.read_text())["test"])
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise UserError(f"{args.split}: expected JSON with a 'test' list of view names ({e})") from None
        elif args.test_views:
            test = [v.strip() for v in args.test_views.split(",") if v.strip()]
        else:
            raise UserError("choose held-out views with --split FILE or --test-views a.png,b.png (never the lifting views)")
        views = load_labelled_views(cameras, args.labels_dir, test)
        gl = None
        if args.gaussian_labels is not None:
            gl = torch.load(args.gaussian_labels, map_location="cpu", weights_only=True)
        rows = [Row(0.0, k, evaluate(splats, ff, names, views, gl, clean_knn=k)) for k in sorted({0, args.clean_knn})]
        scene_name = args.scene.scene_name()
    print(format_rows(rows))
    out = args.out or RESULTS / f"eval_segmentation_{scene_name}.json"
    doc = {
        "scene": scene_name,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "rows": [r.as_dict() for r in rows],
    }
    atomic_write_text(json.dumps(doc, indent=1) + "\n", out)
    print(f"wrote {out}")
    return rows


if __name__ == "__main__":
    run_cli(lambda: main(tyro.cli(Args)))
