"""Click-and-segment in the browser: click = positive prompt, Shift+click = negative, text prompts, export.

    python click_and_segment.py --checkpoint ckpt.pt --data-dir COLMAP_DIR --features results/<scene>/features_lseg.pt
    python click_and_segment.py --demo                       (lifts the demo label maps first if needed)
    python click_and_segment.py ... --port 8080 --host 127.0.0.1

Open the printed URL. The server binds 127.0.0.1 (this machine) unless --host says otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import tyro

from utils.errors import UserError, run_cli
from utils.scene_args import SceneArgs, load_scene_and_cameras


@dataclass
class Args:
    scene: Annotated[SceneArgs, tyro.conf.OmitArgPrefixes] = field(default_factory=SceneArgs)
    features: Path | None = None
    """Features file from backproject.py (--demo: results/demo/features_maps.pt, lifted first if missing)."""
    port: int = 8080
    """Port (the next free one is used if taken)."""
    host: str = "127.0.0.1"
    """Interface to bind (0.0.0.0 exposes the viewer to the network)."""
    max_render_width: int = 640
    """Server-side render width in pixels (the height follows the browser window)."""
    threshold: float | None = None
    """Initial absolute threshold on the best positive cosine."""
    out: Path | None = None
    """Folder for saved selections and prompt sets (default results/<scene>/click/)."""
    save_views: int = 4
    """Training views rendered into the saved GIF/MP4s."""
    quiet: bool = False


def build_app(args: Args):
    """Load the scene and features (refusing a features file of another scene) and start the server.

    Returns the running `ClickApp` (its `.viewer.stop()` shuts it down).
    """
    from utils.click_app import ClickApp, ClickAppOptions, ClickSegmenter
    from utils.features_file import load_feature_field
    from utils.viewer import Viewer, ViewerOptions

    scene = args.scene
    if scene.demo and args.features is None:
        from utils.demo_scene import demo_features_path

        args.features = demo_features_path(args.quiet)
    if args.features is None:
        raise UserError("--features: pass the features file written by backproject.py (results/<scene>/features_<source>.pt)")
    # A scene without cameras gets jump targets along an orbit.
    splats, cameras = load_scene_and_cameras(scene, verbose=not args.quiet, default_orbit=24)
    ff = load_feature_field(args.features, splats)  # one-line error for a features file from another scene
    seg = ClickSegmenter(splats, ff, threshold=args.threshold)
    out = args.out or Path("results") / scene.scene_name() / "click"
    viewer = Viewer(splats, cameras, ViewerOptions(host=args.host, port=args.port,
                                                    max_render_width=args.max_render_width),
                    title="click and segment")
    try:
        return ClickApp(viewer, seg, ClickAppOptions(out_dir=out, save_views=args.save_views))
    except BaseException:
        viewer.stop()
        raise


def main(args: Args) -> None:
    from utils.viewer import serve_forever

    app = build_app(args)
    print(f"click-and-segment running at {app.viewer.url}  (Ctrl+C to stop)", flush=True)
    serve_forever(app.viewer)


if __name__ == "__main__":
    run_cli(lambda: main(tyro.cli(Args)))
