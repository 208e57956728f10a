"""Write frame sequences as GIF, MP4 (imageio + imageio-ffmpeg) or numbered PNGs, atomically.

Frames are [H, W, 3] uint8 numpy arrays (or float tensors/arrays in [0, 1], converted).
`FrameSink` streams frames to temporary files and `commit()` moves them into place, so a failed run leaves nothing.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .atomic import publish, temp_beside


def to_uint8(frame: np.ndarray | torch.Tensor) -> np.ndarray:
    """[H, W, 3] float in [0, 1] or uint8 -> contiguous uint8 [H, W, 3]."""
    if isinstance(frame, torch.Tensor):
        frame = frame.detach().cpu().numpy()
    if frame.dtype != np.uint8:
        frame = (np.clip(frame.astype(np.float32), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    assert frame.ndim == 3 and frame.shape[2] in (3, 4), frame.shape
    return np.ascontiguousarray(frame[..., :3])


def _even(frame: np.ndarray) -> np.ndarray:
    """Pad to even width/height by repeating the last row/column (H.264 with yuv420p needs even sizes)."""
    h, w = frame.shape[:2]
    if h % 2 or w % 2:
        frame = np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    return frame


class FrameSink:
    """Stream frames to any of `gif`, `mp4` (files) and `frames` (a folder of PNGs); nothing is visible until commit.

    sink = FrameSink(out / "extracted", fps=10, gif=True, mp4=True, frames=False)
    for f in frames: sink.append(f)
    sink.commit()   # -> extracted.gif, extracted.mp4, extracted/frame_0000.png ...
    sink.abort()    # on error: removes the temporaries (also safe after commit)
    """

    def __init__(self, stem: str | Path, fps: float = 10.0, gif: bool = True, mp4: bool = True, frames: bool = False):
        import imageio.v2 as iio

        self.stem = Path(stem)
        self.fps = float(fps)
        self.count = 0
        self._gif_frames: list[np.ndarray] = []  # GIF palettes are built at the end; frames are small
        self._targets: list[tuple[Path, Path]] = []  # (tmp, final)
        self._gif = gif
        self._mp4_writer = None
        self._frames_dir: Path | None = None
        if mp4:
            tmp = temp_beside(self.stem.with_suffix(".mp4"), ".mp4")
            self._targets.append((tmp, self.stem.with_suffix(".mp4")))
            self._mp4_writer = iio.get_writer(
                tmp, format="FFMPEG", mode="I", fps=self.fps, codec="libx264", quality=8, macro_block_size=1,
                pixelformat="yuv420p", ffmpeg_log_level="error",
            )
        if frames:
            self.stem.parent.mkdir(parents=True, exist_ok=True)
            self._frames_dir = Path(tempfile.mkdtemp(prefix=f".{self.stem.name}.", suffix=".tmpdir", dir=self.stem.parent))
            self._targets.append((self._frames_dir, self.stem))
        if gif:
            self._targets.append((temp_beside(self.stem.with_suffix(".gif"), ".gif"), self.stem.with_suffix(".gif")))

    def append(self, frame: np.ndarray | torch.Tensor) -> None:
        f = to_uint8(frame)
        if self._mp4_writer is not None:
            self._mp4_writer.append_data(_even(f))
        if self._frames_dir is not None:
            from PIL import Image

            Image.fromarray(f).save(self._frames_dir / f"frame_{self.count:04d}.png")
        if self._gif:
            self._gif_frames.append(f)
        self.count += 1

    def _finish(self) -> None:
        if self._mp4_writer is not None:
            self._mp4_writer.close()
            self._mp4_writer = None
        if self._gif:
            from PIL import Image

            tmp = next(t for t, final in self._targets if final.suffix == ".gif")
            if self._gif_frames:
                imgs = [Image.fromarray(f) for f in self._gif_frames]
                imgs[0].save(
                    tmp, format="GIF", save_all=True, append_images=imgs[1:], loop=0,
                    duration=max(20, round(1000.0 / self.fps)), disposal=1,
                )
            self._gif_frames = []

    def commit(self) -> list[Path]:
        """Finish the files and move them into place; returns the final paths."""
        self._finish()
        out = []
        um = os.umask(0)
        os.umask(um)
        for tmp, final in self._targets:
            if tmp.is_dir():  # a folder of PNGs replaces the previous run's folder
                os.chmod(tmp, 0o777 & ~um)
                if final.is_dir():
                    shutil.rmtree(final)
                os.replace(tmp, final)
                out.append(final)
            else:
                out.append(publish(tmp, final))
        self._targets = []
        return out

    def abort(self) -> None:
        if self._mp4_writer is not None:
            try:
                self._mp4_writer.close()
            except Exception:
                pass
            self._mp4_writer = None
        for tmp, _ in self._targets:
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)
        self._targets = []
        self._gif_frames = []


def write_frames(
    frames: Sequence[np.ndarray | torch.Tensor], stem: str | Path, fps: float = 10.0,
    gif: bool = True, mp4: bool = True, pngs: bool = False,
) -> list[Path]:
    """Write `frames` as stem.gif / stem.mp4 / stem/frame_XXXX.png atomically (all or nothing)."""
    sink = FrameSink(stem, fps=fps, gif=gif, mp4=mp4, frames=pngs)
    try:
        for f in frames:
            sink.append(f)
        return sink.commit()
    except BaseException:
        sink.abort()
        raise


def write_gif(frames: Sequence[np.ndarray | torch.Tensor], path: str | Path, fps: float = 10.0) -> Path:
    path = Path(path)
    return write_frames(frames, path.with_suffix(""), fps=fps, gif=True, mp4=False)[0]


def write_mp4(frames: Sequence[np.ndarray | torch.Tensor], path: str | Path, fps: float = 10.0) -> Path:
    path = Path(path)
    return write_frames(frames, path.with_suffix(""), fps=fps, gif=False, mp4=True)[0]


def write_png(frame: np.ndarray | torch.Tensor, path: str | Path) -> Path:
    """One PNG, atomically."""
    from PIL import Image

    from .atomic import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(to_uint8(frame)).save(tmp, format="PNG")
    return path
