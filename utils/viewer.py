"""The shared viser app core: one server, one render worker per browser tab, view modes and camera jumps.

Apps (click-and-segment, the LLM editor) build on `Viewer`: they add their own GUI and callbacks, and change what
is shown through `set_scene` (the Gaussians drawn), `set_mask` + the view mode (original / extracted / deleted).

Rendering is on the CPU renderer (or gsplat with CUDA) at a small size (`max_render_width`, browser aspect); each
client has a single worker thread and camera updates coalesce (the latest camera wins) so a slow renderer never
builds a backlog.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from typing import Callable, Literal

import numpy as np
import torch
from torch import Tensor

from .camera import Camera
from .splats import Splats

ViewMode = Literal["original", "extracted", "deleted"]
VIEW_MODES: tuple[str, ...] = ("original", "extracted", "deleted")


@dataclass
class ViewerOptions:
    """Server and rendering settings shared by the browser apps."""

    host: str = "127.0.0.1"
    """Interface to bind (127.0.0.1 = this machine only; 0.0.0.0 = reachable from the network)."""
    port: int = 8080
    """Port (the next free one is used if taken; 0 = any free port)."""
    max_render_width: int = 640
    """Width of the server-side render (height follows the browser's aspect ratio)."""
    jpeg_quality: int = 85
    background: tuple[float, float, float] = (0.0, 0.0, 0.0)
    """Colour behind the Gaussians (RGB in [0, 1])."""
    up: tuple[float, float, float] | None = None
    """World up direction for the orbit controls (None = guessed from the training cameras)."""
    verbose: bool = False
    """Let viser print its own messages."""


# ---------------------------------------------------------------------------------------------------------------
# viser camera <-> our Camera
# ---------------------------------------------------------------------------------------------------------------


def render_size(image_width: int, image_height: int, max_width: int) -> tuple[int, int]:
    """(W, H) of the server-side render: at most `max_width` wide, the browser canvas's aspect ratio."""
    iw, ih = max(1, int(image_width)), max(1, int(image_height))
    w = min(int(max_width), iw)
    h = max(1, round(w * ih / iw))
    return w, h


def camera_from_viser(
    wxyz: np.ndarray, position: np.ndarray, fov_y: float, width: int, height: int, name: str = "client"
) -> Camera:
    """Our `Camera` for a viser camera state (viser: R_world_camera as wxyz, OpenCV axes; vertical fov in radians).

    Square pixels, principal point at the image centre: the browser canvas's projection scaled to (width, height).
    """
    w, x, y, z = (float(v) for v in np.asarray(wxyz, dtype=np.float64))
    n = math.sqrt(w * w + x * x + y * y + z * z)
    w, x, y, z = w / n, x / n, y / n, z / n
    R_wc = torch.tensor(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ],
        dtype=torch.float64,
    )
    t = torch.as_tensor(np.asarray(position, dtype=np.float64))
    viewmat = torch.eye(4, dtype=torch.float64)
    viewmat[:3, :3] = R_wc.T
    viewmat[:3, 3] = -R_wc.T @ t
    f = 0.5 * height / math.tan(0.5 * float(fov_y))
    K = torch.tensor([[f, 0.0, width / 2], [0.0, f, height / 2], [0.0, 0.0, 1.0]], dtype=torch.float64)
    return Camera(viewmat.float(), K.float(), width, height, name)


@dataclass
class ViserPose:
    """What to assign to a viser camera to show `Camera` c: position, look_at, up_direction, vertical fov (rad)."""

    position: np.ndarray
    look_at: np.ndarray
    up: np.ndarray
    fov: float


def viser_pose(camera: Camera, look_distance: float = 1.0) -> ViserPose:
    """The viser camera state that reproduces `camera`'s pose and vertical field of view."""
    c2w = camera.c2w.double().numpy()
    pos = c2w[:3, 3]
    fwd = c2w[:3, 2]
    fy = float(camera.K[1, 1])
    fov = 2.0 * math.atan(0.5 * camera.height / fy)
    return ViserPose(pos.copy(), pos + look_distance * fwd, -c2w[:3, 1].copy(), fov)


def pixel_ray(camera: Camera, x: float, y: float) -> tuple[Tensor, Tensor]:
    """World-space ray (origin [3], unit direction [3]) through image point (x, y) in pixels (pixel centres at +0.5)."""
    K = camera.K.double()
    d_cam = torch.tensor([(x - K[0, 2]) / K[0, 0], (y - K[1, 2]) / K[1, 1], 1.0], dtype=torch.float64)
    c2w = camera.c2w.double()
    d = c2w[:3, :3] @ d_cam
    return c2w[:3, 3].float(), (d / d.norm()).float()


def project_points(camera: Camera, points: Tensor) -> tuple[Tensor, Tensor]:
    """points [P, 3] world -> (pixels [P, 2] (x, y) in pixel units, depth z [P])."""
    assert points.ndim == 2 and points.shape[1] == 3, points.shape
    pc = points.double() @ camera.viewmat.double()[:3, :3].T + camera.viewmat.double()[:3, 3]
    z = pc[:, 2]
    K = camera.K.double()
    uv = torch.stack([K[0, 0] * pc[:, 0] / z + K[0, 2], K[1, 1] * pc[:, 1] / z + K[1, 2]], 1)
    return uv.float(), z.float()


# ---------------------------------------------------------------------------------------------------------------
# The server
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class FrameInfo:
    """The last frame sent to a client: its camera (render size), render time and sequence number."""

    count: int = 0
    camera: Camera | None = None
    render_seconds: float = 0.0
    sent_at: float = 0.0
    scene_version: int = -1


class _ClientRenderer:
    """One worker thread per client; `request()` marks the view dirty, the worker renders the newest state."""

    def __init__(self, viewer: "Viewer", client) -> None:
        self.viewer = viewer
        self.client = client
        self.frame = FrameInfo()
        self._cond = threading.Condition()
        self._dirty = False
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name=f"render-client-{client.client_id}", daemon=True)
        self._thread.start()

    def request(self) -> None:
        with self._cond:
            self._dirty = True
            self._cond.notify()

    def stop(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._dirty and not self._stop:
                    self._cond.wait()
                if self._stop:
                    return
                self._dirty = False  # requests arriving while we render make one more frame, not a queue
            try:
                self._render_once()
            except Exception as e:  # a failed frame must not kill the worker (e.g. client gone mid-send)
                if not self._stop:
                    self.viewer._report_error(f"render failed: {type(e).__name__}: {e}")

    def _render_once(self) -> None:
        cam = self.viewer.client_camera(self.client)
        if cam is None:
            return
        version, splats = self.viewer._snapshot()
        t0 = time.perf_counter()
        img = self.viewer.render_image(splats, cam)
        dt = time.perf_counter() - t0
        if self._stop:
            return
        self.client.scene.set_background_image(img, format="jpeg", jpeg_quality=self.viewer.options.jpeg_quality)
        self.client.flush()
        self.frame = FrameInfo(self.frame.count + 1, cam, dt, time.time(), version)
        self.viewer._frame_event.set()


class Viewer:
    """A viser server showing `splats` with per-client server-side rendering.

    splats: the scene as loaded (kept as `original`); cameras: the training views (jump targets), may be empty.
    Apps add GUI elements to `self.server.gui` after construction; the "View" folder is created here.
    """

    def __init__(self, splats: Splats, cameras: list[Camera], options: ViewerOptions | None = None,
                 title: str = "3DGS feature field viewer") -> None:
        import viser

        self.options = options or ViewerOptions()
        self.original = splats
        self.cameras = list(cameras)
        self._lock = threading.RLock()
        self._scene = splats
        self._mask: Tensor | None = None
        self._mode: str = "original"
        self._version = 0
        self._visible_cache: tuple[int, Splats, Tensor | None] | None = None
        self._renderers: dict[int, _ClientRenderer] = {}
        self._frame_event = threading.Event()
        self._stopped = False
        self.errors: list[str] = []
        self.background = torch.tensor(self.options.background, dtype=torch.float32)

        self.server = viser.ViserServer(host=self.options.host, port=self.options.port, label=title,
                                        verbose=self.options.verbose)
        up = self.options.up
        if up is None and self.cameras:
            from .camera_paths import guess_up

            up = tuple(float(v) for v in guess_up(self.cameras))
        self.up = np.asarray(up if up is not None else (0.0, 0.0, 1.0), dtype=np.float64)
        self.server.scene.set_up_direction(self.up)
        if self.cameras:
            p = viser_pose(self.cameras[0], self._look_distance(self.cameras[0]))
            self.server.initial_camera.position = p.position
            self.server.initial_camera.look_at = p.look_at
            self.server.initial_camera.up = p.up
            self.server.initial_camera.fov = p.fov
        self._build_view_gui()
        self.server.on_client_connect(self._on_connect)
        self.server.on_client_disconnect(self._on_disconnect)

    # -- GUI -------------------------------------------------------------------------------------------------
    def _build_view_gui(self) -> None:
        gui = self.server.gui
        with gui.add_folder("View"):
            self.gui_mode = gui.add_dropdown("Show", VIEW_MODES, initial_value="original",
                                             hint="original scene, the extracted selection, or the scene with it deleted")
            self.gui_mode.on_update(lambda _: self.set_mode(self.gui_mode.value))
            names = [c.name or f"view {i}" for i, c in enumerate(self.cameras)]
            self._view_names = names
            if names:
                self.gui_view = gui.add_dropdown("Camera", names, initial_value=names[0],
                                                 hint="jump to a training camera")
                # server-side assignments (client None) only mirror a jump already made
                self.gui_view.on_update(
                    lambda e: None if e.client is None else self.jump_to(names.index(self.gui_view.value), e.client))
                prev_b = gui.add_button("Previous camera")
                next_b = gui.add_button("Next camera")
                prev_b.on_click(lambda e: self.step_view(-1, e.client))
                next_b.on_click(lambda e: self.step_view(+1, e.client))
        self._view_index = 0

    # -- clients ---------------------------------------------------------------------------------------------
    def _on_connect(self, client) -> None:
        with self._lock:
            if self._stopped:
                return
            r = _ClientRenderer(self, client)
            self._renderers[client.client_id] = r
        client.camera.on_update(lambda _cam: r.request())
        r.request()

    def _on_disconnect(self, client) -> None:
        with self._lock:
            r = self._renderers.pop(client.client_id, None)
        if r is not None:
            r.stop()

    def clients(self) -> list:
        with self._lock:
            return [r.client for r in self._renderers.values()]

    def frame_info(self, client_id: int) -> FrameInfo:
        with self._lock:
            r = self._renderers.get(client_id)
        return r.frame if r is not None else FrameInfo()

    def wait_for_client(self, timeout: float = 30.0) -> int:
        """Block until a client has connected and sent its camera; return its id."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            for c in self.clients():
                if self.client_camera(c) is not None:
                    return c.client_id
            time.sleep(0.05)
        raise TimeoutError("no browser client connected")

    def wait_for_frame(self, client_id: int, after: int = 0, timeout: float = 30.0,
                       predicate: Callable[[FrameInfo], bool] | None = None) -> FrameInfo:
        """Block until client `client_id` received frame number > `after` (and `predicate(frame)` holds)."""
        deadline = time.time() + timeout
        while True:
            f = self.frame_info(client_id)
            if f.count > after and (predicate is None or predicate(f)):
                return f
            left = deadline - time.time()
            if left <= 0:
                raise TimeoutError(f"no new frame for client {client_id} within {timeout} s (last #{f.count})")
            self._frame_event.clear()
            self._frame_event.wait(min(left, 0.1))

    # -- cameras ---------------------------------------------------------------------------------------------
    def client_camera(self, client) -> Camera | None:
        """The client's current view as our Camera at the render size, or None before its first camera message."""
        cam = client.camera
        if cam._state.update_timestamp == 0.0 or cam._state.image_width <= 0:
            return None
        w, h = render_size(cam.image_width, cam.image_height, self.options.max_render_width)
        return camera_from_viser(cam.wxyz, cam.position, cam.fov, w, h)

    def _look_distance(self, camera: Camera) -> float:
        """Distance to the scene centre along the view (orbit pivot), at least a small positive value."""
        from .camera_paths import scene_bounds

        if not hasattr(self, "_center"):
            self._center = scene_bounds(self.original).center.double()
        c2w = camera.c2w.double()
        d = float((self._center - c2w[:3, 3]) @ c2w[:3, 2])
        return max(d, 1e-2)

    def set_client_camera(self, client, camera: Camera) -> None:
        """Move a client's view to `camera` (pose and vertical field of view)."""
        p = viser_pose(camera, self._look_distance(camera))
        with client.atomic():
            client.camera.up_direction = p.up
            client.camera.position = p.position
            client.camera.look_at = p.look_at
            client.camera.fov = p.fov
        client.flush()

    def jump_to(self, index: int, client=None) -> None:
        """Show training camera `index` on `client` (all clients if None)."""
        if not self.cameras:
            return
        index = index % len(self.cameras)
        self._view_index = index
        if self.gui_view.value != self._view_names[index]:
            self.gui_view.value = self._view_names[index]
        for c in [client] if client is not None else self.clients():
            self.set_client_camera(c, self.cameras[index])

    def step_view(self, step: int, client=None) -> None:
        self.jump_to(self._view_index + step, client)

    # -- what is shown ---------------------------------------------------------------------------------------
    @property
    def scene(self) -> Splats:
        """The Gaussians drawn in 'original' mode (apps may replace them with `set_scene`)."""
        return self._scene

    @property
    def version(self) -> int:
        """Increases on every change of what is shown (scene, mask, mode); frames record the version they drew."""
        return self._version

    @property
    def mode(self) -> str:
        return self._mode

    @property
    def mask(self) -> Tensor | None:
        return self._mask

    def set_scene(self, splats: Splats) -> None:
        assert splats.num == self.original.num, "set_scene keeps the Gaussian count (edit attributes, not membership)"
        with self._lock:
            self._scene = splats
            self._version += 1
        self.rerender()

    def set_mask(self, mask: Tensor | None) -> None:
        """The selection [N] bool (None = no selection: every mode shows the whole scene)."""
        if mask is not None:
            assert mask.shape == (self.original.num,) and mask.dtype == torch.bool, (mask.shape, mask.dtype)
        with self._lock:
            self._mask = mask
            self._version += 1
        self.rerender()

    def set_mode(self, mode: str) -> None:
        if mode not in VIEW_MODES:
            raise ValueError(f"unknown view mode {mode!r}; expected one of {VIEW_MODES}")
        with self._lock:
            changed = mode != self._mode
            self._mode = mode
            if changed:
                self._version += 1
        if self.gui_mode.value != mode:
            self.gui_mode.value = mode  # its callback calls set_mode(mode) again: a no-op now
        if changed:
            self.rerender()

    def visible_index(self) -> Tensor | None:
        """[M] indices of the Gaussians drawn in the current mode (None = all)."""
        with self._lock:
            mask, mode = self._mask, self._mode
        if mask is None or mode == "original":
            return None
        return torch.nonzero(mask if mode == "extracted" else ~mask).squeeze(1)

    def _snapshot(self) -> tuple[int, Splats]:
        with self._lock:
            if self._visible_cache is None or self._visible_cache[0] != self._version:
                idx = self.visible_index()
                self._visible_cache = (self._version, self._scene if idx is None else self._scene.subset(idx), idx)
            return self._visible_cache[0], self._visible_cache[1]

    def visible(self) -> tuple[Splats, Tensor | None]:
        """(the drawn Gaussians, their indices into the scene or None = all)."""
        self._snapshot()
        with self._lock:
            assert self._visible_cache is not None
            return self._visible_cache[1], self._visible_cache[2]

    def render_image(self, splats: Splats, camera: Camera) -> np.ndarray:
        """[H, W, 3] uint8 frame of `splats` seen by `camera` on the viewer's background."""
        if splats.num == 0:
            img = self.background.expand(camera.height, camera.width, 3)
        else:
            from .render import render

            img = render(splats, camera, background=self.background.to(splats.device)).colors
        return (img.detach().cpu().clamp(0, 1) * 255).round().to(torch.uint8).numpy()

    def rerender(self) -> None:
        """Ask every client's worker for a fresh frame."""
        with self._lock:
            rs = list(self._renderers.values())
        for r in rs:
            r.request()

    # -- misc ------------------------------------------------------------------------------------------------
    @property
    def port(self) -> int:
        return self.server.get_port()

    @property
    def url(self) -> str:
        host = self.options.host
        shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host  # all interfaces: this machine works
        return f"http://{shown}:{self.port}"

    def notify(self, title: str, body: str = "", client=None, color: str | None = None) -> None:
        """A short notification in the browser (one client, or all)."""
        for c in [client] if client is not None else self.clients():
            try:
                c.add_notification(title, body, auto_close_seconds=4.0, color=color)
            except Exception:  # client disconnected meanwhile
                pass

    def _report_error(self, msg: str) -> None:
        self.errors.append(msg)
        if self.options.verbose:
            print(msg)

    def stop(self) -> None:
        """Stop the render workers and the server (idempotent)."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            rs = list(self._renderers.values())
            self._renderers.clear()
        for r in rs:
            r.stop()
        self.server.stop()

    def __enter__(self) -> "Viewer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def serve_forever(viewer: Viewer, poll: float = 0.5) -> None:
    """Block the main thread until Ctrl+C (or SIGTERM), then stop cleanly."""
    import signal

    def _term(signum, frame):
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _term)
    try:
        while True:
            time.sleep(poll)
    except KeyboardInterrupt:
        pass
    finally:
        viewer.stop()
