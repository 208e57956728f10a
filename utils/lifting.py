"""Gradient-weighted feature back-projection: f_k = sum w_k F / sum w_k with w = alpha * T.

The weights are gsplat's exact compositing weights, taken from the rasterizer's `Contributions`, so no autograd pass
is needed: the numerator is what the gradient of sum_p <render(g)(p), F(p)> w.r.t. per-Gaussian features g would give,
the denominator the gradient of the rendered ones-channel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np
import torch
import torch.nn.functional as tF
from torch import Tensor

from .feature_sources.base import FeatureMap
from .render import Contributions


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
            torch.zeros(num_gaussians, dim, dtype=torch.float32),
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


@numba.njit(parallel=True, cache=True, fastmath=True)
def _grouped_kernel(numer, pixel, gaussian, weight, feats, nchunks):  # pragma: no cover - numba
    # Entries come in runs of one Gaussian (grouped per tile): sum a run in a local row, write numer once per run.
    # Column blocks per thread keep the writes race-free; a tile's feature rows stay in cache across its runs.
    # Four entries per pass over the row cut its loads/stores 4x (this reassociates each run's float32 sum, a
    # rounding-level change; fastmath lets LLVM vectorise the row updates).
    M = weight.shape[0]
    D = feats.shape[1]
    for c in numba.prange(nchunks):
        d0 = c * D // nchunks
        d1 = (c + 1) * D // nchunks
        n = d1 - d0
        row = np.zeros(n, np.float32)
        m = 0
        while m < M:
            g = gaussian[m]
            e = m
            while e < M and gaussian[e] == g:
                e += 1
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


def accumulate_view(acc: Accumulator, contrib: Contributions, feats: Tensor, valid: Tensor | None = None) -> None:
    """Add one view's sum_p w F and sum_p w to `acc` in place.

    contrib: the view's weights (pixel, gaussian, weight) at render size H x W.
    feats: [H, W, D] features at the render size.
    valid: optional [H, W] bool; invalid pixels contribute nothing.
    """
    H, W = contrib.height, contrib.width
    assert feats.shape[:2] == (H, W), (feats.shape, H, W)
    _accumulate(acc, contrib, feats, valid)


# The one-pass identity fold (`_fold_identity_kernel`); False = always the count + fill passes (for tests).
_FOLD_FAST = True


def _accumulate(acc: Accumulator, contrib: Contributions, feats: Tensor, valid: Tensor | None) -> None:
    """feats: [h, w, D] at the render size or smaller (then bilinearly upsampled, folded into the weights)."""
    h, w, D = feats.shape
    assert D == acc.numer.shape[1], (feats.shape, acc.numer.shape)
    pixel, gaussian, weight = _valid_only(contrib, valid)
    if weight.numel() == 0:
        return
    H, W = contrib.height, contrib.width
    g_np, w_np = gaussian.contiguous().numpy(), weight.contiguous().numpy()
    # The denominator sums the unfolded weights (bilinear taps sum to 1 per pixel, so it is the same quantity).
    _denom_add(acc.denom.numpy(), g_np, w_np)
    flat = feats.reshape(h * w, D).float().contiguous()
    # With no validity mask the rasterizer's CSR offsets are still those of the entries: fold_bilinear reuses them.
    offsets = contrib.offsets if valid is None else None
    grouped = fold_bilinear(Contributions(pixel, gaussian, weight, H, W, offsets=offsets), h, w)
    nchunks = max(1, min(numba.get_num_threads(), D // 8))
    _grouped_kernel(
        acc.numer.numpy(), grouped.pixel.numpy(), grouped.gaussian.numpy(), grouped.weight.numpy(), flat.numpy(), nchunks
    )


def _valid_only(contrib: Contributions, valid: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    if valid is None:
        return contrib.pixel, contrib.gaussian, contrib.weight
    keep = valid.reshape(-1)[contrib.pixel.long()]
    return contrib.pixel[keep], contrib.gaussian[keep], contrib.weight[keep]


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


@numba.njit(parallel=True, cache=True)
def _fold_kernel(
    offsets, gaussian, weight, W, ty0, ty1, tly, tx0, tx1, tlx, w_lo, block, n_gauss, counts, out_q, out_g, out_w, fill
):  # pragma: no cover - numba
    # For every block x block tile of render pixels, merge the bilinear taps of all its contributions per
    # (Gaussian, low-res pixel): the D-dimensional product then runs over far fewer entries. Pass 1 (fill=False)
    # counts the merged entries per tile, pass 2 writes them at the tile's offset.
    H = ty0.shape[0]
    tiles_x = (W + block - 1) // block
    tiles_y = (H + block - 1) // block
    n_tiles = tiles_x * tiles_y
    n_jobs = min(n_tiles, 16)
    for job in numba.prange(n_jobs):
        slot = np.full(n_gauss, -1, np.int32)
        cap = 0
        for t in range(job, n_tiles, n_jobs):
            y_a = (t // tiles_x) * block
            x_a = (t % tiles_x) * block
            y_b = min(y_a + block, H)
            n = 0
            for y in range(y_a, y_b):
                n += offsets[y * W + min(x_a + block, W)] - offsets[y * W + x_a]
            cap = max(cap, n)
        glist = np.empty(cap, np.int64)
        qh_max = 0
        qw_max = 0
        for t in range(job, n_tiles, n_jobs):
            y_a = (t // tiles_x) * block
            x_a = (t % tiles_x) * block
            y_b = min(y_a + block, H) - 1
            x_b = min(x_a + block, W) - 1
            qh_max = max(qh_max, ty1[y_b] - ty0[y_a] + 1)
            qw_max = max(qw_max, tx1[x_b] - tx0[x_a] + 1)
        buf = np.zeros((cap, qh_max * qw_max), np.float32)
        for t in range(job, n_tiles, n_jobs):
            y_a = (t // tiles_x) * block
            x_a = (t % tiles_x) * block
            y_b = min(y_a + block, H)
            x_b = min(x_a + block, W)
            qy0 = ty0[y_a]
            qx0 = tx0[x_a]
            qw = tx1[x_b - 1] - qx0 + 1
            qh = ty1[y_b - 1] - qy0 + 1
            ng = 0
            for y in range(y_a, y_b):
                r0 = (ty0[y] - qy0) * qw
                r1 = (ty1[y] - qy0) * qw
                ly = tly[y]
                for x in range(x_a, x_b):
                    c0 = tx0[x] - qx0
                    c1 = tx1[x] - qx0
                    lx = tlx[x]
                    p = y * W + x
                    for m in range(offsets[p], offsets[p + 1]):
                        g = gaussian[m]
                        s = slot[g]
                        if s < 0:
                            s = ng
                            slot[g] = s
                            glist[ng] = g
                            ng += 1
                        w = weight[m]
                        buf[s, r0 + c0] += w * (1 - ly) * (1 - lx)
                        buf[s, r0 + c1] += w * (1 - ly) * lx
                        buf[s, r1 + c0] += w * ly * (1 - lx)
                        buf[s, r1 + c1] += w * ly * lx
            k = counts[t] if fill else 0
            nnz = 0
            for s in range(ng):
                g = glist[s]
                for i in range(qh * qw):
                    v = buf[s, i]
                    if v != 0:
                        if fill:
                            out_q[k] = (qy0 + i // qw) * w_lo + qx0 + i % qw
                            out_g[k] = g
                            out_w[k] = v
                            k += 1
                        else:
                            nnz += 1
                        buf[s, i] = 0
                slot[g] = -1
            if not fill:
                counts[t] = nnz


@numba.njit(parallel=True, cache=True)
def _fold_identity_kernel(offsets, gaussian, weight, W, H, block, n_gauss, starts, out_q, out_g, out_w, bad):
    # pragma: no cover - numba
    # `_fold_kernel` when the map is at the render size (the taps are the identity): every entry is its own merged
    # entry, so a tile's output is its entries, regrouped by Gaussian (first-seen order) and pixel (ascending) with a
    # per-tile counting sort: one pass, no dense buffer. Tiles with a zero weight or a repeated (pixel, Gaussian)
    # (which the dense buffer would drop or merge) set bad[t]; the caller then uses `_fold_kernel`.
    tiles_x = (W + block - 1) // block
    n_tiles = tiles_x * ((H + block - 1) // block)
    n_jobs = min(n_tiles, 16)
    for job in numba.prange(n_jobs):
        slot = np.full(n_gauss, -1, np.int32)
        glist = np.empty(0, np.int64)
        cnt = np.empty(0, np.int64)
        last = np.empty(0, np.int64)
        for t in range(job, n_tiles, n_jobs):
            y_a = (t // tiles_x) * block
            x_a = (t % tiles_x) * block
            y_b, x_b = min(y_a + block, H), min(x_a + block, W)
            n = 0
            for y in range(y_a, y_b):
                n += offsets[y * W + x_b] - offsets[y * W + x_a]
            if glist.shape[0] < n:
                glist = np.empty(n, np.int64)
                cnt = np.empty(n, np.int64)
                last = np.empty(n, np.int64)
            ng = 0
            for y in range(y_a, y_b):
                for x in range(x_a, x_b):
                    p = y * W + x
                    for m in range(offsets[p], offsets[p + 1]):
                        g = gaussian[m]
                        sl = slot[g]
                        if sl < 0:
                            sl = ng
                            slot[g] = sl
                            glist[ng] = g
                            cnt[ng] = 0
                            last[ng] = -1
                            ng += 1
                        if weight[m] == 0 or last[sl] == p:
                            bad[t] = True
                        last[sl] = p
                        cnt[sl] += 1
            k = starts[t]
            for sl in range(ng):  # cnt -> each slot's write position
                c = cnt[sl]
                cnt[sl] = k
                k += c
            for y in range(y_a, y_b):
                for x in range(x_a, x_b):
                    p = y * W + x
                    for m in range(offsets[p], offsets[p + 1]):
                        sl = slot[gaussian[m]]
                        k = cnt[sl]
                        out_q[k] = p
                        out_g[k] = gaussian[m]
                        out_w[k] = weight[m]
                        cnt[sl] = k + 1
            for sl in range(ng):
                slot[glist[sl]] = -1


def fold_bilinear(contrib: Contributions, h: int, w: int) -> Contributions:
    """Contributions to an h x w map whose bilinear upsampling (torch, align_corners=False) to the render size
    gives the features: sum_p w F_up(p) = sum_q w'(q) F(q). Entries are merged per (Gaussian, low-res pixel) and
    come grouped per 16 x 16 render tile and, within a tile, per Gaussian. With h, w = H, W the taps are the
    identity: the same entries, regrouped. pixel (low-res index) and gaussian are int32 like the rasterizer's.
    """
    H, W = contrib.height, contrib.width
    pixel, gaussian, weight = contrib.pixel, contrib.gaussian, contrib.weight
    if contrib.offsets is not None and int(contrib.offsets[-1]) == contrib.num:
        offsets = contrib.offsets.numpy()
    else:
        offsets = np.zeros(H * W + 1, np.int64)
        np.cumsum(np.bincount(pixel.numpy(), minlength=H * W), out=offsets[1:])
    block = 16
    n_tiles = ((H + block - 1) // block) * ((W + block - 1) // block)
    g_np, w_np = gaussian.contiguous().numpy(), weight.contiguous().numpy()
    n_gauss = int(g_np.max()) + 1 if g_np.size else 0
    if _FOLD_FAST and (h, w) == (H, W) and g_np.size:
        # Identity taps: one pass that regroups the entries (same output as the dense-buffer kernel below).
        tiles_x = (W + block - 1) // block
        ty, tx = np.arange(H) // block, np.arange(W) // block
        per_tile = np.bincount((ty[:, None] * tiles_x + tx[None, :]).reshape(-1), weights=np.diff(offsets),
                               minlength=n_tiles).astype(np.int64)
        starts = np.zeros(n_tiles, np.int64)
        np.cumsum(per_tile[:-1], out=starts[1:])
        total = int(offsets[-1])
        out_q, out_g, out_w = np.empty(total, np.int32), np.empty(total, np.int32), np.empty(total, np.float32)
        bad = np.zeros(n_tiles, np.bool_)
        _fold_identity_kernel(offsets, g_np, w_np, W, H, block, n_gauss, starts, out_q, out_g, out_w, bad)
        if not bad.any():
            return Contributions(torch.from_numpy(out_q), torch.from_numpy(out_g), torch.from_numpy(out_w), h, w)
        del out_q, out_g, out_w
    ty0, ty1, tly = _bilinear_taps(H, h)
    tx0, tx1, tlx = _bilinear_taps(W, w)
    counts = np.zeros(n_tiles, np.int64)
    empty_i, empty_f = np.zeros(0, np.int32), np.zeros(0, np.float32)
    args = (offsets, g_np, w_np, W, ty0, ty1, tly, tx0, tx1, tlx, w, block, n_gauss)
    _fold_kernel(*args, counts, empty_i, empty_i, empty_f, False)
    starts = np.zeros(n_tiles, np.int64)
    np.cumsum(counts[:-1], out=starts[1:])
    total = int(counts.sum())
    out_q, out_g, out_w = np.empty(total, np.int32), np.empty(total, np.int32), np.empty(total, np.float32)
    _fold_kernel(*args, starts, out_q, out_g, out_w, True)
    return Contributions(torch.from_numpy(out_q), torch.from_numpy(out_g), torch.from_numpy(out_w), h, w)


def accumulate_feature_map(acc: Accumulator, contrib: Contributions, fmap: FeatureMap) -> None:
    """Add one view given the source's own-resolution map: the exact equivalent of resizing it to the render size
    (`resize_feature_map`) and calling `accumulate_view`, but a low-resolution bilinear map is never upsampled:
    the upsampling is folded into the weights, so the D-dimensional product runs at the map's resolution."""
    H, W = contrib.height, contrib.width
    h, w = fmap.features.shape[:2]
    if (h, w) == (H, W) or fmap.resize != "bilinear" or h > H or w > W:
        feats, valid = resize_feature_map(fmap, H, W)
        _accumulate(acc, contrib, feats, valid)
        return
    valid = None if fmap.valid is None else _resize_valid(fmap.valid, H, W)
    _accumulate(acc, contrib, fmap.features, valid)


def accumulate_view_reference(acc: Accumulator, contrib: Contributions, feats: Tensor, valid: Tensor | None = None) -> None:
    """Pure-torch `accumulate_view` (index_add in float64), kept as the readable reference for tests."""
    H, W = contrib.height, contrib.width
    flat = feats.reshape(H * W, -1).double()
    w = contrib.weight.double()
    if valid is not None:
        w = w * valid.reshape(-1)[contrib.pixel].double()
    numer = torch.zeros(acc.numer.shape, dtype=torch.float64)
    numer.index_add_(0, contrib.gaussian.long(), w[:, None] * flat[contrib.pixel.long()])
    acc.numer += numer.float()
    acc.denom.index_add_(0, contrib.gaussian.long(), w)


@numba.njit(cache=True)
def _denom_add(denom, gaussian, weight):  # pragma: no cover - numba
    # Serial, in entry order: the same float64 sums as torch's index_add_ (and no int64/float64 copies of M entries).
    for m in range(gaussian.shape[0]):
        denom[gaussian[m]] += np.float64(weight[m])
