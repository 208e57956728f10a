"""Click-and-segment: clicks (and text) -> prompts -> a 3D selection, in the browser on the shared viewer core.

A click at pixel (x, y) of a view gives
    - a 3D point: the ray through the pixel centre, at the expected depth ("ED" render) of that pixel;
    - a query vector: the rendered feature of that pixel from the unit-normalised per-Gaussian features, unit-normalised.
Prompts are scored with the shared rule of `utils.query` (best positive vs best negative cosine, optional threshold,
never-seen Gaussians excluded) and exported with `utils.segmentation.write_segmentation`.

`ClickSegmenter` is the logic (no browser); `ClickApp` binds it to a `Viewer`: click = positive, Shift+click = negative.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .camera import Camera
from .errors import UserError
from .features_file import FeatureField
from .query import PromptSet, Queries, encode_queries, select_gaussians, space_kind
from .splats import Splats
from .viewer import Viewer, pixel_ray

MIN_ALPHA = 0.5  # a click on a pixel less opaque than this hits nothing


@dataclass
class Prompt:
    """One prompt. positive: include (True) or exclude (False).

    text: a text/class-name prompt, or None; vector: [D] unit query vector (clicks), or None;
    point: [3] world point of a click (for the marker), or None (text prompts, vectors loaded from a file).
    """

    positive: bool
    text: str | None = None
    vector: Tensor | None = None
    point: Tensor | None = None
    uid: int = 0

    def label(self) -> str:
        sign = "+" if self.positive else "−"
        if self.text is not None:
            return f"{sign} #{self.uid} text '{self.text}'"
        if self.point is not None:
            p = self.point.tolist()
            return f"{sign} #{self.uid} click ({p[0]:.2f}, {p[1]:.2f}, {p[2]:.2f})"
        return f"{sign} #{self.uid} vector"


@dataclass
class Pick:
    """What a click at pixel (x, y) hits. point: [3] world; vector: [D] unit feature; depth: camera z; alpha: opacity."""

    x: float
    y: float
    point: Tensor
    vector: Tensor
    depth: float
    alpha: float

    @property
    def hit(self) -> bool:
        return self.alpha >= MIN_ALPHA


def _pick_pixel(splats: Splats, unit_features: Tensor, camera: Camera, x: float, y: float) -> tuple[int, int, Pick | None]:
    """The pixel (ix, iy) a click at (x, y) falls in, clamped to the image; and the empty pick of an empty scene."""
    assert unit_features.ndim == 2 and unit_features.shape[0] == splats.num, (unit_features.shape, splats.num)
    ix = int(min(max(np.floor(x), 0), camera.width - 1))
    iy = int(min(max(np.floor(y), 0), camera.height - 1))
    if splats.num == 0:
        return ix, iy, Pick(x, y, torch.full((3,), float("nan")), torch.zeros(unit_features.shape[1]), float("nan"), 0.0)
    return ix, iy, None


def pick(splats: Splats, unit_features: Tensor, camera: Camera, x: float, y: float) -> Pick:
    """Render the (visible) scene's unit features + expected depth at `camera`; read pixel (floor x, floor y).

    splats: the Gaussians on screen; unit_features: [N, D] their unit features (zero rows for never-seen ones);
    (x, y): image coordinates in pixels of `camera` (0..W, 0..H, top-left origin).
    Only the clicked pixel is composited (its exact weights from `pixel_weights`), with the same float32 sums in the
    same order as the full "RGB+ED" render, so the values equal reading that render at the pixel.
    """
    from .projection import project
    from .raster_cpu import pixel_weights

    ix, iy, empty = _pick_pixel(splats, unit_features, camera, x, y)
    if empty is not None:
        return empty
    proj = project(splats, camera)
    contrib, T = pixel_weights(proj, torch.tensor([iy * camera.width + ix]))
    feats = unit_features.detach().cpu().float()
    ids, ws = contrib.gaussian.long(), contrib.weight
    zs = proj.depths[ids]
    # Front to back, one float32 multiply-add at a time, like the rasterizer's per-pixel accumulators.
    acc = torch.zeros(feats.shape[1], dtype=torch.float32)
    dep = torch.zeros((), dtype=torch.float32)
    for m in range(ids.shape[0]):
        acc += feats[ids[m]] * ws[m]
        dep += zs[m] * ws[m]
    alpha_t = 1.0 - T[0]
    alpha = float(alpha_t)
    z = float(dep / alpha_t.clamp_min(1e-10))
    f = acc / acc.norm().clamp_min(1e-12)
    origin, d = pixel_ray(camera, ix + 0.5, iy + 0.5)
    fwd = camera.c2w[:3, 2]
    point = origin + d * (z / float(d @ fwd))  # ED is camera z, not distance along the ray
    return Pick(x, y, point, f, z, alpha)


def pick_by_render(splats: Splats, unit_features: Tensor, camera: Camera, x: float, y: float) -> Pick:
    """`pick` through a full "RGB+ED" render of the view (the slow reference it must equal; kept for tests)."""
    from .render import render

    ix, iy, empty = _pick_pixel(splats, unit_features, camera, x, y)
    if empty is not None:
        return empty
    out = render(splats, camera, features=unit_features.float(), render_mode="RGB+ED")
    alpha = float(out.alpha[iy, ix])
    z = float(out.depth[iy, ix])
    f = out.colors[iy, ix].detach().cpu().float()
    f = f / f.norm().clamp_min(1e-12)
    origin, d = pixel_ray(camera, ix + 0.5, iy + 0.5)
    fwd = camera.c2w[:3, 2]
    point = origin + d * (z / float(d @ fwd))  # ED is camera z, not distance along the ray
    return Pick(x, y, point, f, z, alpha)


class ClickSegmenter:
    """The prompts of one session and the selection they give.

    splats: the scene; field: its feature field (same Gaussians); text_encoder: override for text spaces (tests).
    threshold: absolute cut on the best positive score (None = only best-positive-vs-best-negative;
    `encode_queries` uses 0.5 when there are no negatives).
    """

    def __init__(self, splats: Splats, field: FeatureField, text_encoder=None, threshold: float | None = None) -> None:
        if field.features.shape[0] != splats.num:
            raise UserError(f"features are for {field.features.shape[0]} Gaussians but the scene has {splats.num}")
        self.splats = splats
        self.field = field
        self.unit = field.normalized()
        self.text_encoder = text_encoder
        self.threshold = threshold
        self.prompts: list[Prompt] = []
        self._next_uid = 1
        self._lock = threading.RLock()

    @property
    def dim(self) -> int:
        return int(self.field.features.shape[1])

    @property
    def accepts_text(self) -> bool:
        """Text prompts need a text space (CLIP-like) or class names (label maps)."""
        return space_kind(self.field.space) != "raw"

    # -- prompts ---------------------------------------------------------------------------------------------
    def _add(self, p: Prompt) -> Prompt:
        with self._lock:
            p.uid = self._next_uid
            self._next_uid += 1
            self.prompts.append(p)
        return p

    def add_pick(self, pk: Pick, positive: bool = True) -> Prompt | None:
        """A prompt from a click; None when the click hit nothing (background)."""
        if not pk.hit:
            return None
        return self._add(Prompt(positive, vector=pk.vector.clone(), point=pk.point.clone()))

    def click(self, camera: Camera, x: float, y: float, positive: bool = True,
              visible_index: Tensor | None = None) -> tuple[Pick, Prompt | None]:
        """Pick at pixel (x, y) of `camera` among the visible Gaussians (indices, None = all) and add a prompt."""
        splats, unit = self.splats, self.unit
        if visible_index is not None:
            splats, unit = splats.subset(visible_index), unit[visible_index]
        pk = pick(splats, unit, camera, x, y)
        return pk, self.add_pick(pk, positive)

    def add_text(self, text: str, positive: bool = True) -> Prompt:
        text = text.strip()
        if not text:
            raise UserError("empty text prompt")
        if not self.accepts_text:
            raise UserError(f"features space {self.field.space!r} has no text encoder: use clicks")
        p = Prompt(positive, text=text)
        self._check(self.prompts + [p])  # unknown class names etc. are refused before they enter the list
        return self._add(p)

    def remove(self, uid: int) -> bool:
        with self._lock:
            n = len(self.prompts)
            self.prompts = [p for p in self.prompts if p.uid != uid]
            return len(self.prompts) != n

    def clear(self) -> None:
        with self._lock:
            self.prompts = []

    # -- prompt sets -----------------------------------------------------------------------------------------
    def prompt_set(self, prompts: list[Prompt] | None = None) -> PromptSet:
        ps = PromptSet(threshold=self.threshold)
        for p in self.prompts if prompts is None else prompts:
            if p.text is not None:
                (ps.positive_text if p.positive else ps.negative_text).append(p.text)
            elif p.vector is not None:
                (ps.positive_vectors if p.positive else ps.negative_vectors).append([float(v) for v in p.vector])
        return ps

    def load_prompt_set(self, ps: PromptSet) -> None:
        """Replace the prompts (and threshold) by a saved set (vectors have no 3D point, so no marker)."""
        new: list[Prompt] = []
        for positive, texts, vecs in ((True, ps.positive_text, ps.positive_vectors),
                                      (False, ps.negative_text, ps.negative_vectors)):
            new += [Prompt(positive, text=t) for t in texts]
            for v in vecs:
                vt = torch.tensor(v, dtype=torch.float32)
                if vt.numel() != self.dim:
                    raise UserError(f"prompt set vectors have dimension {vt.numel()} but the features have {self.dim}")
                new.append(Prompt(positive, vector=vt / vt.norm().clamp_min(1e-12)))
        if (ps.positive_text or ps.negative_text) and not self.accepts_text:
            raise UserError(f"prompt set has text prompts but features space {self.field.space!r} has no text encoder")
        self._check(new)
        with self._lock:
            self.prompts = []
            self.threshold = ps.threshold
            for p in new:
                self._add(p)

    # -- selection -------------------------------------------------------------------------------------------
    def _meta_for(self, ps: PromptSet) -> dict:
        # Prompts made only of click vectors: compare them with each other, not with the space's default negative
        # ("other" = every class, or a text), so encode in the raw-vector space (threshold 0.5 without negatives).
        if not ps.positive_text and not ps.negative_text:
            return {**self.field.meta, "space": "features"}
        return self.field.meta

    def _check(self, prompts: list[Prompt]) -> None:
        ps = self.prompt_set(prompts)
        if not ps.is_empty:
            encode_queries(self._meta_for(ps), self.dim, ps, self.text_encoder, source="prompt")

    def queries(self) -> Queries | None:
        """The unit query vectors of the current prompts (None = no positive prompt yet)."""
        ps = self.prompt_set()
        if ps.is_empty:
            return None
        return encode_queries(self._meta_for(ps), self.dim, ps, self.text_encoder, source="prompt")

    def mask(self) -> Tensor | None:
        """[N] bool selection of the current prompts, or None without a positive prompt."""
        q = self.queries()
        return None if q is None else select_gaussians(self.field, q)


# ---------------------------------------------------------------------------------------------------------------
# The browser app
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class ClickTiming:
    """Server-side timing of one click: when it arrived, pick (feature + depth render) and selection+redraw request
    durations, and the viewer version whose frames show the new selection."""

    received_at: float
    pick_seconds: float
    update_seconds: float
    version: int


@dataclass
class ClickAppOptions:
    out_dir: Path = Path("results/click")
    """Where 'Save selection' writes mask.pt, extracted/deleted .pt/.ply, renders, prompts.json."""
    save_views: int = 4
    """Training views rendered into the saved videos (0 = none: files only)."""
    marker_radius: float = 0.0
    """Marker sphere radius in world units (0 = 1% of the scene size)."""


class ClickApp:
    """The click-and-segment GUI on a `Viewer` (panel: prompt list, text prompt, threshold, save/load)."""

    def __init__(self, viewer: Viewer, segmenter: ClickSegmenter, options: ClickAppOptions | None = None) -> None:
        self.viewer = viewer
        self.seg = segmenter
        self.options = options or ClickAppOptions()
        self._lock = threading.RLock()
        self._markers: dict[int, object] = {}
        self._prompt_buttons: list = []
        self.last_pick: Pick | None = None
        self.last_saved: list[Path] = []
        self.timings: list[ClickTiming] = []
        if self.options.marker_radius > 0:
            self.marker_radius = self.options.marker_radius
        else:
            from .camera_paths import scene_bounds

            self.marker_radius = 0.01 * scene_bounds(segmenter.splats).radius * 2
        self._build_gui()
        server = viewer.server
        server.scene.on_click()(lambda e: self._on_click(e, True))
        server.scene.on_click(modifier="shift")(lambda e: self._on_click(e, False))

    # -- GUI -------------------------------------------------------------------------------------------------
    def _build_gui(self) -> None:
        gui = self.viewer.server.gui
        with gui.add_folder("Segment"):
            gui.add_markdown("Click = positive prompt · **Shift+click** = negative prompt")
            self.gui_status = gui.add_markdown("No prompts yet.")
            self.gui_threshold = gui.add_slider(
                "Threshold", 0.0, 1.0, 0.01, float(self.seg.threshold or 0.0),
                hint="minimum cosine to the best positive prompt (0 = off; 0.5 is used for clicks without negatives)",
            )
            self.gui_threshold.on_update(lambda _: self._set_threshold(self.gui_threshold.value))
            if self.seg.accepts_text:
                with gui.add_form("Text prompt") as form:
                    self.gui_text = gui.add_text("Prompt", "", hint="Enter adds it as a positive prompt")
                    neg = gui.add_button("Add as negative")
                form.on_submit(lambda e: self._add_text(True, e.client))
                neg.on_click(lambda e: self._add_text(False, e.client))
            self.gui_clear = gui.add_button("Clear prompts", color="red")
            self.gui_clear.on_click(lambda e: self.clear())
        self.gui_prompts = gui.add_folder("Prompts")
        with gui.add_folder("Files"):
            self.gui_out = gui.add_text("Output folder", str(self.options.out_dir))
            self.gui_save = gui.add_button("Save selection")
            self.gui_save.on_click(lambda e: self._guard(self.save, e.client))
            self.gui_prompt_path = gui.add_text("Prompt set", str(self.options.out_dir / "prompts.json"))
            save_p = gui.add_button("Save prompt set")
            load_p = gui.add_button("Load prompt set")
            save_p.on_click(lambda e: self._guard(lambda: self.save_prompt_set(Path(self.gui_prompt_path.value)), e.client))
            load_p.on_click(lambda e: self._guard(lambda: self.load_prompt_set(Path(self.gui_prompt_path.value)), e.client))

    def _guard(self, fn, client=None):
        """Run an action; a user error becomes a notification instead of a traceback in the server log."""
        try:
            return fn()
        except UserError as e:
            self.viewer.notify("Error", str(e), client, color="red")
            return None

    def _refresh(self) -> None:
        """Rebuild the prompt list and markers, recompute the selection and redraw."""
        with self._lock:
            prompts = list(self.seg.prompts)
            for b in self._prompt_buttons:
                b.remove()
            self._prompt_buttons = []
            with self.gui_prompts:
                for p in prompts:
                    b = self.viewer.server.gui.add_button(f"✕ {p.label()}", hint="remove this prompt",
                                                          color="green" if p.positive else "red")
                    b.on_click(lambda e, uid=p.uid: self.remove(uid))
                    self._prompt_buttons.append(b)
            keep = {p.uid for p in prompts if p.point is not None}
            for uid in list(self._markers):
                if uid not in keep:
                    self._markers.pop(uid).remove()
            for p in prompts:
                if p.point is not None and p.uid not in self._markers:
                    self._markers[p.uid] = self.viewer.server.scene.add_icosphere(
                        f"/prompts/p{p.uid}", radius=self.marker_radius,
                        color=(30, 220, 60) if p.positive else (230, 40, 40),
                        position=tuple(float(v) for v in p.point), cast_shadow=False, receive_shadow=False,
                    )
            mask = self.seg.mask()
            n = 0 if mask is None else int(mask.sum())
            self.gui_status.content = (
                "No prompts yet." if not prompts else f"{len(prompts)} prompt(s) · **{n:,}** of {self.seg.splats.num:,} Gaussians selected"
            )
            self.viewer.set_mask(mask)

    def _on_click(self, event, positive: bool) -> None:
        t0 = time.time()
        cam = self.viewer.client_camera(event.client)
        if cam is None:
            return
        sx, sy = event.screen_pos
        with self._lock:
            pk, prompt = self.seg.click(cam, sx * cam.width, sy * cam.height, positive, self.viewer.visible_index())
            self.last_pick = pk
            t1 = time.time()
            if prompt is None:
                self.viewer.notify("Nothing there", "The click hit the background.", event.client)
                return
            self._refresh()
            self.timings.append(ClickTiming(t0, t1 - t0, time.time() - t1, self.viewer.version))

    def _add_text(self, positive: bool, client=None) -> None:
        text = self.gui_text.value
        if self._guard(lambda: self.seg.add_text(text, positive), client) is not None:
            self.gui_text.value = ""
            self._refresh()

    def _set_threshold(self, value: float) -> None:
        self.seg.threshold = float(value) if value > 0 else None
        self._refresh()

    # -- actions (also called by tests) ----------------------------------------------------------------------
    def remove(self, uid: int) -> None:
        if self.seg.remove(uid):
            self._refresh()

    def clear(self) -> None:
        self.seg.clear()
        self._refresh()

    def save(self, out_dir: Path | None = None) -> list[Path]:
        """Write the selection (mask.pt, extracted/deleted .pt and .ply, renders, prompts.json) to `out_dir`."""
        from .segmentation import check_writable, write_segmentation

        out_dir = Path(out_dir or self.gui_out.value)
        q = self.seg.queries()
        mask = self.seg.mask()
        if q is None or mask is None:
            raise UserError("nothing to save: add a positive prompt first")
        check_writable(out_dir)
        cams = self.viewer.cameras
        n = min(self.options.save_views, len(cams))
        views = [cams[i * len(cams) // n] for i in range(n)] if n > 0 else []
        res = write_segmentation(self.seg.splats, self.seg.field, q, mask, views, out_dir,
                                 prompts=self.seg.prompt_set(), progress=False)
        self.last_saved = res.files
        self.viewer.notify("Saved", f"{res.num_selected:,} Gaussians selected → {out_dir}")
        return res.files

    def save_prompt_set(self, path: Path) -> Path:
        ps = self.seg.prompt_set()
        if ps.is_empty:
            raise UserError("nothing to save: add a positive prompt first")
        ps.save(path)
        self.viewer.notify("Saved", f"prompt set → {path}")
        return path

    def load_prompt_set(self, path: Path) -> None:
        self.seg.load_prompt_set(PromptSet.load(path))
        if self.seg.threshold is not None:
            self.gui_threshold.value = self.seg.threshold
        self._refresh()
