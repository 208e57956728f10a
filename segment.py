"""Text-prompted 3D segmentation of a lifted feature field: select Gaussians, render and export extraction/deletion.

    python segment.py --checkpoint ckpt.pt --data-dir COLMAP_DIR --features results/<scene>/features_lseg.pt \
        --prompt "table;chair" [--neg-prompt "vase;other"] [--threshold T] [--clean-knn K] [--out DIR]
    python segment.py --demo --prompt ball
    python segment.py ... --prompts-json results/<scene>/prompts.json      (a prompt set saved by the click app)
    python segment.py ... --query-features vectors.pt                     (spaces without text, e.g. dino, rgb)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import torch
import tyro

from utils.errors import UserError, run_cli
from utils.scene_args import SceneArgs, load_scene_and_cameras


@dataclass
class Args:
    scene: Annotated[SceneArgs, tyro.conf.OmitArgPrefixes] = field(default_factory=SceneArgs)
    features: Path | None = None
    """Features file from backproject.py (--demo: results/demo/features_maps.pt, lifted first if missing)."""
    prompt: str = ""
    """What to select: ';'-separated prompts (class names in a label space, text in a CLIP space)."""
    neg_prompt: str = ""
    """';'-separated negative prompts (default "other"; in a label space: every class not named in --prompt)."""
    prompts_json: Path | None = None
    """A saved prompt set (JSON: positive_text, negative_text, positive_vectors, negative_vectors, threshold)."""
    query_features: Path | None = None
    """Positive query vectors [P, D] (.pt or .npy) in the features' space, for spaces without text."""
    threshold: float | None = None
    """Also require the best positive cosine to be at least this."""
    clean_knn: int = 0
    """Drop isolated selected Gaussians: keep one only if most of its K nearest seen neighbours are selected (0 = off)."""
    out: Path | None = None
    """Output folder (default results/<scene>/segment/<prompt>/)."""
    save_frames: bool = False
    """Also write every frame as PNG (extracted/, deleted/, overlay/ folders)."""
    fps: float = 10.0
    """Frame rate of the GIF/MP4 renders."""
    max_side: int = 640
    """Render the videos at most this many pixels on the longer side (0 = camera resolution)."""
    max_views: int = 0
    """Render at most this many views, evenly spaced along the camera path (0 = all)."""
    orbit_views: int = 60
    """Number of orbit views when the scene has no cameras (no --data-dir and no --orbit)."""
    device: Literal["cpu", "cuda"] = "cpu"
    """Where to render."""
    quiet: bool = False


@dataclass
class SegmentResult:
    out_dir: Path
    mask: torch.Tensor
    files: list[Path]


def _slug(text: str) -> str:
    s = re.sub(r"\s*;\s*", "_", text.strip().strip(";"))
    s = re.sub(r"[^\w.+-]+", "-", s).strip("-.")
    return s[:80] or "query"


def build_prompt_set(args: Args):
    """Combine --prompts-json, --prompt/--neg-prompt, --query-features and --threshold into one PromptSet."""
    from utils.query import PromptSet, load_query_vectors, parse_prompts

    ps = PromptSet.load(args.prompts_json) if args.prompts_json is not None else PromptSet()
    ps.positive_text += parse_prompts(args.prompt)
    ps.negative_text += parse_prompts(args.neg_prompt)
    if args.query_features is not None:
        ps.positive_vectors += load_query_vectors(args.query_features).tolist()
    if args.threshold is not None:
        ps.threshold = float(args.threshold)
    if ps.is_empty:
        raise UserError("--prompt: empty prompt; give one or more ';'-separated prompts, --prompts-json or --query-features")
    return ps


def main(args: Args) -> SegmentResult:
    from utils.features_file import load_feature_field
    from utils.query import encode_queries, knn_clean, select_gaussians
    from utils.segmentation import check_writable, write_segmentation

    if args.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda requested but CUDA is not available; use --device cpu")
    if args.max_views < 0:
        raise UserError(f"--max-views must be >= 0, got {args.max_views}")
    if args.clean_knn < 0:
        raise UserError(f"--clean-knn must be >= 0, got {args.clean_knn}")
    scene = args.scene
    prompts = build_prompt_set(args)  # cheap checks first: nothing is loaded for an empty prompt
    if scene.demo and args.features is None:
        from utils.demo_scene import demo_features_path

        args.features = demo_features_path(args.quiet)
    if args.features is None:
        raise UserError("--features: pass the features file written by backproject.py (results/<scene>/features_<source>.pt)")
    if not Path(args.features).is_file():
        raise UserError(f"{args.features}: features file not found (run backproject.py first)")
    # A scene without cameras renders along an orbit.
    splats, cameras = load_scene_and_cameras(scene, verbose=not args.quiet, default_orbit=args.orbit_views)
    ff = load_feature_field(args.features, splats)
    queries = encode_queries(ff.meta, ff.features.shape[1], prompts)
    out_dir = args.out or Path("results") / scene.scene_name() / "segment" / _slug(args.prompt or (
        args.prompts_json.stem if args.prompts_json else "query"))
    check_writable(out_dir)

    mask = select_gaussians(ff, queries)
    n_sel = int(mask.sum())
    if args.clean_knn > 0:
        mask = knn_clean(splats.means, mask, ff.seen, args.clean_knn)
        if not args.quiet:
            print(f"kNN clean-up (K={args.clean_knn}): dropped {n_sel - int(mask.sum()):,} isolated Gaussians")
    n_sel = int(mask.sum())
    thr = "" if queries.threshold is None else f", positive score >= {queries.threshold:g}"
    print(
        f"selected {n_sel:,} of {splats.num:,} Gaussians ({100.0 * n_sel / splats.num:.2f}%): "
        f"[{', '.join(queries.positive_names)}] vs [{', '.join(queries.negative_names) or 'nothing'}]{thr}"
    )
    if n_sel == 0:
        print("the prompt selected nothing; writing the empty result anyway")
    if 0 < args.max_views < len(cameras):
        pick = torch.linspace(0, len(cameras) - 1, args.max_views).round().long().tolist()
        cameras = [cameras[i] for i in pick]
    if args.device == "cuda":
        splats = splats.to("cuda")
        cameras = [c.to("cuda") for c in cameras]
    res = write_segmentation(
        splats, ff, queries, mask.cpu(), cameras, out_dir, prompts=prompts, fps=args.fps,
        save_frames=args.save_frames, max_side=args.max_side, progress=not args.quiet,
    )
    if not args.quiet:
        print(f"wrote {len(res.files)} outputs to {out_dir}")
    return SegmentResult(out_dir, mask.cpu(), res.files)


if __name__ == "__main__":
    run_cli(lambda: main(tyro.cli(Args)))
