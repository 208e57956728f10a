"""Lift 2D features onto a trained 3DGS by gradient-weighted back-projection (w = alpha * T).

    python backproject.py --checkpoint ckpt.pt --data-dir COLMAP_DIR --features lseg
    python backproject.py --checkpoint scene.splat --orbit 64 --features rgb
    python backproject.py --demo
    torchrun --nproc_per_node=2 backproject.py ...   (views split across ranks)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import torch
import tyro

from utils.backprojection import DistInfo, LiftOptions, lift_features
from utils.errors import UserError, run_cli
from utils.feature_sources.registry import SourceArgs, SourceName, make_source
from utils.demo_scene import TEST_EVERY as DEMO_TEST_EVERY
from utils.scene_args import DEMO_ROOT, SceneArgs, load_scene_and_cameras


@dataclass
class Args:
    scene: Annotated[SceneArgs, tyro.conf.OmitArgPrefixes] = field(default_factory=SceneArgs)
    sources: Annotated[SourceArgs, tyro.conf.OmitArgPrefixes] = field(default_factory=SourceArgs)
    features: SourceName | None = None
    """2D feature source: rgb, maps, lseg, clip or dino (the demo defaults to maps of its label maps)."""
    results_dir: Path | None = None
    """Output folder (default results/<scene name>/)."""
    device: Literal["cpu", "cuda"] = "cpu"
    """Where to render and run the feature model."""
    batch_views: int = 0
    """Views per feature-model call (0 = the source's default)."""
    hold_out_every: int = 0
    """Skip every N-th view (index % N == 0) as held-out test views, like gsplat's test_every (0 = use all)."""
    checkpoint_every: int = 8
    """Save resumable progress every N views."""
    restart: bool = False
    """Ignore saved progress and start over."""
    dtype: Literal["float32", "float16"] = "float32"
    """Storage dtype of the lifted features."""
    prune: bool = False
    """Also write kept_indices.pt: indices of the Gaussians seen in at least one view."""
    quiet: bool = False


def main(args: Args) -> Path:
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda requested but CUDA is not available; use --device cpu")
    scene = args.scene
    if scene.demo:
        args.features = args.features or "maps"
        if args.features == "maps" and args.sources.maps_dir is None:
            args.sources.maps_dir = DEMO_ROOT / "labels"
        if args.hold_out_every == 0:
            args.hold_out_every = DEMO_TEST_EVERY  # the demo keeps every 8th view for evaluation
    if args.features is None:
        raise UserError("choose a feature source with --features {rgb,maps,lseg,clip,dino}")
    dist_info = DistInfo.from_env()
    splats, cameras = load_scene_and_cameras(scene, verbose=dist_info.rank == 0 and not args.quiet)
    if args.hold_out_every > 0:
        cameras = [c for i, c in enumerate(cameras) if i % args.hold_out_every != 0]
    source = make_source(args.features, args.sources, device=args.device)
    if args.batch_views > 0:
        source.batch_size = args.batch_views
    if args.device == "cuda":
        splats = splats.to("cuda")
        cameras = [c.to("cuda") for c in cameras]
    results_dir = args.results_dir or Path("results") / scene.scene_name()
    out_path = results_dir / f"features_{args.features}.pt"
    options = LiftOptions(
        checkpoint_every=args.checkpoint_every,
        resume=not args.restart,
        dtype=args.dtype,
        progress=not args.quiet,
        extra_meta={
            "scene_path": str(scene.checkpoint) if not scene.demo else "demo",
            "normalize": scene.normalize,
            "data_factor": scene.data_factor,
        },
    )
    result = lift_features(splats, cameras, source, out_path, options, dist_info)
    if result is not None:
        seen = result.seen
        unseen = int((~seen).sum())
        print(f"wrote {out_path}  ({result.features.shape[0]:,} x {result.features.shape[1]} {args.features} features)")
        print(f"never seen: {unseen:,} Gaussians ({100.0 * unseen / max(1, seen.numel()):.2f}%)")
        if args.prune:
            from utils.atomic import atomic_torch_save

            kept = torch.nonzero(seen).squeeze(1)
            atomic_torch_save(kept, results_dir / "kept_indices.pt")
            print(f"wrote {results_dir / 'kept_indices.pt'} ({kept.numel():,} kept)")
    return out_path


if __name__ == "__main__":
    run_cli(lambda: main(tyro.cli(Args)))
