"""Gradient-weighted feature back-projection: f_k = sum w_k F / sum w_k with w = alpha * T.

The weights are gsplat's exact compositing weights, taken straight from the rasterizer (`render_store`: one pass per
view, kept per tile and grouped by Gaussian, with a low-resolution map's bilinear upsampling folded in), so no autograd
pass is needed: the numerator is what the gradient of sum_p <render(g)(p), F(p)> w.r.t. per-Gaussian features g would give,
the denominator the gradient of the rendered ones-channel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np
import torch
import torch.nn.functional as tF
from torch import Tensor

from .camera import Camera
from .feature_sources.base import FeatureMap
from .memory import huge_page_zeros
from .native import ptr, run_parallel
from .native import select as select_native
from .numba_prefetch import prefetch
from .raster_cpu import TILE, FoldTaps, StoreWorkspace, TileStore
from .render import Contributions, render_store
from .splats import Splats


@dataclass
class Accumulator:
    """Running sums of one lifting job.

    numer: [N, D] float32, sum over views and pixels of w * F.
    denom: [N] float64, sum of w.
    views_done: names of the views already accumulated (for resuming).
    """

    numer: Tensor
    denom: Tensor
    views_done: list[str]

    @staticmethod
    def zeros(num_gaussians: int, dim: int) -> "Accumulator":
        return Accumulator(
            huge_page_zeros(num_gaussians, dim),  # rows are updated in random order: spare the TLB
            torch.zeros(num_gaussians, dtype=torch.float64),
            [],
        )

    def features(self) -> Tensor:
        """[N, D] weighted average; rows never seen are 0."""
        seen = self.denom > 0
        out = torch.zeros_like(self.numer)
        out[seen] = (self.numer[seen].double() / self.denom[seen, None]).float()
        return out


def resize_feature_map(fmap: FeatureMap, height: int, width: int) -> tuple[Tensor, Tensor | None]:
    """The map at the render size: features [H, W, D] and valid [H, W] (or None).

    Bilinear uses torch's `interpolate(align_corners=False)`; label-like maps and validity use nearest.
    """
    feats, valid = fmap.features, fmap.valid
    h, w = feats.shape[:2]
    if (h, w) != (height, width):
        mode = fmap.resize
        x = feats.permute(2, 0, 1)[None].float()
        if mode == "bilinear":
            x = tF.interpolate(x, size=(height, width), mode="bilinear", align_corners=False)
        else:
            x = tF.interpolate(x, size=(height, width), mode="nearest")
        feats = x[0].permute(1, 2, 0)
        if valid is not None:
            valid = _resize_valid(valid, height, width)
    return feats.float().contiguous(), valid


def _resize_valid(valid: Tensor, height: int, width: int) -> Tensor:
    """[h, w] bool -> [height, width] bool, nearest."""
    return tF.interpolate(valid[None, None].float(), size=(height, width), mode="nearest")[0, 0] > 0.5


# How many entries ahead the product starts fetching a run's accumulator row (random 2 KB rows of an N x D array).
_PREFETCH_AHEAD = 16


@numba.njit(parallel=True, cache=True, fastmath=True)
def _grouped_kernel(
    numer, denom, seg_order, seg_start, seg_len, pixel, gaussian, weight, feats, nchunks
):  # pragma: no cover - numba
    # Segments (tiles) are visited in seg_order; inside one, entries come in runs of one Gaussian: sum a run in a local
    # row, write numer once per run. Column blocks per thread keep the writes race-free; a tile's feature rows stay in
    # cache across its runs. Four entries per pass over the row cut its loads/stores 4x (this reassociates each run's
    # float32 sum, a rounding-level change; fastmath lets LLVM vectorise the row updates).
    # Each run's float64 sum of weights goes to denom by the thread with c = g % nchunks (race-free, balanced).
    D = feats.shape[1]
    flat = numer.reshape(-1)
    for c in numba.prange(nchunks):
        d0 = c * D // nchunks
        d1 = (c + 1) * D // nchunks
        n = d1 - d0
        row = np.zeros(n, np.float32)
        for s in seg_order:
            m = seg_start[s]
            M = m + seg_len[s]
            while m < M:
                g = gaussian[m]
                e = m
                while e < M and gaussian[e] == g:
                    e += 1
                if m + _PREFETCH_AHEAD < M:
                    ahead = np.int64(gaussian[m + _PREFETCH_AHEAD])
                    for k in range(d0, d1, 16):  # one hint per 64-byte line
                        prefetch(flat, ahead * D + k)
                    prefetch(denom, ahead)
                if g % nchunks == c:
                    sw = 0.0
                    for k in range(m, e):
                        sw += np.float64(weight[k])
                    denom[g] += sw
                while m + 4 <= e:
                    w0, w1, w2, w3 = weight[m], weight[m + 1], weight[m + 2], weight[m + 3]
                    f0 = feats[pixel[m], d0:d1]
                    f1 = feats[pixel[m + 1], d0:d1]
                    f2 = feats[pixel[m + 2], d0:d1]
                    f3 = feats[pixel[m + 3], d0:d1]
                    for k in range(n):
                        row[k] += (w0 * f0[k] + w1 * f1[k]) + (w2 * f2[k] + w3 * f3[k])
                    m += 4
                while m < e:
                    w = weight[m]
                    fr = feats[pixel[m], d0:d1]
                    for k in range(n):
                        row[k] += w * fr[k]
                    m += 1
                out = numer[g, d0:d1]
                for k in range(n):
                    out[k] += row[k]
                    row[k] = 0


def _bilinear_taps(out_size: int, in_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source rows (i0, i1) and the weight of i1 for every output row, exactly as torch's bilinear
    `interpolate(align_corners=False)`: src = (dst + 0.5) * in / out - 0.5, clamped at 0."""
    scale = np.float32(in_size / out_size)
    src = (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    src = np.maximum(src, np.float32(0))
    i0 = src.astype(np.int64)
    i1 = np.minimum(i0 + 1, in_size - 1)
    lam = (src - i0.astype(np.float32)).astype(np.float32)
    return i0, i1, lam


def lift_view(
    acc: Accumulator,
    splats: Splats,
    camera: Camera,
    fmap: FeatureMap,
    *,
    workspace: StoreWorkspace | None = None,
    backend: str = "auto",
    native: bool | None = None,
) -> None:
    """Add one view's sum_p w F and sum_p w to `acc` in place, given the source's own-resolution map.

    Exactly lifting the map resized to the render size (`resize_feature_map`): a low-resolution bilinear map is
    never upsampled, its upsampling is folded into the weights, so the D-dimensional product runs at the map's
    resolution. Invalid pixels (fmap.valid) contribute nothing.
    workspace: reuse its buffers across views (pass the same one for every view of a job).
    backend: validated like `render`'s; the weights always come from the CPU kernel.
    native: the C kernels (`utils.native`) or numba's, see `accumulate_store`.
    """
    store, feats = view_weights(splats, camera, fmap, workspace=workspace, backend=backend, native=native)
    accumulate_store(acc, store, feats, native=native)


def view_weights(
    splats: Splats,
    camera: Camera,
    fmap: FeatureMap,
    *,
    workspace: StoreWorkspace | None = None,
    backend: str = "auto",
    native: bool | None = None,
) -> tuple[TileStore, np.ndarray]:
    """The first half of `lift_view`: the view's weights on the map's own grid (folded when it is a smaller bilinear
    map, else at the render size) and the matching features [grid_h * grid_w, D] float32."""
    H, W = camera.height, camera.width
    h, w, D = fmap.features.shape
    fold = None
    if (h, w) == (H, W) or fmap.resize != "bilinear" or h > H or w > W:
        feats, valid = resize_feature_map(fmap, H, W)
    else:
        feats = fmap.features
        valid = None if fmap.valid is None else _resize_valid(fmap.valid, H, W)
        fold = FoldTaps(h, w, *_bilinear_taps(H, h), *_bilinear_taps(W, w))
    valid_np = None if valid is None else valid.reshape(-1).contiguous().numpy()
    store = render_store(splats, camera, valid=valid_np, fold=fold, workspace=workspace, backend=backend, native=native)
    return store, feats.reshape(-1, D).float().contiguous().numpy()


def accumulate_store(acc: Accumulator, store: TileStore, feats: np.ndarray, *, native: bool | None = None) -> None:
    """The second half of `lift_view`: numer += sum w F and denom += sum w over the store's entries.

    feats: [store.grid_h * store.grid_w, D] float32.
    native: the C kernel (`utils.native`, 1.2-1.7x faster) if available when None; False = numba; True = C or an error.
    """
    assert feats.shape == (store.grid_h * store.grid_w, acc.numer.shape[1]), (feats.shape, acc.numer.shape)
    assert feats.dtype == np.float32 and feats.flags.c_contiguous, (feats.dtype, feats.flags)
    tiles_y, tiles_x = (store.height + TILE - 1) // TILE, (store.width + TILE - 1) // TILE
    D = feats.shape[1]
    numer, denom = acc.numer.numpy(), acc.denom.numpy()
    seg_order = _strip_order(tiles_y, tiles_x)
    lib = select_native(native)
    if lib is None:
        nchunks = max(1, min(numba.get_num_threads(), D // 8))
        _grouped_kernel(
            numer, denom, seg_order, store.tile_start, store.tile_len, store.pixel, store.gaussian, store.weight,
            feats, nchunks,
        )  # fmt: skip
        return
    # Column blocks per thread, whole 16-float vectors each (the last takes the remainder).
    nchunks = max(1, min(numba.get_num_threads(), D // 16))
    bounds = [c * (D // 16) // nchunks * 16 for c in range(nchunks)] + [D]
    tail = (ptr(seg_order), seg_order.shape[0], ptr(store.tile_start), ptr(store.tile_len), ptr(store.pixel),
            ptr(store.gaussian), ptr(store.weight), ptr(feats))  # fmt: skip
    args = [(ptr(numer), ptr(denom), D, bounds[c], bounds[c + 1], *tail, c, nchunks) for c in range(nchunks)]
    run_parallel(lib.gw_product, args)


def _strip_order(tiles_y: int, tiles_x: int) -> np.ndarray:
    """Tiles in strips of two tile rows, column by column: a Gaussian's neighbouring tiles (right and below) come
    within a few tiles of each other, so its accumulator row is often still in cache when it is updated again."""
    ty, tx = np.meshgrid(np.arange(tiles_y), np.arange(tiles_x), indexing="ij")
    key = (ty // 2) * (2 * tiles_x) + tx * 2 + ty % 2
    return np.argsort(key.reshape(-1), kind="stable").astype(np.int64)


def accumulate_view_reference(acc: Accumulator, contrib: Contributions, feats: Tensor, valid: Tensor | None = None) -> None:
    """Pure-torch lifting of one view from its `Contributions` and a render-size map (index_add in float64): the
    readable reference `lift_view` is tested against."""
    H, W = contrib.height, contrib.width
    flat = feats.reshape(H * W, -1).double()
    w = contrib.weight.double()
    if valid is not None:
        w = w * valid.reshape(-1)[contrib.pixel].double()
    numer = torch.zeros(acc.numer.shape, dtype=torch.float64)
    numer.index_add_(0, contrib.gaussian.long(), w[:, None] * flat[contrib.pixel.long()])
    acc.numer += numer.float()
    acc.denom.index_add_(0, contrib.gaussian.long(), w)
