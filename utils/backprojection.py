"""The back-projection job: stream over views, accumulate, checkpoint, resume, split across ranks, write the file."""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from .atomic import atomic_torch_save
from .camera import Camera
from .errors import UserError
from .feature_sources.base import FeatureMap, FeatureSource
from .features_file import FeatureField, save_feature_field
from .lifting import Accumulator, lift_view
from .native import kernels_name
from .raster_cpu import StoreWorkspace
from .render import render
from .splats import Splats
from .version import __version__


@dataclass
class LiftOptions:
    """checkpoint_every: save the accumulators every this many views (0 = never).
    resume: continue from a matching partial file if one exists.
    dtype: storage dtype of the final features ("float32" or "float16").
    backend: rasterizer backend ("auto", "cpu", "gsplat").
    progress: show a tqdm bar.
    """

    checkpoint_every: int = 8
    resume: bool = True
    dtype: str = "float32"
    backend: str = "auto"
    progress: bool = True
    extra_meta: dict = field(default_factory=dict)


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1

    @staticmethod
    def from_env() -> "DistInfo":
        """torchrun sets RANK / WORLD_SIZE; start a gloo (CPU) or nccl (CUDA) group when there is more than one rank."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return DistInfo()
        if not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        return DistInfo(dist.get_rank(), dist.get_world_size())


def partial_path(out_path: Path, dist_info: DistInfo) -> Path:
    return out_path.with_name(f".{out_path.stem}.rank{dist_info.rank}of{dist_info.world_size}.partial.pt")


def _load_partial(path: Path, splats_hash: str, num: int, dim: int, source: str, views: list[str]) -> Accumulator | None:
    if not path.exists():
        return None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"{path}: unreadable resume file ({type(e).__name__}); delete it to start over") from None
    numer, denom = obj.get("numer"), obj.get("denom")
    if numer is None or denom is None or numer.ndim != 2 or denom.shape != numer.shape[:1]:
        raise UserError(f"{path}: not a resume file; delete it to start over")
    if numer.shape[0] != num:
        raise UserError(
            f"{path}: resume file has {numer.shape[0]} Gaussians but the scene has {num}; delete it to start over"
        )
    if numer.shape[1] != dim:
        raise UserError(f"{path}: resume file has feature dim {numer.shape[1]} but the source gives {dim}; delete it")
    if obj.get("scene_hash") != splats_hash or obj.get("source") != source:
        raise UserError(f"{path}: resume file belongs to another scene or feature source; delete it to start over")
    done = list(obj.get("views_done", []))
    unknown = sorted(set(done) - set(views))
    if unknown:
        raise UserError(f"{path}: resume file lists views not in this run ({unknown[0]}, ...); delete it to start over")
    acc = Accumulator.zeros(num, dim)
    acc.numer.copy_(numer)
    acc.denom.copy_(denom)
    acc.views_done = done
    return acc


def _save_partial(path: Path, acc: Accumulator, splats_hash: str, source: str) -> None:
    atomic_torch_save(
        {"numer": acc.numer, "denom": acc.denom, "views_done": acc.views_done, "scene_hash": splats_hash, "source": source},
        path,
    )


def _same_size_batches(cameras: list[Camera], batch: int) -> list[list[Camera]]:
    """Consecutive groups of at most `batch` views that share one image size (feature models take stacked images)."""
    out: list[list[Camera]] = []
    for cam in cameras:
        if out and len(out[-1]) < batch and (out[-1][0].width, out[-1][0].height) == (cam.width, cam.height):
            out[-1].append(cam)
        else:
            out.append([cam])
    return out


def lift_features(
    splats: Splats,
    cameras: list[Camera],
    source: FeatureSource,
    out_path: str | Path,
    options: LiftOptions | None = None,
    dist_info: DistInfo | None = None,
) -> FeatureField | None:
    """Back-project `source`'s 2D features of every view onto the Gaussians and write `out_path` atomically.

    Views are split round-robin across ranks; every rank checkpoints its own accumulators to a partial file beside
    the output so that rerunning the same command resumes. Returns the field on rank 0 (None on other ranks).
    """
    options = options or LiftOptions()
    dist_info = dist_info or DistInfo()
    out_path = Path(out_path)
    if not cameras:
        raise UserError("no views to lift from")
    names = [c.name for c in cameras]
    if len(set(names)) != len(names):
        raise UserError("view names must be unique (they key the resume file)")
    source.check_views(cameras)
    splats_hash = splats.param_hash()
    info = source.info
    my_views = cameras[dist_info.rank :: dist_info.world_size]
    part = partial_path(out_path, dist_info)

    acc = _load_partial(part, splats_hash, splats.num, info.dim, info.name, names) if options.resume else None
    if acc is None:
        acc = Accumulator.zeros(splats.num, info.dim)
    elif dist_info.rank == 0:
        print(f"resuming from {part.name}: {len(acc.views_done)} views already done")
    done = set(acc.views_done)
    todo = [c for c in my_views if c.name not in done]

    bar = tqdm(
        total=len(my_views), initial=len(my_views) - len(todo), desc=f"lifting {info.name} ({kernels_name()})", unit="view",
        disable=not options.progress or dist_info.rank != 0,
    )
    since_ckpt = 0
    workspace = StoreWorkspace()  # the weights' buffers, reused by every view of this job
    try:
        for batch in _same_size_batches(todo, source.batch_size):
            images = None
            if source.needs_images:
                images = torch.stack([render(splats, cam, backend=options.backend).colors.clamp(0, 1) for cam in batch])
            fmaps = source(images, batch)
            for cam, fmap in zip(batch, fmaps):
                fmap = FeatureMap(
                    torch.nan_to_num(fmap.features.float().cpu(), nan=0.0, posinf=0.0, neginf=0.0),
                    fmap.resize,
                    None if fmap.valid is None else fmap.valid.cpu(),
                )
                lift_view(acc, splats, cam, fmap, workspace=workspace, backend=options.backend)
                acc.views_done.append(cam.name)
                bar.update(1)
                since_ckpt += 1
            if options.checkpoint_every and since_ckpt >= options.checkpoint_every:
                _save_partial(part, acc, splats_hash, info.name)
                since_ckpt = 0
    except KeyboardInterrupt:
        _save_partial(part, acc, splats_hash, info.name)
        bar.close()
        print(f"\ninterrupted: progress saved to {part}; rerun the same command to resume")
        raise
    bar.close()
    if since_ckpt:
        _save_partial(part, acc, splats_hash, info.name)

    if dist_info.world_size > 1:
        dist.all_reduce(acc.numer)
        dist.all_reduce(acc.denom)
    result = None
    if dist_info.rank == 0:
        feats = acc.features()
        dtype = {"float32": torch.float32, "float16": torch.float16}[options.dtype]
        meta = {
            "source": info.name,
            "space": info.space,
            "dim": info.dim,
            "class_names": info.class_names,
            "text_encoder": info.text_encoder,
            "num_gaussians": splats.num,
            "scene_hash": splats_hash,
            "views": names,
            "image_sizes": sorted({(c.width, c.height) for c in cameras}),
            "tool_version": __version__,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            **options.extra_meta,
        }
        result = FeatureField(feats.to(dtype), acc.denom.float(), meta)
        save_feature_field(result, out_path)
    if dist_info.world_size > 1:
        dist.barrier()
    part.unlink(missing_ok=True)
    return result
