"""CPU tile rasterizer (numba) with gsplat 1.5.3's compositing numerics.

Pipeline for one view (input: a `Projection`):
1. `bin_tiles`: sort the visible Gaussians front to back by camera z (stable: ties keep index order) and bucket
   them into 16x16 tiles with a counting sort, so every tile's list is already depth sorted (equivalent to gsplat's
   radix sort of (tile << 32 | depth bits) keys, without sorting the intersections themselves).
2. `_tile_kernel`: parallel over tiles; for every pixel, front to back:
   sigma = 0.5 (a dx^2 + c dy^2) + b dx dy, alpha = min(0.999, o exp(-sigma)); skip if sigma < 0 or alpha < 1/255;
   T_next = T (1 - alpha); stop (without adding) if T_next <= 1e-4; else accumulate w = alpha T and T = T_next.
   All float32 like gsplat's CUDA kernel.
3. Contributions (the sparse weights w per pixel) come from a second pass: pass 1 counts per pixel, a prefix sum
   gives each pixel's slot, pass 2 repeats the same decisions and writes (pixel, gaussian, weight).
   For lifting, `rasterize_store` keeps them in one pass instead, per tile and grouped by Gaussian (the kernel's own
   visiting order), optionally folded onto a low-resolution map's bilinear taps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numba
import numpy as np
import torch
from torch import Tensor

from .native import ptr, run_parallel
from .native import select as select_native
from .projection import ALPHA_THRESHOLD, Projection
from .render import Contributions

TILE = 16
_F = np.float32
_T_MIN = 1e-4  # transmittance at which a pixel is done
_MAX_ALPHA = 0.999
# Gaussians with sigma > ln(255 o) + margin have alpha < 1/255 whatever the float rounding: skip them without exp.
_SIGMA_MARGIN = 1e-3
# Entries per tile-list entry to reserve at first (a 1M-Gaussian view has ~15; ~4 once folded to LSeg's 1/3.5 grid).
_STORE_GUESS = (16, 4)
# A 16x16 tile covers at most 17 rows/columns of a map no larger than the render (bilinear taps reach one more).
_FOLD_BOX = TILE + 2


@dataclass
class TileBins:
    """Per-tile, depth-sorted Gaussian lists in CSR form.

    order: [M] int32 indices of the binned Gaussians sorted front to back (stable); "rank" = position in `order`.
    offsets: [tiles_y * tiles_x + 1] int64; ranks: [n_isects] int32, increasing within a tile;
    tile (ty, tx) holds ranks[offsets[ty * tiles_x + tx] : offsets[ty * tiles_x + tx + 1]].
    gauss: [M, 10] float32 per rank: (mx, my, a, b, c, opacity, z, sigma_skip, ry, rx), where alpha < 1/255 for
    sure once sigma > sigma_skip = ln(255 o) + margin.
    Ranks rather than Gaussian ids so the tile kernel reads depth-sorted per-Gaussian data in increasing address order.
    """

    offsets: np.ndarray
    ranks: np.ndarray
    order: np.ndarray
    gauss: np.ndarray
    tiles_x: int
    tiles_y: int

    @property
    def num_isects(self) -> int:
        return int(self.ranks.shape[0])

    @property
    def ids(self) -> np.ndarray:
        """[n_isects] Gaussian indices (same layout as `ranks`)."""
        return self.order[self.ranks]


@numba.njit(cache=True)
def _tile_rect(mx, my, rx, ry, tiles_x, tiles_y):  # pragma: no cover - numba
    # Same float32 expressions as gsplat's isect kernel; negative values saturate to 0 like a CUDA float->uint cast.
    ts = _F(TILE)
    tx, ty = mx / ts, my / ts
    trx, try_ = rx / ts, ry / ts
    x0 = min(max(0, int(math.floor(tx - trx))), tiles_x)
    y0 = min(max(0, int(math.floor(ty - try_))), tiles_y)
    x1 = min(max(0, int(math.ceil(tx + trx))), tiles_x)
    y1 = min(max(0, int(math.ceil(ty + try_))), tiles_y)
    return x0, y0, x1, y1


@numba.njit(parallel=True, cache=True)
def _pack_kernel(order, means2d, conics, opacities, depths, radii):  # pragma: no cover - numba
    out = np.empty((order.shape[0], 10), np.float32)
    for r in numba.prange(order.shape[0]):
        g = order[r]
        out[r, 0] = means2d[g, 0]
        out[r, 1] = means2d[g, 1]
        out[r, 2] = conics[g, 0]
        out[r, 3] = conics[g, 1]
        out[r, 4] = conics[g, 2]
        out[r, 5] = opacities[g]
        out[r, 6] = depths[g]
        # alpha = o exp(-sigma) < 1/255 exactly when sigma > ln(255 o); the margin absorbs float32 rounding.
        out[r, 7] = np.float32(math.log(255.0 * np.float64(opacities[g])) + _SIGMA_MARGIN)
        out[r, 8] = np.float32(radii[g, 1])
        out[r, 9] = np.float32(radii[g, 0])
    return out


@numba.njit(parallel=True, cache=True)
def _bin_kernel(gauss, tiles_x, tiles_y, n_chunks):  # pragma: no cover - numba
    # A counting sort of (tile, rank) in parallel: chunk c of the ranks counts and then fills its own slots, placed
    # after the lower chunks' within every tile, so each tile's bucket stays in rank (depth) order.
    n_tiles = tiles_x * tiles_y
    M = gauss.shape[0]
    counts = np.zeros((n_chunks, n_tiles), np.int64)
    for c in numba.prange(n_chunks):
        for r in range(c * M // n_chunks, (c + 1) * M // n_chunks):
            x0, y0, x1, y1 = _tile_rect(gauss[r, 0], gauss[r, 1], gauss[r, 9], gauss[r, 8], tiles_x, tiles_y)
            for ty in range(y0, y1):
                for tx in range(x0, x1):
                    counts[c, ty * tiles_x + tx] += 1
    offsets = np.zeros(n_tiles + 1, np.int64)
    cursor = np.empty((n_chunks, n_tiles), np.int64)
    total = 0
    for t in range(n_tiles):
        offsets[t] = total
        for c in range(n_chunks):
            cursor[c, t] = total
            total += counts[c, t]
    offsets[n_tiles] = total
    ranks = np.empty(total, np.int32)
    for c in numba.prange(n_chunks):
        for r in range(c * M // n_chunks, (c + 1) * M // n_chunks):
            x0, y0, x1, y1 = _tile_rect(gauss[r, 0], gauss[r, 1], gauss[r, 9], gauss[r, 8], tiles_x, tiles_y)
            for ty in range(y0, y1):
                for tx in range(x0, x1):
                    t = ty * tiles_x + tx
                    ranks[cursor[c, t]] = r
                    cursor[c, t] += 1
    return offsets, ranks


@numba.njit(cache=True)
def _radix_argsort(keys, idx):  # pragma: no cover - numba
    """idx sorted by keys (uint32), stable: a least-significant-digit radix sort, 3 passes of 11 bits."""
    n = keys.shape[0]
    src_i, dst_i = idx.copy(), np.empty(n, idx.dtype)
    src_k, dst_k = keys.copy(), np.empty(n, keys.dtype)
    for shift in (0, 11, 22):
        counts = np.zeros(2049, np.int64)
        for m in range(n):
            counts[((src_k[m] >> shift) & 2047) + 1] += 1
        for b in range(2048):
            counts[b + 1] += counts[b]
        for m in range(n):
            b = (src_k[m] >> shift) & 2047
            pos = counts[b]
            dst_k[pos] = src_k[m]
            dst_i[pos] = src_i[m]
            counts[b] = pos + 1
        src_i, dst_i = dst_i, src_i
        src_k, dst_k = dst_k, src_k
    return src_i


def bin_tiles(proj: Projection) -> TileBins:
    """Depth-sorted per-tile Gaussian lists for the valid Gaussians of `proj` (radii > 0 in both axes)."""
    tiles_x = (proj.width + TILE - 1) // TILE
    tiles_y = (proj.height + TILE - 1) // TILE
    valid = proj.valid.numpy()
    radii = proj.radii.numpy()
    keep = np.flatnonzero(valid & (radii[:, 0] > 0) & (radii[:, 1] > 0)).astype(np.int32)
    depths = proj.depths.numpy()
    # Stable sort on z's bit pattern (z >= near > 0, so it orders like the float, as gsplat's radix sort of depth
    # bits); ties keep index order.
    assert depths.dtype == np.float32, depths.dtype
    order = _radix_argsort(np.ascontiguousarray(depths[keep]).view(np.uint32), keep)
    gauss = _pack_kernel(order, proj.means2d.numpy(), proj.conics.numpy(), proj.opacities.numpy(), depths, radii)
    offsets, ranks = _bin_kernel(gauss, tiles_x, tiles_y, numba.get_num_threads())
    return TileBins(offsets, ranks, order, gauss, tiles_x, tiles_y)


# The per-Gaussian helpers of `_tile_kernel` are inlined in numba's IR: a call would incref/decref every array
# argument, once per Gaussian and tile (millions of times per view).
@numba.njit(cache=True, inline="always")
def _accumulate_rows(acc, colors, g, buf_li, buf_w, nb):  # pragma: no cover - numba
    # acc[li] += w * colors[g] for the pixels one Gaussian reached: a plain loop over D that LLVM vectorises
    # (inside the branchy pixel loop it would not be), which is what makes wide features cheap.
    c = colors[g]
    D = c.shape[0]
    for m in range(nb):
        a = acc[buf_li[m]]
        w = buf_w[m]
        for d in range(D):
            a[d] += c[d] * w


@numba.njit(cache=True, inline="always")
def _store_run(
    g, buf_li, buf_w, nb, i0, j0, width, valid_px, fold, ty0, ty1, tly, tx0, tx1, tlx, w_lo,
    fbuf, s_pix, s_g, s_w, pos, end,
):  # pragma: no cover - numba
    """Append one Gaussian's entries in a tile (pixels within the tile `buf_li`, weights `buf_w`) to the store at
    `pos` (writes only below `end`, counts anyway). Pixels with valid_px False are dropped. fold: merge the
    entries' bilinear taps (the torch upsampling tables ty*/tx*) per low-res pixel of a w_lo-wide map first, in
    `fbuf` (the tile's low-res cells, all zero between calls), and emit them row by row. Returns the new position."""
    has_valid = valid_px.shape[0] > 0
    if not fold:
        for m in range(nb):
            li = buf_li[m]
            pix = (i0 + li // TILE) * width + j0 + li % TILE
            if has_valid and not valid_px[pix]:
                continue
            if pos < end:
                s_pix[pos] = pix
                s_g[pos] = g
                s_w[pos] = buf_w[m]
            pos += 1
        return pos
    one = _F(1.0)
    qy0, qx0 = ty0[i0], tx0[j0]
    stride = _FOLD_BOX
    r_lo, r_hi, c_lo, c_hi = stride, -1, stride, -1  # the low-res cells touched (tile-local box)
    for m in range(nb):
        li = buf_li[m]
        i, j = i0 + li // TILE, j0 + li % TILE
        if has_valid and not valid_px[i * width + j]:
            continue
        ly, lx = tly[i], tlx[j]
        r0, r1 = ty0[i] - qy0, ty1[i] - qy0
        c0, c1 = tx0[j] - qx0, tx1[j] - qx0
        r_lo, r_hi = min(r_lo, r0), max(r_hi, r1)
        c_lo, c_hi = min(c_lo, c0), max(c_hi, c1)
        top, bottom = buf_w[m] * (one - ly), buf_w[m] * ly
        fbuf[r0 * stride + c0] += top * (one - lx)
        fbuf[r0 * stride + c1] += top * lx
        fbuf[r1 * stride + c0] += bottom * (one - lx)
        fbuf[r1 * stride + c1] += bottom * lx
    for r in range(r_lo, r_hi + 1):
        for c in range(c_lo, c_hi + 1):
            v = fbuf[r * stride + c]
            if v != 0:
                fbuf[r * stride + c] = 0
                if pos < end:
                    s_pix[pos] = (qy0 + r) * w_lo + qx0 + c
                    s_g[pos] = g
                    s_w[pos] = v
                pos += 1
    return pos


@numba.njit(parallel=True, cache=True)
def _tile_kernel(
    offsets, ranks, order, tile_order, n_jobs, tiles_x, width, height, gauss, colors, background,
    do_color, do_count, do_fill, do_store,
    out_color, out_T, out_depth, counts, pix_offsets, c_pixel, c_gauss, c_weight,
    valid_px, fold, ty0, ty1, tly, tx0, tx1, tlx, w_lo, s_pix, s_g, s_w, tile_start, tile_len, job_used,
):  # pragma: no cover - numba
    """One pass over all tiles: job j (of n_jobs, in parallel) runs tiles tile_order[j::n_jobs].
    gauss: `TileBins.gauss` (per-rank packed Gaussians).
    do_color: composite colours/depth/T; do_count: per-pixel contribution counts; do_fill: write contributions
    at pix_offsets (the prefix sum of a counting pass); do_store: append each tile's contributions, grouped by
    Gaussian, to job j's slice of the store (s_pix, s_g, s_w) (see `_store_run` for valid_px and fold), record
    tile_start/tile_len, and the entries each job needed in job_used (a job whose slice was too small writes
    nothing past it, and the caller retries with a bigger store).

    Loops run Gaussian-major inside a tile (each pixel still sees its Gaussians front to back, so the result is the
    per-pixel loop's), and a Gaussian only visits the pixels where sigma <= ln(255 o) + margin (an ellipse, row by
    row): everywhere else alpha < 1/255 by a wide margin, so skipping them changes nothing but saves most of the work."""
    thr = _F(ALPHA_THRESHOLD)
    one = _F(1.0)
    half = _F(0.5)
    amax = _F(_MAX_ALPHA)
    tmin = _F(_T_MIN)
    D = colors.shape[1]
    n_tiles = tile_order.shape[0]
    job_cap = s_w.shape[0] // n_jobs
    for job in numba.prange(n_jobs):
        pos = job * job_cap
        end = pos + job_cap
        fbuf = np.zeros(_FOLD_BOX * _FOLD_BOX if fold else 0, np.float32)
        for q in range(job, n_tiles, n_jobs):
            t = tile_order[q]
            ty, tx = t // tiles_x, t % tiles_x
            i0, j0 = ty * TILE, tx * TILE
            i1, j1 = min(i0 + TILE, height), min(j0 + TILE, width)
            npx = (i1 - i0) * (j1 - j0)
            T = np.ones(TILE * TILE, np.float32)
            done = np.zeros(TILE * TILE, np.bool_)
            cnt = np.zeros(TILE * TILE, np.int32)
            dep = np.zeros(TILE * TILE, np.float32)
            acc = np.zeros((TILE * TILE, D), np.float32)
            cur = np.zeros(TILE * TILE, np.int64)
            buf_li = np.empty(TILE * TILE, np.int64)
            buf_w = np.empty(TILE * TILE, np.float32)
            if do_fill:
                for i in range(i0, i1):
                    for j in range(j0, j1):
                        cur[(i - i0) * TILE + (j - j0)] = pix_offsets[i * width + j]
            if do_store:
                tile_start[t] = pos
            ndone = 0
            for k in range(offsets[t], offsets[t + 1]):
                if ndone == npx:
                    break  # every pixel of the tile is saturated
                r = ranks[k]
                g = order[r]
                mx, my = gauss[r, 0], gauss[r, 1]
                ca, cb, cc = gauss[r, 2], gauss[r, 3], gauss[r, 4]
                op, z, skip = gauss[r, 5], gauss[r, 6], gauss[r, 7]
                # Rows whose pixel centres are within ry + 1/2 of my (the opacity-aware box, grown for rounding).
                ry = np.float64(gauss[r, 8]) + 0.5
                ia = max(i0, int(math.ceil(np.float64(my) - ry - 0.5)))
                ib = min(i1, int(math.floor(np.float64(my) + ry - 0.5)) + 1)
                a64, b64, c64, s64 = np.float64(ca), np.float64(cb), np.float64(cc), np.float64(skip)
                inv_a = 1.0 / a64
                mx64 = np.float64(mx)
                nb = 0
                for i in range(ia, ib):
                    dy = my - (_F(i) + half)
                    # On this row sigma(dx) = a dx^2 / 2 + b dy dx + c dy^2 / 2 <= skip only between the two roots:
                    # outside them the pixel would be skipped anyway (sigma > ln(255 o) + margin), so only the pixels
                    # between them (plus 0.01 px for rounding) are visited. Float64 for the bounds only.
                    dy64 = np.float64(dy)
                    disc = b64 * b64 * dy64 * dy64 - a64 * (c64 * dy64 * dy64 - 2.0 * s64)
                    if disc < 0.0:
                        continue
                    # dx = mx - px in [(-b dy - sq) / a, (-b dy + sq) / a]  <=>  px in [centre - half_w, centre + half_w]
                    centre = mx64 + b64 * dy64 * inv_a
                    half_w = math.sqrt(disc) * inv_a
                    ja = max(j0, int(math.ceil(centre - half_w - 0.5 - 0.01)))
                    jb = min(j1, int(math.floor(centre + half_w - 0.5 + 0.01)) + 1)
                    for j in range(ja, jb):
                        li = (i - i0) * TILE + (j - j0)
                        if done[li]:
                            continue
                        dx = mx - (_F(j) + half)
                        sigma = half * (ca * dx * dx + cc * dy * dy) + cb * dx * dy
                        if sigma < 0 or sigma > skip:
                            continue
                        alpha = min(amax, op * math.exp(-sigma))
                        if alpha < thr:
                            continue
                        Tl = T[li]
                        T_next = Tl * (one - alpha)
                        if T_next <= tmin:
                            done[li] = True  # the pixel is done; this Gaussian is not added
                            ndone += 1
                            continue
                        w = alpha * Tl
                        if do_color or do_store:
                            buf_li[nb] = li
                            buf_w[nb] = w
                            nb += 1
                        if do_color:
                            dep[li] += z * w
                        if do_fill:
                            pos_p = cur[li]
                            c_pixel[pos_p] = i * width + j
                            c_gauss[pos_p] = g
                            c_weight[pos_p] = w
                            cur[li] = pos_p + 1
                        cnt[li] += 1
                        T[li] = T_next
                if nb > 0:
                    if do_color:
                        _accumulate_rows(acc, colors, g, buf_li, buf_w, nb)
                    if do_store:
                        pos = _store_run(
                            g, buf_li, buf_w, nb, i0, j0, width, valid_px, fold, ty0, ty1, tly, tx0, tx1, tlx, w_lo,
                            fbuf, s_pix, s_g, s_w, pos, end,
                        )  # fmt: skip
            if do_store:
                tile_len[t] = pos - tile_start[t]
            for i in range(i0, i1):
                for j in range(j0, j1):
                    li = (i - i0) * TILE + (j - j0)
                    pix = i * width + j
                    if do_count:
                        counts[pix] = cnt[li]
                    if do_color:
                        out_T[pix] = T[li]
                        out_depth[pix] = dep[li]
                        for d in range(D):
                            out_color[pix, d] = acc[li, d] + T[li] * background[d]
        if do_store:
            job_used[job] = pos - job * job_cap


@dataclass
class RasterResult:
    """colors: [H, W, D] sum w c + T background (None if no colours were given).
    transmittance: [H, W] final T (alpha = 1 - T). depth: [H, W] sum w z (un-normalised).
    contributions: per-pixel weights when asked for."""

    colors: Tensor | None
    transmittance: Tensor
    depth: Tensor
    contributions: Contributions | None


def _tile_order(n_tiles: int) -> np.ndarray:
    # A fixed pseudo-random tile order spreads the expensive (central) tiles evenly over numba's static chunks.
    return np.random.default_rng(0).permutation(n_tiles).astype(np.int64)


_EF = np.empty(0, np.float32)
_EI = np.empty(0, np.int32)
_EL = np.empty(0, np.int64)
_E2 = np.empty((0, 0), np.float32)
_EB = np.empty(0, np.bool_)
# The store arguments of `_tile_kernel` when not storing.
_NO_STORE = (_EB, False, _EL, _EL, _EF, _EL, _EL, _EF, 0, _EI, _EI, _EF, _EL, _EL, _EL)


def _contributions(bins: TileBins, proj: Projection, order: np.ndarray, counts: np.ndarray) -> Contributions:
    hw = proj.width * proj.height
    pix_offsets = np.zeros(hw + 1, np.int64)
    np.cumsum(counts, out=pix_offsets[1:])
    M = int(pix_offsets[-1])
    c_pixel = np.empty(M, np.int32)
    c_gauss = np.empty(M, np.int32)
    c_weight = np.empty(M, np.float32)
    _tile_kernel(
        bins.offsets, bins.ranks, bins.order, order, order.shape[0], bins.tiles_x, proj.width, proj.height, bins.gauss,
        _E2, _EF, False, False, True, False,
        _E2, _EF, _EF, _EI, pix_offsets, c_pixel, c_gauss, c_weight, *_NO_STORE,
    )  # fmt: skip
    t = torch.from_numpy
    return Contributions(t(c_pixel), t(c_gauss), t(c_weight), proj.height, proj.width, offsets=t(pix_offsets))


def rasterize(
    proj: Projection,
    colors: Tensor | None,
    background: Tensor | None = None,
    *,
    return_contributions: bool = False,
    bins: TileBins | None = None,
) -> RasterResult:
    """Composite `colors` ([N, D] float, any D >= 1, or None for depth/alpha only) over the projected Gaussians.

    background: [D] or None (= 0). Returns CPU float32 tensors.
    """
    H, W = proj.height, proj.width
    N = proj.means2d.shape[0]
    if colors is None:
        cols = np.zeros((N, 0), np.float32)
    else:
        assert colors.ndim == 2 and colors.shape[0] == N, (colors.shape, N)
        cols = colors.detach().to("cpu", torch.float32).contiguous().numpy()
    D = cols.shape[1]
    if background is None:
        bg = np.zeros(D, np.float32)
    else:
        assert tuple(background.shape) == (D,), (background.shape, D)
        bg = background.detach().to("cpu", torch.float32).contiguous().numpy()
    if bins is None:
        bins = bin_tiles(proj)
    order = _tile_order(bins.tiles_x * bins.tiles_y)
    out_color = np.empty((H * W, D), np.float32)
    out_T = np.empty(H * W, np.float32)
    out_depth = np.empty(H * W, np.float32)
    counts = np.empty(H * W if return_contributions else 0, np.int32)
    _tile_kernel(
        bins.offsets, bins.ranks, bins.order, order, order.shape[0], bins.tiles_x, W, H, bins.gauss, cols, bg,
        True, return_contributions, False, False,
        out_color, out_T, out_depth, counts, _EL, _EI, _EI, _EF, *_NO_STORE,
    )  # fmt: skip
    contrib = _contributions(bins, proj, order, counts) if return_contributions else None
    t = torch.from_numpy
    return RasterResult(
        colors=None if colors is None else t(out_color).reshape(H, W, D),
        transmittance=t(out_T).reshape(H, W),
        depth=t(out_depth).reshape(H, W),
        contributions=contrib,
    )


def rasterize_contributions(proj: Projection, *, bins: TileBins | None = None) -> Contributions:
    """Only the per-pixel weights w = alpha T (no compositing): a counting pass and a filling pass."""
    H, W = proj.height, proj.width
    if bins is None:
        bins = bin_tiles(proj)
    order = _tile_order(bins.tiles_x * bins.tiles_y)
    counts = np.empty(H * W, np.int32)
    _tile_kernel(
        bins.offsets, bins.ranks, bins.order, order, order.shape[0], bins.tiles_x, W, H, bins.gauss, _E2, _EF,
        False, True, False, False,
        _E2, _EF, _EF, counts, _EL, _EI, _EI, _EF, *_NO_STORE,
    )  # fmt: skip
    return _contributions(bins, proj, order, counts)


@dataclass
class TileStore:
    """One view's contributions kept per 16x16 render tile (the output of `rasterize_store`), for lifting.

    Tile t = ty * tiles_x + tx owns entries [tile_start[t], tile_start[t] + tile_len[t]) of pixel / gaussian / weight
    (the buffers may hold unused gaps between tiles), grouped by Gaussian (front to back) within the tile.
    pixel: int32 flat index into a grid_h x grid_w map: the render itself (w = alpha T exactly as `Contributions`), or
    a smaller map whose bilinear upsampling to the render gives the features (w folded onto its pixels).
    height, width: the render size.
    """

    pixel: np.ndarray
    gaussian: np.ndarray
    weight: np.ndarray
    tile_start: np.ndarray
    tile_len: np.ndarray
    height: int
    width: int
    grid_h: int
    grid_w: int

    @property
    def num(self) -> int:
        return int(self.tile_len.sum())


@dataclass
class FoldTaps:
    """Bilinear upsampling of an h x w map to the render, per render row (y0, y1, ly) and column (x0, x1, lx):
    value(i, j) = sum of the map at rows y0/y1 (weights 1 - ly, ly) and columns x0/x1 (1 - lx, lx)."""

    h: int
    w: int
    y0: np.ndarray
    y1: np.ndarray
    ly: np.ndarray
    x0: np.ndarray
    x1: np.ndarray
    lx: np.ndarray


class StoreWorkspace:
    """Entry buffers reused by `rasterize_store` across views: a 1M-Gaussian view keeps ~60M entries, and
    allocating (and first touching) them for every view costs more than filling them."""

    def __init__(self) -> None:
        self.pixel = np.empty(0, np.int32)
        self.gaussian = np.empty(0, np.int32)
        self.weight = np.empty(0, np.float32)

    def reserve(self, n: int) -> None:
        if n > self.weight.shape[0]:
            self.pixel = np.empty(0, np.int32)  # free the old buffers first
            self.gaussian = np.empty(0, np.int32)
            self.weight = np.empty(0, np.float32)
            self.pixel = np.empty(n, np.int32)
            self.gaussian = np.empty(n, np.int32)
            self.weight = np.empty(n, np.float32)


def rasterize_store(
    proj: Projection,
    *,
    bins: TileBins | None = None,
    valid: np.ndarray | None = None,
    fold: FoldTaps | None = None,
    workspace: StoreWorkspace | None = None,
    native: bool | None = None,
) -> TileStore:
    """The weights w = alpha T of every (pixel, Gaussian) pair in one pass, kept per tile and grouped by Gaussian.

    valid: optional [H * W] bool; pixels where it is False are left out. fold: merge each tile's weights onto the
    bilinear taps of a smaller map (h <= H, w <= W), so that sum_p w F_up(p) = sum_q w'(q) F(q).
    The returned arrays live in `workspace` (reused by its next call) when one is given.
    native: use the C kernel (`utils.native`: same entries, weights equal to float32 rounding; ~2.7x faster).
    None = when available, False = the numba kernel, True = an error if unavailable. A map less than ~7% smaller
    than the render is folded by the numba kernel either way.
    """
    H, W = proj.height, proj.width
    if bins is None:
        bins = bin_tiles(proj)
    n_tiles = bins.tiles_x * bins.tiles_y
    order = _tile_order(n_tiles)
    n_jobs = max(1, min(n_tiles, numba.get_num_threads()))
    if valid is None:
        valid = _EB
    else:
        assert valid.shape == (H * W,) and valid.dtype == np.bool_, (valid.shape, valid.dtype)
    if fold is None:
        taps = (False, _EL, _EL, _EF, _EL, _EL, _EF, 0)
    else:
        assert fold.h <= H and fold.w <= W and fold.y0.shape == (H,) and fold.x0.shape == (W,)
        taps = (True, fold.y0, fold.y1, fold.ly, fold.x0, fold.x1, fold.lx, fold.w)
    ws = workspace or StoreWorkspace()
    # An empty workspace starts from a guess from the tile lists; a job that overflows its slice reports what it
    # needed and the view is redone once with room for it. (Growing reallocates, and first touching ~0.7 GB of new
    # pages costs about as much as the pass itself, so a workspace never grows on a guess.)
    if ws.weight.shape[0] == 0:
        per_isect = _STORE_GUESS[1 if fold else 0]
        ws.reserve(n_jobs * (per_isect * bins.num_isects // n_jobs + 1024 * (per_isect > 0)))
    tile_start = np.zeros(n_tiles, np.int64)
    tile_len = np.zeros(n_tiles, np.int64)
    job_used = np.zeros(n_jobs, np.int64)
    lib = _native_store_library(native, fold, W)
    for _ in range(2):
        if lib is not None:
            job_used[:] = _native_store(lib, bins, order, n_jobs, W, H, valid, fold, ws, tile_start, tile_len)
        else:
            _tile_kernel(
                bins.offsets, bins.ranks, bins.order, order, n_jobs, bins.tiles_x, W, H, bins.gauss, _E2, _EF,
                False, False, False, True,
                _E2, _EF, _EF, _EI, _EL, _EI, _EI, _EF,
                valid, *taps, ws.pixel, ws.gaussian, ws.weight, tile_start, tile_len, job_used,
            )  # fmt: skip
        need = int(job_used.max())
        if need <= ws.weight.shape[0] // n_jobs:
            break
        ws.reserve(n_jobs * (need + need // 4 + 1024))
    assert need <= ws.weight.shape[0] // n_jobs, (need, ws.weight.shape[0], n_jobs)  # the redo always fits
    grid = (H, W) if fold is None else (fold.h, fold.w)
    return TileStore(ws.pixel, ws.gaussian, ws.weight, tile_start, tile_len, H, W, *grid)


def _native_store_library(native: bool | None, fold: FoldTaps | None, width: int):
    """The native library if `rasterize_store` should use it (see its `native`), else None."""
    lib = select_native(native)
    # The C kernel folds a tile's 16 columns onto at most 16 map columns (one vector): true for any map at least
    # ~7% smaller than the render; larger ones take the numba kernel.
    return lib if fold is None or _fold_columns(fold, width) <= TILE else None


def _fold_columns(fold: FoldTaps, width: int) -> int:
    """The most map columns any 16-pixel tile column range reaches through the bilinear taps."""
    j0 = np.arange(0, width, TILE)
    j1 = np.minimum(j0 + TILE, width) - 1
    return int((fold.x1[j1] - fold.x0[j0]).max()) + 1


def _native_store(lib, bins: TileBins, order, n_jobs, W, H, valid, fold, ws, tile_start, tile_len) -> list[int]:
    """`_tile_kernel`'s store mode in the C kernel, one thread per job; returns each job's entries needed."""
    cap = ws.weight.shape[0] // n_jobs
    if fold is None:
        taps = (0, None, None, None, None, None, None, 0)
    else:
        arrays = [np.ascontiguousarray(a, dtype) for a, dtype in (
            (fold.y0, np.int64), (fold.y1, np.int64), (fold.ly, np.float32),
            (fold.x0, np.int64), (fold.x1, np.int64), (fold.lx, np.float32))]  # fmt: skip
        taps = (1, *map(ptr, arrays), fold.w)
    assert bins.gauss.dtype == np.float32 and bins.ranks.dtype == np.int32 and bins.order.dtype == np.int32
    head = (ptr(bins.offsets), ptr(bins.ranks), ptr(bins.order), ptr(bins.gauss), ptr(order), order.shape[0])
    args = [
        (*head, job, n_jobs, bins.tiles_x, W, H, ptr(valid) if valid.shape[0] else None, *taps,
         ptr(ws.pixel), ptr(ws.gaussian), ptr(ws.weight), job * cap, (job + 1) * cap, ptr(tile_start), ptr(tile_len))
        for job in range(n_jobs)
    ]  # fmt: skip
    return run_parallel(lib.gw_store_job, args)


@numba.njit(cache=True)
def _pixel_kernel(gauss, order, pix_i, pix_j, out_g, out_w, out_n, out_T):  # pragma: no cover - numba
    """The tile kernel's decisions for single pixels. gauss/order: the packed, depth-sorted (stable) Gaussians whose
    tile rectangle covers the pixel's tile (exactly the pixel's tile list); same float32 arithmetic, same row/column
    gating as `_tile_kernel` (the tile clamps there never exclude the pixel itself)."""
    thr = _F(ALPHA_THRESHOLD)
    one = _F(1.0)
    half = _F(0.5)
    amax = _F(_MAX_ALPHA)
    tmin = _F(_T_MIN)
    for p in range(pix_i.shape[0]):
        i, j = pix_i[p], pix_j[p]
        T = _F(1.0)
        n = 0
        for r in range(gauss.shape[0]):
            mx, my = gauss[r, 0], gauss[r, 1]
            ca, cb, cc = gauss[r, 2], gauss[r, 3], gauss[r, 4]
            op, skip = gauss[r, 5], gauss[r, 7]
            ry = np.float64(gauss[r, 8]) + 0.5
            ia = int(math.ceil(np.float64(my) - ry - 0.5))
            ib = int(math.floor(np.float64(my) + ry - 0.5)) + 1
            if i < ia or i >= ib:
                continue
            a64, b64, c64, s64 = np.float64(ca), np.float64(cb), np.float64(cc), np.float64(skip)
            inv_a = 1.0 / a64
            dy = my - (_F(i) + half)
            dy64 = np.float64(dy)
            disc = b64 * b64 * dy64 * dy64 - a64 * (c64 * dy64 * dy64 - 2.0 * s64)
            if disc < 0.0:
                continue
            centre = np.float64(mx) + b64 * dy64 * inv_a
            half_w = math.sqrt(disc) * inv_a
            ja = int(math.ceil(centre - half_w - 0.5 - 0.01))
            jb = int(math.floor(centre + half_w - 0.5 + 0.01)) + 1
            if j < ja or j >= jb:
                continue
            dx = mx - (_F(j) + half)
            sigma = half * (ca * dx * dx + cc * dy * dy) + cb * dx * dy
            if sigma < 0 or sigma > skip:
                continue
            alpha = min(amax, op * math.exp(-sigma))
            if alpha < thr:
                continue
            T_next = T * (one - alpha)
            if T_next <= tmin:
                break  # the pixel is done; this Gaussian is not added
            out_g[p, n] = order[r]
            out_w[p, n] = alpha * T
            n += 1
            T = T_next
        out_n[p] = n
        out_T[p] = T


def pixel_contributions(proj: Projection, pixels: Tensor) -> Contributions:
    """The weights w = alpha T of a few pixels only, exactly as `rasterize_contributions` gives them there
    (same Gaussians, same order, same float32 weights) without rasterizing the whole view.

    pixels: [P] flat pixel indices y * width + x (any order; the result is grouped by ascending pixel).
    Returns Contributions with `offsets` [H * W + 1]. Cost: O(N) to find each tile's list, cheap for a handful of pixels.
    """
    return pixel_weights(proj, pixels)[0]


def pixel_weights(proj: Projection, pixels: Tensor) -> tuple[Contributions, Tensor]:
    """`pixel_contributions` plus the final transmittance T ([U] float32, as `rasterize` gives it) of the U unique
    pixels in ascending order (alpha = 1 - T)."""
    H, W = proj.height, proj.width
    pix = np.unique(np.asarray(pixels, dtype=np.int64).reshape(-1))
    if pix.size and (pix[0] < 0 or pix[-1] >= H * W):
        raise ValueError(f"pixel_contributions: pixel indices must be in [0, {H * W}), got {pix[0]}..{pix[-1]}")
    tiles_x = (W + TILE - 1) // TILE
    tiles_y = (H + TILE - 1) // TILE
    valid = proj.valid.numpy()
    radii = proj.radii.numpy()
    keep = np.flatnonzero(valid & (radii[:, 0] > 0) & (radii[:, 1] > 0)).astype(np.int32)
    depths = proj.depths.numpy()
    means, conics, opac = proj.means2d.numpy(), proj.conics.numpy(), proj.opacities.numpy()
    # The tile rectangles of all kept Gaussians, with the same float32 expressions as `_tile_rect`.
    ts = np.float32(TILE)
    mx, my = means[keep, 0], means[keep, 1]
    rx, ry = radii[keep, 0].astype(np.float32), radii[keep, 1].astype(np.float32)
    x0 = np.clip(np.floor(mx / ts - rx / ts), 0, tiles_x)
    x1 = np.clip(np.ceil(mx / ts + rx / ts), 0, tiles_x)
    y0 = np.clip(np.floor(my / ts - ry / ts), 0, tiles_y)
    y1 = np.clip(np.ceil(my / ts + ry / ts), 0, tiles_y)
    ids, ws, pxs = [], [], []
    T_all = np.ones(pix.size, np.float32)
    tiles = pix // W // TILE * tiles_x + pix % W // TILE
    for t in np.unique(tiles):
        ty, tx = divmod(int(t), tiles_x)
        cand = keep[(x0 <= tx) & (tx < x1) & (y0 <= ty) & (ty < y1)]
        order = cand[np.argsort(depths[cand], kind="stable")]
        gauss = _pack_kernel(order, means, conics, opac, depths, radii)
        sel = pix[tiles == t]
        out_g = np.empty((sel.size, order.size), np.int32)
        out_w = np.empty((sel.size, order.size), np.float32)
        out_n = np.empty(sel.size, np.int64)
        out_T = np.empty(sel.size, np.float32)
        _pixel_kernel(gauss, order, sel // W, sel % W, out_g, out_w, out_n, out_T)
        T_all[tiles == t] = out_T
        for k in range(sel.size):
            ids.append(out_g[k, : out_n[k]])
            ws.append(out_w[k, : out_n[k]])
            pxs.append(np.full(out_n[k], sel[k], np.int32))
    counts = np.zeros(H * W, np.int64)
    # pixels come back per tile: regroup by ascending pixel
    cat_p = np.concatenate(pxs) if pxs else np.zeros(0, np.int32)
    cat_g = np.concatenate(ids) if ids else np.zeros(0, np.int32)
    cat_w = np.concatenate(ws) if ws else np.zeros(0, np.float32)
    srt = np.argsort(cat_p, kind="stable")
    cat_p, cat_g, cat_w = cat_p[srt], cat_g[srt], cat_w[srt]
    np.add.at(counts, cat_p, 1)
    offsets = np.zeros(H * W + 1, np.int64)
    np.cumsum(counts, out=offsets[1:])
    t = torch.from_numpy
    return Contributions(t(cat_p), t(cat_g.astype(np.int32)), t(cat_w), H, W, offsets=t(offsets)), t(T_all)
