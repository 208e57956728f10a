"""Prompts -> query vectors in a feature field's space, and the per-Gaussian (or per-pixel) selection rule.

Rule (shared by segment.py, the evaluation and the click app): with unit features f and unit queries,
    pos = max_i <f, q+_i>,  neg = max_j <f, q-_j>  (-inf without negatives),
    selected = seen & (pos > neg) & (pos >= threshold  if a threshold is given).
The query encoder follows the features file's `meta["space"]`:
    "clip:*"     text prompts encoded with `text_encoder_from_info(meta["text_encoder"])`;
    "labels"     prompts are class names (case-insensitive); the query of class c is the one-hot e_c;
                 the negative "other" means every class not named as a positive;
    anything else ("rgb", "dino:*", "features") has no text: only query vectors (--query-features).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numba
import numpy as np
import torch
from torch import Tensor

from .atomic import atomic_write_text
from .errors import UserError
from .features_file import FeatureField

OTHER = "other"  # the default negative prompt
DEFAULT_THRESHOLD_NO_NEG = 0.5  # without negatives the rule needs an absolute threshold

TextEncoder = Callable[[list[str]], Tensor]


# ----------------------------------------------------------------------------------------------------------------
# prompt sets


def parse_prompts(text: str | None) -> list[str]:
    """`"table; chair;"` -> ["table", "chair"] (split on ';', stripped, empty parts dropped)."""
    if text is None:
        return []
    return [p.strip() for p in text.split(";") if p.strip()]


@dataclass
class PromptSet:
    """A saved query: texts and/or raw vectors (e.g. features picked by clicks) and the threshold.

    JSON: {"positive_text": [...], "negative_text": [...], "positive_vectors": [[...]], "negative_vectors": [[...]],
    "threshold": float | null}. Vectors are lists of D floats in the field's feature space.
    """

    positive_text: list[str] = field(default_factory=list)
    negative_text: list[str] = field(default_factory=list)
    positive_vectors: list[list[float]] = field(default_factory=list)
    negative_vectors: list[list[float]] = field(default_factory=list)
    threshold: float | None = None

    @property
    def is_empty(self) -> bool:
        return not self.positive_text and not self.positive_vectors

    def save(self, path: str | Path) -> None:
        atomic_write_text(json.dumps(asdict(self), indent=1) + "\n", path)

    @staticmethod
    def load(path: str | Path) -> "PromptSet":
        path = Path(path)
        try:
            obj = json.loads(path.read_text())
        except FileNotFoundError:
            raise UserError(f"{path}: prompt set file not found") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise UserError(f"{path}: not a readable prompt set JSON ({e})") from None
        if not isinstance(obj, dict):
            raise UserError(f"{path}: a prompt set must be a JSON object")
        known = {"positive_text", "negative_text", "positive_vectors", "negative_vectors", "threshold"}
        unknown = sorted(set(obj) - known)
        if unknown:
            raise UserError(f"{path}: unknown keys {unknown}; expected {sorted(known)}")
        out = PromptSet()
        for key in ("positive_text", "negative_text"):
            v = obj.get(key, [])
            if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
                raise UserError(f"{path}: {key} must be a list of strings")
            setattr(out, key, [s.strip() for s in v if s.strip()])
        for key in ("positive_vectors", "negative_vectors"):
            v = obj.get(key, [])
            ok = isinstance(v, list) and all(
                isinstance(r, list) and r and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in r)
                for r in v
            )
            if not ok or len({len(r) for r in v}) > 1:
                raise UserError(f"{path}: {key} must be a list of equal-length lists of numbers")
            if not all(math.isfinite(x) for r in v for x in r):
                raise UserError(f"{path}: {key} contains NaN/inf")
            setattr(out, key, [[float(x) for x in r] for r in v])
        t = obj.get("threshold")
        if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t)):
            raise UserError(f"{path}: threshold must be a number or null")
        out.threshold = None if t is None else float(t)
        return out


def load_query_vectors(path: str | Path) -> Tensor:
    """Query vectors from a .pt (a tensor) or .npy file: [P, D] (or [D]) float32, finite, non-zero rows."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: query features file not found")
    try:
        if path.suffix.lower() == ".npy":
            arr = torch.from_numpy(np.load(path, allow_pickle=False).astype(np.float32))
        else:
            arr = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"{path}: cannot read query vectors ({type(e).__name__}: {str(e).splitlines()[0][:100]})") from None
    if not isinstance(arr, Tensor):
        raise UserError(f"{path}: expected a tensor [P, D] of query vectors, got {type(arr).__name__}")
    arr = arr.float()
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[0] == 0:
        raise UserError(f"{path}: expected query vectors [P, D], got shape {tuple(arr.shape)}")
    if not torch.isfinite(arr).all():
        raise UserError(f"{path}: query vectors contain NaN/inf")
    return arr


# ----------------------------------------------------------------------------------------------------------------
# encoding


@dataclass
class Queries:
    """Unit query vectors of one feature space.

    positive: [P, D]; negative: [Q, D] (Q may be 0); names: a label per row for printing.
    threshold: absolute minimum positive score, or None.
    """

    positive: Tensor
    negative: Tensor
    positive_names: list[str]
    negative_names: list[str]
    threshold: float | None = None

    def __post_init__(self) -> None:
        assert self.positive.ndim == 2 and self.negative.ndim == 2, (self.positive.shape, self.negative.shape)
        assert self.positive.shape[1] == self.negative.shape[1], (self.positive.shape, self.negative.shape)
        assert self.positive.shape[0] == len(self.positive_names) and self.negative.shape[0] == len(self.negative_names)


def space_kind(space: str) -> str:
    """"text" (prompts encoded by a text model), "labels" (prompts are class names) or "raw" (no text)."""
    if space.startswith("clip:"):
        return "text"
    if space == "labels":
        return "labels"
    return "raw"


def text_encoder_for(meta: dict) -> TextEncoder:
    """The text encoder recorded in a features file's meta (loaded lazily: it may be a large model)."""
    info = meta.get("text_encoder")
    if not info:
        raise UserError(f"features space {meta.get('space')!r} records no text encoder; cannot encode text prompts")
    from .feature_sources.lseg_source import text_encoder_from_info

    return text_encoder_from_info(info)


def _unit(x: Tensor, what: str) -> Tensor:
    n = x.norm(dim=1, keepdim=True)
    if (n < 1e-12).any():
        raise UserError(f"{what}: a query vector is all zeros")
    return x / n


def _vectors(rows: list[list[float]] | Tensor | None, dim: int, what: str) -> Tensor:
    if rows is None or len(rows) == 0:
        return torch.zeros(0, dim)
    t = torch.as_tensor(rows, dtype=torch.float32) if not isinstance(rows, Tensor) else rows.float()
    if t.ndim == 1:
        t = t[None]
    if t.ndim != 2 or t.shape[1] != dim:
        raise UserError(f"{what}: query vectors have dimension {t.shape[-1]} but the features have {dim}")
    if not torch.isfinite(t).all():
        raise UserError(f"{what}: query vectors contain NaN/inf")
    return _unit(t, what)


def _class_index(name: str, class_names: list[str]) -> int:
    lower = [c.lower() for c in class_names]
    try:
        return lower.index(name.lower())
    except ValueError:
        raise UserError(f"unknown class {name!r}; this features file knows: {', '.join(class_names)}") from None


def encode_queries(
    meta: dict,
    dim: int,
    prompts: PromptSet,
    text_encoder: TextEncoder | None = None,
    source: str = "--prompt",
) -> Queries:
    """Turn a PromptSet into unit query vectors in the space described by `meta` (a features file's meta).

    dim: D of the features. text_encoder: override for text spaces (tests); default from meta["text_encoder"].
    Negative texts default to ["other"]. Raises UserError for empty prompts, unknown class names, text in a
    space without text, or vectors of the wrong dimension.
    """
    if prompts.is_empty:
        raise UserError(f"{source}: empty prompt; give one or more ';'-separated prompts (or query vectors)")
    space = str(meta.get("space", "unknown"))
    kind = space_kind(space)
    pos_text, neg_text = list(prompts.positive_text), list(prompts.negative_text)
    if not neg_text and not prompts.negative_vectors:
        neg_text = [OTHER]
    pos_vec = _vectors(prompts.positive_vectors, dim, source)
    neg_vec = _vectors(prompts.negative_vectors, dim, source)

    if kind == "labels":
        names = list(meta.get("class_names") or [])
        if len(names) != dim:
            raise UserError(f"features space 'labels' needs {dim} class names in meta, found {len(names)}")
        pos_ids = [_class_index(p, names) for p in pos_text]
        neg_ids: list[int] = []
        for n in neg_text:
            if n.lower() == OTHER and OTHER not in [c.lower() for c in names]:
                neg_ids += [i for i in range(dim) if i not in pos_ids]  # "other" = every class not asked for
            else:
                neg_ids.append(_class_index(n, names))
        neg_ids = [i for i in dict.fromkeys(neg_ids) if i not in pos_ids]  # a class cannot be both
        eye = torch.eye(dim)
        pos = torch.cat([eye[pos_ids], pos_vec])
        neg = torch.cat([eye[neg_ids], neg_vec])
        pos_names = [names[i] for i in pos_ids] + [f"vector{i}" for i in range(len(pos_vec))]
        neg_names = [names[i] for i in neg_ids] + [f"vector{i}" for i in range(len(neg_vec))]
    elif kind == "text":
        texts = pos_text + neg_text
        enc = torch.zeros(0, dim)
        if texts:
            encoder = text_encoder or text_encoder_for(meta)
            enc = encoder(texts).detach().to("cpu", torch.float32)
            if enc.ndim != 2 or enc.shape != (len(texts), dim):
                raise UserError(f"text encoder gives {tuple(enc.shape)} for {len(texts)} prompts; features have D={dim}")
            enc = _unit(enc, "text encoder")
        pos = torch.cat([enc[: len(pos_text)], pos_vec])
        neg = torch.cat([enc[len(pos_text) :], neg_vec])
        pos_names = pos_text + [f"vector{i}" for i in range(len(pos_vec))]
        neg_names = neg_text + [f"vector{i}" for i in range(len(neg_vec))]
    else:
        explicit_neg_text = [t for t in prompts.negative_text]
        if pos_text or explicit_neg_text:
            raise UserError(
                f"features space {space!r} has no text encoder, so text prompts cannot be used; "
                "pass query vectors instead (--query-features FILE with [P, D] vectors, or a prompt set with vectors)"
            )
        pos, neg = pos_vec, neg_vec
        pos_names = [f"vector{i}" for i in range(len(pos_vec))]
        neg_names = [f"vector{i}" for i in range(len(neg_vec))]

    if pos.shape[0] == 0:
        raise UserError(f"{source}: no positive query left")
    threshold = prompts.threshold
    if neg.shape[0] == 0 and threshold is None:
        threshold = DEFAULT_THRESHOLD_NO_NEG  # nothing to compare against: use an absolute cut
    return Queries(pos, neg, pos_names, neg_names, threshold)


# ----------------------------------------------------------------------------------------------------------------
# scoring


def cosine_scores(unit_features: Tensor, queries: Tensor, chunk: int = 262_144) -> Tensor:
    """unit_features [..., D] x queries [P, D] -> [..., P] dot products (chunked over rows to bound memory)."""
    assert unit_features.shape[-1] == queries.shape[1], (unit_features.shape, queries.shape)
    flat = unit_features.reshape(-1, unit_features.shape[-1])
    q = queries.to(flat.device, torch.float32)
    out = torch.empty(flat.shape[0], q.shape[0], dtype=torch.float32, device=flat.device)
    for i in range(0, flat.shape[0], chunk):
        out[i : i + chunk] = flat[i : i + chunk].float() @ q.T
    return out.reshape(*unit_features.shape[:-1], q.shape[0])


def mask_from_scores(
    pos_scores: Tensor, neg_scores: Tensor, valid: Tensor | None = None, threshold: float | None = None
) -> Tensor:
    """The selection rule. pos_scores [..., P], neg_scores [..., Q] (Q may be 0), valid [...] bool or None.

    Returns [...] bool: valid & (max pos > max neg) & (max pos >= threshold, if given).
    """
    assert pos_scores.shape[:-1] == neg_scores.shape[:-1], (pos_scores.shape, neg_scores.shape)
    assert pos_scores.shape[-1] > 0, "need at least one positive query"
    pos = pos_scores.max(dim=-1).values
    if neg_scores.shape[-1] > 0:
        mask = pos > neg_scores.max(dim=-1).values
    else:
        mask = torch.ones_like(pos, dtype=torch.bool)
    if threshold is not None:
        mask &= pos >= threshold
    if valid is not None:
        assert valid.shape == mask.shape, (valid.shape, mask.shape)
        mask &= valid
    return mask


def select(unit_features: Tensor, queries: Queries, valid: Tensor | None = None) -> Tensor:
    """[..., D] unit features -> [...] bool selection by `mask_from_scores`."""
    return mask_from_scores(
        cosine_scores(unit_features, queries.positive),
        cosine_scores(unit_features, queries.negative),
        valid,
        queries.threshold,
    )


def select_gaussians(ff: FeatureField, queries: Queries) -> Tensor:
    """[N] bool: the Gaussians the queries select (never-seen Gaussians excluded)."""
    return select(ff.normalized(), queries, ff.seen)


def classify(unit_features: Tensor, class_queries: Tensor) -> Tensor:
    """[..., D] x [C, D] -> [...] int64 argmax class."""
    return cosine_scores(unit_features, class_queries).argmax(dim=-1)


# ----------------------------------------------------------------------------------------------------------------
# kNN clean-up


def knn_vote_bruteforce(points: Tensor, selected: Tensor, candidates: Tensor, k: int, chunk: int = 2048) -> Tensor:
    """Reference kNN vote (exact, chunked torch.cdist + topk; O(S*C) time, O(chunk*C) memory).

    points [N, 3]; selected, candidates [N] bool (selected must lie within candidates). A selected point stays if
    more than k/2 of its k nearest other candidates are selected. Returns [N] bool.
    """
    sel_idx = torch.nonzero(selected & candidates).squeeze(1)
    cand_idx = torch.nonzero(candidates).squeeze(1)
    keep = torch.zeros_like(selected)
    if sel_idx.numel() == 0:
        return keep
    ref = points[cand_idx].double()
    ref_sel = selected[cand_idx]
    kk = min(k, cand_idx.numel() - 1)
    for i in range(0, sel_idx.numel(), chunk):
        q = sel_idx[i : i + chunk]
        d = torch.cdist(points[q].double(), ref)
        d[cand_idx[None, :] == q[:, None]] = float("inf")  # not its own neighbour
        if kk <= 0:
            continue
        nn = d.topk(kk, dim=1, largest=False).indices
        votes = ref_sel[nn].sum(dim=1)
        keep[q] = votes * 2 > k
    return keep


@numba.njit(parallel=True, cache=True)
def _grid_knn_vote(q_pts, q_ids, ref_pts, ref_sel, ref_ids, cell_keys, cell_start, cell_end, origin, h, k, max_ring):
    # Exact kNN within max_ring cells: visit cubic shells of cells around the query's cell, keep the k best,
    # and stop once the k-th distance is closer than anything an outer shell could hold ((ring) * h).
    nq = q_pts.shape[0]
    votes = np.zeros(nq, dtype=np.int64)
    for qi in numba.prange(nq):
        best_d = np.full(k, np.inf)
        best_s = np.zeros(k, dtype=np.bool_)
        px, py, pz = q_pts[qi, 0], q_pts[qi, 1], q_pts[qi, 2]
        cx = int(np.floor((px - origin[0]) / h))
        cy = int(np.floor((py - origin[1]) / h))
        cz = int(np.floor((pz - origin[2]) / h))
        for ring in range(max_ring + 1):
            if ring > 0 and best_d[k - 1] <= ((ring - 1) * h) ** 2:
                break
            for dx in range(-ring, ring + 1):
                for dy in range(-ring, ring + 1):
                    for dz in range(-ring, ring + 1):
                        if max(abs(dx), abs(dy), abs(dz)) != ring:
                            continue
                        key = ((cx + dx + 1048576) << 42) | ((cy + dy + 1048576) << 21) | (cz + dz + 1048576)
                        j = np.searchsorted(cell_keys, key)
                        if j >= cell_keys.shape[0] or cell_keys[j] != key:
                            continue
                        for r in range(cell_start[j], cell_end[j]):
                            if ref_ids[r] == q_ids[qi]:
                                continue
                            ddx = ref_pts[r, 0] - px
                            ddy = ref_pts[r, 1] - py
                            ddz = ref_pts[r, 2] - pz
                            d2 = ddx * ddx + ddy * ddy + ddz * ddz
                            if d2 < best_d[k - 1]:
                                m = k - 1  # insertion into the sorted top-k
                                while m > 0 and best_d[m - 1] > d2:
                                    best_d[m] = best_d[m - 1]
                                    best_s[m] = best_s[m - 1]
                                    m -= 1
                                best_d[m] = d2
                                best_s[m] = ref_sel[r]
        c = 0
        for m in range(k):
            if best_d[m] < np.inf and best_s[m]:
                c += 1
        votes[qi] = c
    return votes


def knn_clean(points: Tensor, selected: Tensor, candidates: Tensor, k: int, max_ring: int = 3, seed: int = 0) -> Tensor:
    """Drop isolated selections: a selected point stays if more than k/2 of its k nearest candidates are selected.

    points [N, 3]; selected, candidates [N] bool (e.g. candidates = seen Gaussians). Returns [N] bool (a subset of
    `selected`). Uses a uniform voxel grid (cell = the median k-th neighbour distance of a sample) and searches at
    most `max_ring` shells of cells: neighbours farther than that count as missing (= not selected votes), so a
    lone selected Gaussian far from everything is dropped. Memory O(N), time ~O(S * k) for S selected points.
    """
    assert points.ndim == 2 and points.shape[1] == 3, points.shape
    assert selected.shape == candidates.shape == (points.shape[0],)
    if k < 1:
        raise UserError(f"--clean-knn: K must be >= 1, got {k}")
    selected = selected & candidates
    cand_idx = torch.nonzero(candidates).squeeze(1)
    sel_idx = torch.nonzero(selected).squeeze(1)
    keep = torch.zeros_like(selected)
    if sel_idx.numel() == 0 or cand_idx.numel() < 2:
        return keep
    ref = points[cand_idx].double().numpy()
    ref_sel = selected[cand_idx].numpy()
    # Cell size: median distance to the k-th neighbour over a sample, so about k neighbours sit within one shell.
    rng = np.random.default_rng(seed)
    sample = rng.choice(len(ref), size=min(64, len(ref)), replace=False)
    kk = min(k, len(ref) - 1)
    ref32 = torch.from_numpy(ref).float()
    d = torch.cdist(ref32[sample], ref32)  # [64, C] float32: bounded memory, ~0.1 s per million candidates
    h = float(d.topk(kk + 1, dim=1, largest=False).values[:, -1].median())
    if not h > 0:
        h = 1e-6
    origin = ref.min(axis=0)
    cells = np.floor((ref - origin) / h).astype(np.int64)
    if cells.max() >= 1048576:  # extreme outliers: coarsen so the packed 21-bit keys cannot overflow
        h *= (cells.max() + 1) / 1048575.0
        cells = np.floor((ref - origin) / h).astype(np.int64)
    keys = ((cells[:, 0] + 1048576) << 42) | ((cells[:, 1] + 1048576) << 21) | (cells[:, 2] + 1048576)
    order = np.argsort(keys, kind="stable")
    keys_sorted = keys[order]
    cell_keys, cell_start = np.unique(keys_sorted, return_index=True)
    cell_end = np.append(cell_start[1:], len(keys_sorted))
    ref_ids = cand_idx.numpy()[order]
    votes = _grid_knn_vote(
        points[sel_idx].double().numpy(), sel_idx.numpy(), ref[order], ref_sel[order], ref_ids,
        cell_keys, cell_start.astype(np.int64), cell_end.astype(np.int64), origin, h, int(k), int(max_ring),
    )
    keep[sel_idx] = torch.from_numpy(votes * 2 > k)
    return keep
