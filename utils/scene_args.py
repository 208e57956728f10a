"""The scene/camera flags every script shares, and turning them into (Splats, cameras)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .camera import Camera
from .errors import UserError
from .splats import Splats

DEMO_ROOT = Path("data/demo")


@dataclass
class SceneArgs:
    """Where the scene and its cameras come from."""

    checkpoint: Path | None = None
    """Trained 3DGS: gsplat checkpoint (.pt, or a folder/one file of per-rank ckpts), Inria .ply / chkpnt*.pth, or .splat."""
    format: Literal["gsplat", "ply", "inria-pth", "splat"] | None = None
    """Override the detected checkpoint format."""
    data_dir: Path | None = None
    """COLMAP dataset folder (sparse/0 and images/) with the training cameras."""
    data_factor: int = 1
    """Downsample factor as in gsplat's trainer (images_N folders, K scaled)."""
    normalize: Literal["auto", "on", "off"] = "auto"
    """Apply gsplat's world normalisation to the cameras: auto = detect from where the Gaussians live."""
    undistort: bool = False
    """Undistort a distorted COLMAP model (SIMPLE_RADIAL, OPENCV, ...) into a PINHOLE copy first."""
    orbit: int = 0
    """Use N generated orbit cameras instead of COLMAP (scenes without cameras, e.g. a .splat)."""
    width: int = 800
    """Orbit camera image width."""
    height: int = 600
    """Orbit camera image height."""
    demo: bool = False
    """Use the built-in demo scene (built under data/demo/ on first use)."""

    def scene_name(self) -> str:
        if self.demo:
            return "demo"
        if self.data_dir is not None:
            return Path(self.data_dir).resolve().name
        assert self.checkpoint is not None
        return Path(self.checkpoint).stem


def demo_paths() -> tuple[Path, Path]:
    """Build the demo scene if missing; return (checkpoint, data_dir)."""
    from .demo_scene import build_demo_scene

    root = build_demo_scene(DEMO_ROOT)
    return root / "ckpts" / "ckpt_demo.pt", root


def load_scene_and_cameras(args: SceneArgs, verbose: bool = True, default_orbit: int = 0) -> tuple[Splats, list[Camera]]:
    """Load the Gaussians and the views the flags describe (COLMAP, orbit or demo).

    default_orbit: views of the orbit used when the flags name no cameras (0 = that is an error).
    """
    from .camera_paths import orbit_for_scene
    from .colmap import load_colmap_cameras_for_scene
    from .scene_io import load_scene

    checkpoint, data_dir = args.checkpoint, args.data_dir
    if args.demo:
        checkpoint, data_dir = demo_paths()
    if checkpoint is None:
        raise UserError("no scene given: pass --checkpoint PATH (and --data-dir or --orbit N), or --demo")
    splats = load_scene(checkpoint, format=args.format)
    orbit = args.orbit if args.orbit > 0 or data_dir is not None else default_orbit
    if orbit > 0:
        cameras = orbit_for_scene(splats, orbit, args.width, args.height)
    elif data_dir is not None:
        cameras = load_colmap_cameras_for_scene(
            data_dir, splats, data_factor=args.data_factor, normalize=args.normalize, undistort=args.undistort,
            verbose=verbose,
        )
    else:
        raise UserError("no cameras: pass --data-dir COLMAP_DIR or --orbit N")
    if verbose:
        print(f"scene: {splats.num:,} Gaussians (SH degree {splats.sh_degree}) from {checkpoint}; {len(cameras)} views")
    return splats, cameras
