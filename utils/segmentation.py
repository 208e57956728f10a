"""Apply a 3D selection: extraction/deletion, render sequences, 2D overlays from rendered features, exports.

All outputs of one run are staged as temporaries beside their targets and moved into place together at the end
(`Staging`), so an error leaves no partial results.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from .atomic import publish, temp_beside
from .camera import Camera
from .errors import UserError
from .features_file import FeatureField
from .query import PromptSet, Queries, select
from .render import RenderOutput, render
from .splats import Splats
from .video import FrameSink

TINT = (1.0, 0.15, 0.1)  # overlay colour of selected pixels


# ----------------------------------------------------------------------------------------------------------------
# scene edits


def extract(splats: Splats, mask: Tensor) -> Splats:
    """The selected Gaussians. mask: [N] bool."""
    assert mask.dtype == torch.bool and mask.shape == (splats.num,), (mask.dtype, mask.shape)
    return splats.subset(mask)


def delete(splats: Splats, mask: Tensor) -> Splats:
    """Everything but the selected Gaussians. mask: [N] bool."""
    assert mask.dtype == torch.bool and mask.shape == (splats.num,), (mask.dtype, mask.shape)
    return splats.subset(~mask)


# ----------------------------------------------------------------------------------------------------------------
# images


def checkerboard(height: int, width: int, cell: int = 16, light: float = 0.8, dark: float = 0.55) -> Tensor:
    """[H, W, 3] grey checkerboard, the usual 'transparent' background."""
    y = torch.arange(height)[:, None] // cell
    x = torch.arange(width)[None, :] // cell
    v = torch.where((x + y) % 2 == 0, light, dark).float()
    return v[..., None].expand(height, width, 3).contiguous()


def composite_over(colors: Tensor, alpha: Tensor, background: Tensor) -> Tensor:
    """colors [H, W, C] rendered with background 0, alpha [H, W], background [H, W, C] -> colors + (1 - alpha) bg."""
    assert colors.shape[:2] == alpha.shape and background.shape == colors.shape, (colors.shape, alpha.shape, background.shape)
    return colors + (1.0 - alpha)[..., None] * background


def render_safe(splats: Splats, camera: Camera, **kwargs) -> RenderOutput:
    """`render`, also for a scene with no Gaussians (an empty selection): background only, alpha 0."""
    if splats.num > 0:
        return render(splats, camera, **kwargs)
    feats = kwargs.get("features")
    D = 3 if feats is None else feats.shape[1]
    bg = kwargs.get("background")
    colors = torch.zeros(camera.height, camera.width, D)
    if bg is not None:
        colors += bg.detach().cpu().float().reshape(1, 1, D)
    return RenderOutput(colors.to(splats.device), torch.zeros(camera.height, camera.width, device=splats.device))


def render_unit_features(splats: Splats, unit_features: Tensor, camera: Camera) -> tuple[Tensor, Tensor]:
    """Render per-Gaussian unit features [N, D] as a D-channel image and normalise per pixel.

    Returns (features [H, W, D] unit per pixel, zero where nothing renders; alpha [H, W]).
    """
    out = render_safe(splats, camera, features=unit_features.float().to(splats.device))
    f = out.colors.cpu()
    f = f / f.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return f, out.alpha.cpu()


def pixel_selection(
    splats: Splats, unit_features: Tensor, camera: Camera, queries: Queries, min_alpha: float = 0.5
) -> Tensor:
    """[H, W] bool: pixels whose RENDERED, normalised feature passes the same pos/neg rule as the Gaussians.

    Pixels with alpha < min_alpha (background) are never selected.
    """
    f, alpha = render_unit_features(splats, unit_features, camera)
    return select(f, queries, alpha >= min_alpha)


def composited_value(splats: Splats, values: Tensor, camera: Camera) -> Tensor:
    """Composite per-Gaussian values [N] or [N, C] with the full scene's weights -> [H, W] or [H, W, C].

    With a 0/1 mask this is the share of the pixel the selection covers (sum of w = alpha*T over selected).
    """
    v = values.float()
    squeeze = v.ndim == 1
    out = render_safe(splats, camera, features=(v[:, None] if squeeze else v).to(splats.device)).colors.cpu()
    return out[..., 0] if squeeze else out


def tint(rgb: Tensor, mask: Tensor, color: tuple[float, float, float] = TINT, strength: float = 0.55) -> Tensor:
    """rgb [H, W, 3], mask [H, W] bool -> rgb blended towards `color` where mask."""
    c = torch.tensor(color, dtype=rgb.dtype)
    out = rgb.clone()
    out[mask] = (1 - strength) * rgb[mask] + strength * c
    return out


def fit_camera(camera: Camera, max_side: int) -> Camera:
    """The camera scaled down so its longer side is at most `max_side` (0 = unchanged)."""
    side = max(camera.width, camera.height)
    if max_side <= 0 or side <= max_side:
        return camera
    return camera.scaled(max_side / side)


# ----------------------------------------------------------------------------------------------------------------
# staged outputs


class Staging:
    """Temporaries beside their targets, moved into place together by `commit()` (or all removed by `abort()`)."""

    def __init__(self) -> None:
        self.files: list[tuple[Path, Path]] = []
        self.sinks: list[FrameSink] = []

    def path(self, final: str | Path) -> Path:
        """A fresh temporary path (same suffix) to write `final` to."""
        final = Path(final)
        tmp = temp_beside(final)
        self.files.append((tmp, final))
        return tmp

    def sink(self, stem: str | Path, **kwargs) -> FrameSink:
        s = FrameSink(stem, **kwargs)
        self.sinks.append(s)
        return s

    def commit(self) -> list[Path]:
        out = []
        for s in self.sinks:
            out += s.commit()
        for tmp, final in self.files:
            out.append(publish(tmp, final))
        self.files, self.sinks = [], []
        return out

    def abort(self) -> None:
        for s in self.sinks:
            s.abort()
        for tmp, _ in self.files:
            tmp.unlink(missing_ok=True)
        self.files, self.sinks = [], []


def check_writable(folder: str | Path) -> Path:
    """Create `folder` if needed and prove a file can be written there; raise a one-line UserError otherwise."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".write-test.", dir=folder)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise UserError(f"{folder}: output folder is not writable ({e.strerror or e})") from None
    return folder


# ----------------------------------------------------------------------------------------------------------------
# the whole job


@dataclass
class SegmentationOutputs:
    """What `write_segmentation` produced. files: the final paths; num_selected: mask.sum()."""

    out_dir: Path
    num_selected: int
    files: list[Path] = field(default_factory=list)


def write_segmentation(
    splats: Splats,
    ff: FeatureField,
    queries: Queries,
    mask: Tensor,
    cameras: list[Camera],
    out_dir: str | Path,
    *,
    prompts: PromptSet | None = None,
    fps: float = 10.0,
    save_frames: bool = False,
    max_side: int = 640,
    background: tuple[float, float, float] = (1.0, 1.0, 1.0),
    progress: bool = True,
) -> SegmentationOutputs:
    """Render and export a selection into `out_dir` (all-or-nothing).

    splats: the full scene; ff: its feature field; queries: the query used (for the per-pixel overlay);
    mask: [N] bool selection; cameras: the render path (scaled to at most `max_side` pixels).
    Writes extracted.{gif,mp4} (over a checkerboard), deleted.{gif,mp4}, overlay.{gif,mp4} (2D masks from rendered
    features tinting the full render), optional per-frame PNG folders, mask.pt, extracted/deleted .pt and .ply,
    prompts.json and summary.json. With no cameras only the non-video files are written.
    """
    from tqdm import tqdm

    from .scene_io import save_gsplat_checkpoint, save_inria_ply

    assert mask.dtype == torch.bool and mask.shape == (splats.num,), (mask.dtype, mask.shape)
    out_dir = Path(out_dir)
    mask = mask.to(splats.device)
    ext, rest = extract(splats, mask), delete(splats, mask)
    unit = ff.normalized()
    bg = torch.tensor(background, dtype=torch.float32)
    stage = Staging()
    try:
        kw = dict(fps=fps, gif=True, mp4=True, frames=save_frames)
        if cameras:  # no views (e.g. an app saving without a camera path): exports only
            s_ext = stage.sink(out_dir / "extracted", **kw)
            s_del = stage.sink(out_dir / "deleted", **kw)
            s_ovl = stage.sink(out_dir / "overlay", **kw)
        for cam in tqdm(cameras, desc="rendering", unit="view", disable=not progress):
            cam = fit_camera(cam, max_side)
            board = checkerboard(cam.height, cam.width)
            e = render_safe(ext, cam)
            s_ext.append(composite_over(e.colors.cpu(), e.alpha.cpu(), board).clamp(0, 1))
            s_del.append(render_safe(rest, cam, background=bg.to(splats.device)).colors.cpu().clamp(0, 1))
            full = render_safe(splats, cam, background=bg.to(splats.device)).colors.cpu().clamp(0, 1)
            s_ovl.append(tint(full, pixel_selection(splats, unit, cam, queries)))
        torch.save(mask.cpu().clone(), stage.path(out_dir / "mask.pt"))
        save_gsplat_checkpoint(ext, stage.path(out_dir / "extracted.pt"))
        save_inria_ply(ext, stage.path(out_dir / "extracted.ply"))
        save_gsplat_checkpoint(rest, stage.path(out_dir / "deleted.pt"))
        save_inria_ply(rest, stage.path(out_dir / "deleted.ply"))
        if prompts is not None:
            prompts.save(stage.path(out_dir / "prompts.json"))
        summary = {
            "num_gaussians": splats.num,
            "num_selected": int(mask.sum()),
            "positive": queries.positive_names,
            "negative": queries.negative_names,
            "threshold": queries.threshold,
            "space": ff.space,
            "views": len(cameras),
        }
        stage.path(out_dir / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
        files = stage.commit()
    except BaseException:
        stage.abort()
        raise
    return SegmentationOutputs(out_dir, int(mask.sum()), files)
