"""The sentence-driven scene editor on the shared viewer core.

A command box (Enter submits) sends the sentence to an assistant (`utils.assistant`), which returns validated
actions; `SceneEditor` executes them: views (named views, next/previous training camera, orbit), segment/delete
(via `utils.query`), recolour (keeps shading: sh0 := target_rgb * luminance(original DC colour), shN := 0),
transparent (opacity 0.1), reset_segmentation, reset_colors, undo (one step per sentence), save, help.

`run_llm_viewer(cfg, ...)` is what viewer_with_llm.py's `run_viewer` calls.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .camera import Camera
from .errors import UserError
from .features_file import FeatureField
from .splats import Splats
from .viewer import Viewer

C0 = 0.28209479177387814
LUMA = (0.299, 0.587, 0.114)  # Rec. 601 luma weights
TRANSPARENT_OPACITY = 0.1
TRANSCRIPT_LINES = 14


def dc_colors(splats: Splats) -> Tensor:
    """[N, 3] view-independent (DC) colour of each Gaussian in [0, 1]."""
    return (splats.sh0[:, 0, :].float() * C0 + 0.5).clamp(0, 1)


def recolor(splats: Splats, original: Splats, mask: Tensor, rgb: tuple[float, float, float]) -> Splats:
    """Paint the selected Gaussians `rgb`, keeping shading: DC colour = rgb * luminance(original DC colour), no SH.

    splats: the current scene (edits accumulate); original: the scene as loaded (luminance source); mask: [N] bool.
    """
    assert mask.shape == (splats.num,) and mask.dtype == torch.bool
    lum = dc_colors(original) @ torch.tensor(LUMA)  # [N]
    target = torch.tensor(rgb, dtype=torch.float32)[None] * lum[:, None]  # [N, 3]
    sh0 = splats.sh0.clone()
    sh0[mask, 0, :] = ((target - 0.5) / C0)[mask].to(sh0.dtype)
    shN = splats.shN.clone()
    shN[mask] = 0
    return Splats(splats.means, splats.quats, splats.scales, splats.opacities, sh0, shN)


def make_transparent(splats: Splats, mask: Tensor, opacity: float = TRANSPARENT_OPACITY) -> Splats:
    """The selected Gaussians with opacity `opacity` (logit stored)."""
    assert mask.shape == (splats.num,) and mask.dtype == torch.bool
    op = splats.opacities.clone()
    op[mask] = math.log(opacity / (1 - opacity))
    return Splats(splats.means, splats.quats, splats.scales, op, splats.sh0, splats.shN)


@dataclass
class _Snapshot:
    splats: Splats
    mask: Tensor | None
    mode: str
    queries: Any = None
    cameras: dict[int, Camera] = field(default_factory=dict)


class SceneEditor:
    """Executes assistant actions on a `Viewer`. field: the scene's feature field (None = no segmentation)."""

    def __init__(self, viewer: Viewer, field: FeatureField | None, out_dir: Path, text_encoder=None,
                 save_views: int = 4) -> None:
        self.viewer = viewer
        self.field = field
        self.out_dir = Path(out_dir)
        self.text_encoder = text_encoder
        self.save_views = save_views
        self.undo_stack: list[_Snapshot] = []
        self.queries = None  # the Queries of the current segmentation (for the saved overlay)
        self._lock = threading.RLock()
        self._orbit_stop = threading.Event()
        self._orbit_thread: threading.Thread | None = None

    # -- state -----------------------------------------------------------------------------------------------
    def _snapshot(self) -> _Snapshot:
        v = self.viewer
        cams = {}
        for c in v.clients():
            cam = v.client_camera(c)
            if cam is not None:
                cams[c.client_id] = cam
        return _Snapshot(v.scene, v.mask, v.mode, self.queries, cams)

    def _restore(self, s: _Snapshot) -> None:
        v = self.viewer
        v.set_scene(s.splats)
        v.set_mask(s.mask)
        v.set_mode(s.mode)
        self.queries = s.queries
        for c in v.clients():
            cam = s.cameras.get(c.client_id)
            cur = v.client_camera(c)
            if cam is not None and (cur is None or not torch.allclose(cur.viewmat, cam.viewmat, atol=1e-5)):
                v.set_client_camera(c, cam)

    # -- selection -------------------------------------------------------------------------------------------
    def select(self, positive: list[str], negative: list[str] | None = None):
        """(mask [N] bool, Queries): the Gaussians matching the names (the shared query rule of utils.query)."""
        from .query import PromptSet, encode_queries, select_gaussians

        if self.field is None:
            raise UserError("no features file loaded: start the viewer with --features to select objects")
        ps = PromptSet(positive_text=list(positive), negative_text=list(negative or []))
        q = encode_queries(self.field.meta, int(self.field.features.shape[1]), ps, self.text_encoder, source="command")
        return select_gaussians(self.field, q), q

    # -- views -----------------------------------------------------------------------------------------------
    def _named(self, name: str) -> None:
        from .camera_paths import fit_distance, named_view, scene_bounds

        v = self.viewer
        b = scene_bounds(v.original)
        for c in v.clients():
            cam = v.client_camera(c)
            w, h = (cam.width, cam.height) if cam is not None else (640, 480)
            fov = math.degrees(2 * math.atan(0.5 * h / float(cam.K[1, 1]))) if cam is not None else 50.0
            dist = fit_distance(b.radius, w, h, fov)
            v.set_client_camera(c, named_view(name, b.center, dist, torch.from_numpy(v.up).float(), w, h, fov))

    def _orbit(self, seconds: float = 6.0, steps: int = 36) -> None:
        from .camera_paths import orbit_for_scene

        self.stop_orbit()
        self._orbit_stop.clear()
        v = self.viewer
        path = orbit_for_scene(v.original, steps, 640, 480, up=torch.from_numpy(v.up).float())

        def run() -> None:
            for cam in path:
                if self._orbit_stop.wait(seconds / steps):
                    return
                for c in v.clients():
                    v.set_client_camera(c, cam)

        self._orbit_thread = threading.Thread(target=run, name="llm-orbit", daemon=True)
        self._orbit_thread.start()

    def stop_orbit(self) -> None:
        self._orbit_stop.set()
        t = self._orbit_thread
        if t is not None and t is not threading.current_thread():
            t.join(2.0)
        self._orbit_thread = None

    # -- actions ---------------------------------------------------------------------------------------------
    def execute(self, actions: list[Any]) -> list[str]:
        """Run validated actions in order; return one reply line per action. One undo step per call."""
        with self._lock:
            self.stop_orbit()
            before = self._snapshot()
            changed = False
            replies = []
            for a in actions:
                try:
                    msg, did = self._one(a)
                except UserError as e:
                    msg, did = f"could not {a.action.replace('_', ' ')}: {e}", False
                replies.append(msg)
                changed |= did
            if changed:
                self.undo_stack.append(before)
            return replies

    def _one(self, a) -> tuple[str, bool]:
        from .assistant import color_to_rgb

        v = self.viewer
        kind = a.action
        if kind == "set_view":
            if a.view in ("next", "previous"):
                if not v.cameras:
                    raise UserError("this scene has no training cameras")
                v.step_view(+1 if a.view == "next" else -1)
                return f"camera {v.cameras[v._view_index].name or v._view_index}", True
            if a.view == "orbit":
                self._orbit()
                return "orbiting the scene", True
            self._named(a.view)
            return f"{a.view} view", True
        if kind in ("segment", "delete"):
            mask, self.queries = self.select(list(a.positive), list(a.negative))
            v.set_mask(mask)
            v.set_mode("extracted" if kind == "segment" else "deleted")
            neg = f" but not {', '.join(a.negative)}" if a.negative else ""
            verb = "showing only" if kind == "segment" else "deleted"
            return f"{verb} {', '.join(a.positive)}{neg} ({int(mask.sum()):,} Gaussians)", True
        if kind == "recolor":
            mask, _ = self.select(list(a.target))
            v.set_scene(recolor(v.scene, v.original, mask, color_to_rgb(a.color)))
            return f"painted {', '.join(a.target)} {a.color} ({int(mask.sum()):,} Gaussians)", True
        if kind == "transparent":
            mask, _ = self.select(list(a.target))
            v.set_scene(make_transparent(v.scene, mask))
            return f"made {', '.join(a.target)} transparent ({int(mask.sum()):,} Gaussians)", True
        if kind == "reset_segmentation":
            v.set_mask(None)
            v.set_mode("original")
            self.queries = None
            return "segmentation cleared", True
        if kind == "reset_colors":
            v.set_scene(v.original)
            return "colours and opacities restored", True
        if kind == "undo":
            if not self.undo_stack:
                return "nothing to undo", False
            self._restore(self.undo_stack.pop())
            return "undone", False
        if kind == "save":
            files = self.save()
            return f"saved {len(files)} files to {self.out_dir}", False
        if kind in ("help", "unknown"):
            return a.message or "", False
        return f"(ignored action {kind})", False

    def save(self) -> list[Path]:
        """The edited scene (edited.pt, edited.ply) and, with a selection, the segment.py exports."""
        from .scene_io import save_gsplat_checkpoint, save_inria_ply
        from .segmentation import check_writable, write_segmentation

        v = self.viewer
        check_writable(self.out_dir)
        files = [save_gsplat_checkpoint(v.scene, self.out_dir / "edited.pt"),
                 save_inria_ply(v.scene, self.out_dir / "edited.ply")]
        if v.mask is not None and self.field is not None and self.queries is not None:
            cams = v.cameras
            n = min(self.save_views, len(cams))
            views = [cams[i * len(cams) // n] for i in range(n)] if n else []
            res = write_segmentation(v.scene, self.field, self.queries, v.mask, views, self.out_dir, progress=False)
            files += res.files
        return files


class LLMApp:
    """The command panel: a text box in a form (Enter submits), a transcript, and the editor behind it."""

    def __init__(self, viewer: Viewer, editor: SceneEditor, assistant) -> None:
        self.viewer = viewer
        self.editor = editor
        self.assistant = assistant
        self.transcript: list[str] = []
        self.commands_done = 0
        self._lock = threading.Lock()
        gui = viewer.server.gui
        with gui.add_folder("Assistant"):
            with gui.add_form("Command") as form:
                self.gui_command = gui.add_text("Command", "", hint="e.g. 'make the table red', 'top view', 'undo'")
                gui.add_button("Run").on_click(lambda _: form.submit())
            form.on_submit(lambda e: self._on_submit(e.client))
            self.gui_transcript = gui.add_markdown("Type a command, e.g. *show the top view*, *paint the vase blue*, "
                                                   "*remove the ball*, *undo*, *help*.")

    def _on_submit(self, client=None) -> None:
        text = self.gui_command.value.strip()
        if not text:
            return
        self.gui_command.value = ""
        self.run_command(text)

    def run_command(self, text: str) -> list[str]:
        """Parse and execute one sentence; append it and the replies to the transcript."""
        with self._lock:
            t0 = time.perf_counter()
            actions = self.assistant.parse(text)
            replies = self.editor.execute(actions)
            notice = getattr(self.assistant, "notice", None)
            self.transcript.append(f"**you:** {text}")
            if notice:
                self.transcript.append(f"*note:* {notice}")
            self.transcript += [f"→ {r}" for r in replies]
            self.transcript.append(f"<sub>{time.perf_counter() - t0:.2f} s</sub>")
            self.gui_transcript.content = "\n\n".join(self.transcript[-TRANSCRIPT_LINES:])
            self.commands_done += 1
            return replies


def run_llm_viewer(cfg: Any, assistant=None, *, block: bool = True, max_render_width: int = 640,
                   text_encoder=None) -> LLMApp:
    """Start the sentence-driven viewer for a `viewer_with_llm.ViewerConfig`-like `cfg`.

    Reads from cfg: checkpoint, data_dir, features, demo, port, host (and, if present, format, data_factor,
    normalize, out). assistant: an object with `.parse(sentence) -> list[Action]` (None = `make_assistant` from
    cfg.assistant/llm_* fields). block: serve until Ctrl+C (then stop); False returns the running app (tests).
    """
    from .features_file import load_feature_field
    from .scene_args import SceneArgs, load_scene_and_cameras
    from .viewer import ViewerOptions, serve_forever

    scene = SceneArgs(checkpoint=cfg.checkpoint, data_dir=cfg.data_dir, demo=bool(getattr(cfg, "demo", False)))
    for k in ("format", "data_factor", "normalize", "undistort"):
        if getattr(cfg, k, None) is not None:
            setattr(scene, k, getattr(cfg, k))
    features = cfg.features
    if features is None and scene.demo:
        from .demo_scene import demo_features_path

        features = demo_features_path()  # lifted (again) when missing or stale
    if assistant is None:
        from .assistant import assistant_from_config

        assistant = assistant_from_config(cfg)
    # A scene without cameras: next/previous step along an orbit.
    splats, cameras = load_scene_and_cameras(scene, verbose=True, default_orbit=24)
    field = load_feature_field(features, splats) if features is not None else None
    out = getattr(cfg, "out", None) or Path("results") / scene.scene_name() / "llm"
    viewer = Viewer(splats, cameras, ViewerOptions(host=cfg.host, port=cfg.port, max_render_width=max_render_width),
                    title="3DGS editor")
    try:
        app = LLMApp(viewer, SceneEditor(viewer, field, out, text_encoder=text_encoder), assistant)
    except BaseException:
        viewer.stop()
        raise
    if not block:
        return app
    print(f"editor running at {viewer.url}  (Ctrl+C to stop)", flush=True)
    try:
        serve_forever(viewer)
    finally:
        app.editor.stop_orbit()
    return app
