"""Load and save trained 3DGS scenes: gsplat checkpoints, Inria PLY / chkpnt.pth, antimatter15 `.splat`.

Everything is converted to `Splats` (gsplat's raw parameterisation: log scales, opacity logits, wxyz quats,
SH in Inria/Sloan order [N, K, 3]). All savers write atomically (temp file in the same folder + os.replace).
"""

from __future__ import annotations

import glob
import os
import pickle
import re
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from .errors import UserError
from .splats import Splats

FORMATS = ("gsplat", "ply", "inria-pth", "splat")
C0 = 0.28209479177387814  # SH degree-0 constant
SPLAT_BYTES = 32  # antimatter15 .splat record size
_SPLAT_DTYPE = np.dtype([("pos", "<f4", 3), ("scale", "<f4", 3), ("rgba", "u1", 4), ("rot", "u1", 4)])
_RANK_RE = re.compile(r"^ckpt_(\d+)_rank(\d+)\.pt$")
_SPLAT_KEYS = ("means", "quats", "scales", "opacities", "sh0", "shN")


# ----------------------------------------------------------------------------------------------------------------
# helpers


def _atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call `write(tmp_path)` on a temp file next to `path`, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def _torch_load(path: Path) -> Any:
    """torch.load with weights_only=True; any failure becomes a one-line UserError naming the file."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "weights only" in str(e).lower() or "weights_only" in str(e).lower():
            raise UserError(
                f"{path}: holds objects that cannot be loaded safely with weights_only=True "
                f"(re-save it with tensors/ints/dicts only): {first}"
            ) from None
        raise UserError(f"{path}: corrupt or truncated checkpoint ({first})") from None
    except Exception as e:  # zip reader errors, EOF, ... all mean the file is damaged
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{path}: corrupt or truncated checkpoint ({type(e).__name__}: {first})") from None


def _build(source: Path | str, fields: dict[str, Any]) -> Splats:
    """Validate per-Gaussian counts and finiteness, return float32 CPU `Splats`."""
    tensors = {}
    for k in _SPLAT_KEYS:
        v = fields[k]
        if not isinstance(v, Tensor):
            v = torch.as_tensor(np.asarray(v))
        tensors[k] = v.detach().to("cpu", torch.float32).contiguous()
    counts = {k: (v.shape[0] if v.ndim else -1) for k, v in tensors.items()}
    if len(set(counts.values())) != 1:
        desc = ", ".join(f"{k} {c}" for k, c in counts.items())
        raise UserError(f"{source}: mismatched per-Gaussian counts across fields ({desc})")
    if tensors["means"].shape[0] == 0:
        raise UserError(f"{source}: the scene holds no Gaussians")
    try:
        splats = Splats(**tensors)
    except UserError as e:
        raise UserError(f"{source}: {e}") from None
    return splats.check_finite(str(source))


# ----------------------------------------------------------------------------------------------------------------
# format detection


def detect_format(path: str | os.PathLike) -> str:
    """One of FORMATS for `path`, from the content first (magic bytes / pickle payload), then the extension."""
    p = Path(path)
    if p.is_dir() or glob.has_magic(str(path)):
        return "gsplat"
    if not p.exists():
        raise UserError(f"{p}: file not found")
    with open(p, "rb") as f:
        head = f.read(8)
    if head.startswith(b"ply"):
        return "ply"
    if _is_torch_file(p):
        obj = _torch_load(p)
        return _torch_kind(p, obj)
    ext = p.suffix.lower()
    if ext == ".splat":
        return "splat"
    if ext in (".pt", ".pth", ".ckpt"):
        raise UserError(f"{p}: corrupt or truncated checkpoint (not a torch archive)")
    if ext == ".ply":
        raise UserError(f"{p}: not a PLY file (missing 'ply' magic)")
    raise UserError(f"{p}: unknown scene format (expected one of {', '.join(FORMATS)}; pass --format to force one)")


def _is_torch_file(p: Path) -> bool:
    """torch.save output: a zip archive (current) or a raw pickle (legacy)."""
    with open(p, "rb") as f:
        head = f.read(4)
    return head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"


def _torch_kind(p: Path, obj: Any) -> str:
    if isinstance(obj, dict) and ("splats" in obj or "means" in obj):
        return "gsplat"
    if isinstance(obj, (tuple, list)) and len(obj) == 2 and isinstance(obj[0], (tuple, list)):
        return "inria-pth"
    raise UserError(
        f"{p}: torch file is neither a gsplat checkpoint (dict with 'splats') nor an Inria chkpnt "
        f"((model_params, iteration) tuple); got {type(obj).__name__}"
    )


# ----------------------------------------------------------------------------------------------------------------
# loaders


def load_scene(path: str | os.PathLike, format: str | None = None) -> Splats:
    """Load a trained scene as float32 CPU `Splats`.

    path: a gsplat checkpoint (`ckpt_*.pt`; one rank file of a multi-GPU run loads all its ranks), a directory
        holding `ckpt_{step}_rank{r}.pt` files (or `ckpts/` of them; the highest step is taken) or an Inria output
        directory (`point_cloud/iteration_*/point_cloud.ply`), a glob of rank files, an Inria `.ply` or
        `chkpnt*.pth`, or an antimatter15 `.splat`.
    format: force one of "gsplat", "ply", "inria-pth", "splat" (default: detect from content, then extension).
    """
    if format is not None and format not in FORMATS:
        raise UserError(f"{path}: unknown format {format!r}; expected one of {', '.join(FORMATS)}")
    p = Path(path)
    if p.is_dir():
        ply = _inria_output_ply(p)
        if ply is not None and format in (None, "ply"):
            return load_inria_ply(ply)
        if format not in (None, "gsplat"):
            raise UserError(f"{p}: is a directory; format {format!r} needs a file")
        return load_gsplat_checkpoint(p)
    if glob.has_magic(str(path)):
        if format not in (None, "gsplat"):
            raise UserError(f"{path}: glob patterns are only supported for gsplat rank files")
        return load_gsplat_checkpoint(path)
    if not p.exists():
        raise UserError(f"{p}: file not found")
    if p.stat().st_size == 0:
        raise UserError(f"{p}: file is empty")
    if format in (None, "gsplat") and _RANK_RE.match(p.name):
        return load_gsplat_checkpoint(p)  # finds the sibling ranks
    if format in (None, "gsplat", "inria-pth") and _is_torch_file(p):
        obj = _torch_load(p)  # load once, then dispatch on the payload
        kind = _torch_kind(p, obj)
        if format is not None and format != kind:
            raise UserError(f"{p}: holds a {kind} checkpoint, not {format}")
        return _splats_from_gsplat_obj(p, obj) if kind == "gsplat" else _splats_from_inria_obj(p, obj)
    fmt = format or detect_format(p)
    if fmt in ("gsplat", "inria-pth"):
        raise UserError(f"{p}: not a torch checkpoint (corrupt, truncated or wrong format)")
    if fmt == "ply":
        return load_inria_ply(p)
    return load_splat(p)


def _inria_output_ply(d: Path) -> Path | None:
    its = sorted(d.glob("point_cloud/iteration_*/point_cloud.ply"), key=lambda q: _int_suffix(q.parent.name))
    return its[-1] if its else None


def _int_suffix(name: str) -> int:
    m = re.search(r"(\d+)$", name)
    return int(m.group(1)) if m else -1


def _rank_files(path: str | os.PathLike) -> list[Path]:
    """The files making up one gsplat checkpoint, in rank order."""
    p = Path(path)
    if p.is_dir():
        cands = [q for q in p.iterdir() if _RANK_RE.match(q.name)]
        if not cands and (p / "ckpts").is_dir():
            cands = [q for q in (p / "ckpts").iterdir() if _RANK_RE.match(q.name)]
        if not cands:
            plain = sorted(q for q in p.iterdir() if q.suffix == ".pt")
            if len(plain) == 1:
                return plain
            raise UserError(f"{p}: no gsplat checkpoint files (ckpt_<step>_rank<r>.pt) in this directory")
        step = max(int(_RANK_RE.match(q.name).group(1)) for q in cands)
        files = [q for q in cands if int(_RANK_RE.match(q.name).group(1)) == step]
    elif glob.has_magic(str(path)):
        files = [Path(q) for q in glob.glob(str(path))]
        if not files:
            raise UserError(f"{path}: no files match this pattern")
        if len(files) > 1 and not all(_RANK_RE.match(q.name) for q in files):
            raise UserError(f"{path}: pattern matches files that are not ckpt_<step>_rank<r>.pt")
        if len(files) > 1 and len({_RANK_RE.match(q.name).group(1) for q in files}) > 1:
            raise UserError(f"{path}: pattern matches rank files of several steps; narrow it to one step")
    else:
        m = _RANK_RE.match(p.name)
        if not m:
            return [p]
        files = [q for q in p.parent.iterdir() if (mm := _RANK_RE.match(q.name)) and mm.group(1) == m.group(1)]
    if len(files) == 1:
        return files
    ranks = sorted(int(_RANK_RE.match(q.name).group(2)) for q in files)
    if ranks != list(range(len(ranks))):
        raise UserError(f"{files[0].parent}: rank files are not contiguous from 0 (found ranks {ranks})")
    return sorted(files, key=lambda q: int(_RANK_RE.match(q.name).group(2)))


def load_gsplat_checkpoint(path: str | os.PathLike) -> Splats:
    """gsplat `simple_trainer` checkpoint(s) -> Splats; per-rank files are concatenated in rank order."""
    parts = []
    for f in _rank_files(path):
        if not f.exists():
            raise UserError(f"{f}: file not found")
        parts.append((f, _gsplat_fields(f, _torch_load(f))))
    if len(parts) == 1:
        return _build(parts[0][0], parts[0][1])
    # Check each rank separately so an error names the offending file, then concatenate.
    for f, sp in parts:
        _build(f, sp)
    fields = {k: torch.cat([sp[k].to(torch.float32) for _, sp in parts]) for k in _SPLAT_KEYS}
    return _build(parts[0][0].parent, fields)


def _splats_from_gsplat_obj(f: Path, obj: Any) -> Splats:
    return _build(f, _gsplat_fields(f, obj))


def _gsplat_fields(f: Path, obj: Any) -> dict[str, Tensor]:
    """The `splats` dict of a loaded gsplat checkpoint, validated."""
    if not isinstance(obj, dict):
        raise UserError(f"{f}: not a gsplat checkpoint (expected a dict with 'step' and 'splats', got {type(obj).__name__})")
    sp = obj["splats"] if "splats" in obj else obj
    if not isinstance(sp, dict):
        raise UserError(f"{f}: not a gsplat checkpoint ('splats' is {type(sp).__name__}, expected a dict)")
    if "sh0" not in sp and ("features" in sp or "colors" in sp):
        raise UserError(
            f"{f}: gsplat checkpoint trained with --app_opt (splats hold 'features'/'colors' instead of sh0/shN): "
            "not supported yet"
        )
    missing = [k for k in _SPLAT_KEYS if k not in sp]
    if missing:
        raise UserError(f"{f}: not a gsplat checkpoint: missing keys {missing} in 'splats'")
    bad = [k for k in _SPLAT_KEYS if not isinstance(sp[k], Tensor)]
    if bad:
        raise UserError(f"{f}: splats entries {bad} are not tensors")
    return {k: sp[k] for k in _SPLAT_KEYS}


def load_inria_pth(path: str | os.PathLike) -> Splats:
    """Inria `chkpnt*.pth` = (model_params, iteration) -> Splats.

    model_params = (active_sh_degree, xyz, features_dc [N,1,3], features_rest [N,K,3], scaling, rotation,
    opacity [N,1], ...). SH beyond the active degree are dropped (Inria renders with the active degree only).
    """
    p = Path(path)
    if not p.exists():
        raise UserError(f"{p}: file not found")
    return _splats_from_inria_obj(p, _torch_load(p))


def _splats_from_inria_obj(p: Path, obj: Any) -> Splats:
    if not (isinstance(obj, (tuple, list)) and len(obj) == 2 and isinstance(obj[0], (tuple, list))):
        raise UserError(f"{p}: not an Inria chkpnt (expected a (model_params, iteration) tuple, got {type(obj).__name__})")
    mp = obj[0]
    if len(mp) < 7:
        raise UserError(f"{p}: Inria model_params has {len(mp)} entries, expected at least 7")
    deg, xyz, f_dc, f_rest, scaling, rotation, opacity = mp[:7]
    names = ("xyz", "features_dc", "features_rest", "scaling", "rotation", "opacity")
    for n, t in zip(names, (xyz, f_dc, f_rest, scaling, rotation, opacity)):
        if not isinstance(t, Tensor):
            raise UserError(f"{p}: Inria model_params entry {n} is {type(t).__name__}, expected a tensor")
    if not isinstance(deg, int) or not 0 <= deg <= 3:
        raise UserError(f"{p}: Inria active_sh_degree is {deg!r}, expected an int 0..3")
    if f_rest.ndim != 3 or f_rest.shape[1] < (deg + 1) ** 2 - 1:
        raise UserError(f"{p}: features_rest has shape {tuple(f_rest.shape)}, too few coefficients for degree {deg}")
    fields = {
        "means": xyz,
        "sh0": f_dc,
        "shN": f_rest[:, : (deg + 1) ** 2 - 1],
        "scales": scaling,
        "quats": rotation,
        "opacities": opacity.reshape(opacity.shape[0], -1)[:, 0] if opacity.ndim == 2 else opacity,
    }
    return _build(p, fields)


_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2", "ushort": "u2",
    "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4", "float": "f4", "float32": "f4",
    "double": "f8", "float64": "f8",
}


def _read_ply_vertices(p: Path) -> dict[str, np.ndarray]:
    """Parse the `vertex` element of a binary (little/big endian) or ascii PLY into {property: [N] array}."""
    with open(p, "rb") as f:
        data = f.read()
    end = data.find(b"end_header")
    if not data.startswith(b"ply") or end < 0:
        raise UserError(f"{p}: not a PLY file (no 'ply' magic / 'end_header')")
    nl = data.find(b"\n", end)
    body_start = nl + 1 if nl >= 0 else len(data)
    header = data[:end].decode("ascii", errors="replace").splitlines()
    fmt = None
    elements: list[tuple[str, int, list[tuple[str, str]]]] = []
    for line in header[1:]:
        tok = line.split()
        if not tok or tok[0] in ("comment", "obj_info"):
            continue
        if tok[0] == "format":
            fmt = tok[1]
        elif tok[0] == "element":
            elements.append((tok[1], int(tok[2]), []))
        elif tok[0] == "property":
            if not elements:
                raise UserError(f"{p}: malformed PLY header (property before element)")
            if tok[1] == "list":
                raise UserError(f"{p}: PLY list properties are not supported (is this a mesh, not a 3DGS scene?)")
            if tok[1] not in _PLY_TYPES:
                raise UserError(f"{p}: unknown PLY property type {tok[1]!r}")
            elements[-1][2].append((tok[2], _PLY_TYPES[tok[1]]))
    if fmt not in ("binary_little_endian", "binary_big_endian", "ascii"):
        raise UserError(f"{p}: unsupported PLY format {fmt!r}")
    if not elements or elements[0][0] != "vertex":
        raise UserError(f"{p}: PLY has no leading 'vertex' element")
    _, n, props = elements[0]
    if fmt == "ascii":
        lines = data[body_start:].decode("ascii", errors="replace").split("\n")
        rows = [ln.split() for ln in lines[:n]]
        if len(rows) < n or any(len(r) != len(props) for r in rows):
            raise UserError(f"{p}: truncated or malformed ascii PLY (expected {n} rows of {len(props)} values)")
        arr = np.asarray(rows, dtype=np.float64).reshape(n, len(props))
        return {name: arr[:, i] for i, (name, _) in enumerate(props)}
    bo = "<" if fmt == "binary_little_endian" else ">"
    dtype = np.dtype([(name, bo + t) for name, t in props])
    need = n * dtype.itemsize
    if len(data) - body_start < need:
        raise UserError(f"{p}: truncated PLY ({len(data) - body_start} data bytes, header promises {need})")
    arr = np.frombuffer(data, dtype=dtype, count=n, offset=body_start)
    return {name: arr[name] for name, _ in props}


def load_inria_ply(path: str | os.PathLike) -> Splats:
    """Inria 3DGS `point_cloud.ply` -> Splats (f_rest is channel-major: all R coefficients, then G, then B)."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"{p}: file not found")
    v = _read_ply_vertices(p)
    need = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2",
            "rot_0", "rot_1", "rot_2", "rot_3"]
    missing = [k for k in need if k not in v]
    if missing:
        raise UserError(f"{p}: not an Inria 3DGS PLY: missing vertex properties {missing}")
    rest = sorted((k for k in v if k.startswith("f_rest_")), key=lambda k: int(k[7:]))
    if [int(k[7:]) for k in rest] != list(range(len(rest))) or len(rest) not in (0, 9, 24, 45):
        raise UserError(f"{p}: {len(rest)} f_rest properties; expected 0, 9, 24 or 45 numbered from 0 (SH degree 0-3)")
    n = len(v["x"])

    def stack(keys: list[str]) -> Tensor:
        return torch.from_numpy(np.stack([np.array(v[k], dtype=np.float32) for k in keys], axis=1))

    k_rest = len(rest) // 3
    shN = stack(rest).reshape(n, 3, k_rest).transpose(1, 2) if rest else torch.zeros(n, 0, 3)
    fields = {
        "means": stack(["x", "y", "z"]),
        "sh0": stack(["f_dc_0", "f_dc_1", "f_dc_2"]).reshape(n, 1, 3),
        "shN": shN,
        "opacities": torch.from_numpy(np.array(v["opacity"], dtype=np.float32)),
        "scales": stack(["scale_0", "scale_1", "scale_2"]),
        "quats": stack(["rot_0", "rot_1", "rot_2", "rot_3"]),
    }
    return _build(p, fields)


def load_splat(path: str | os.PathLike) -> Splats:
    """antimatter15 `.splat` -> Splats (SH degree 0).

    Per Gaussian: pos f32x3, linear scale f32x3, RGBA u8x4, rotation u8x4 = q*128+128 (wxyz).
    Opacity a/255 is clamped to [1e-4, 1-1e-4] before the logit so it stays finite.
    """
    p = Path(path)
    if not p.exists():
        raise UserError(f"{p}: file not found")
    size = p.stat().st_size
    if size == 0 or size % SPLAT_BYTES:
        raise UserError(f"{p}: size {size} bytes is not a positive multiple of {SPLAT_BYTES}: not a .splat file or truncated")
    rec = np.fromfile(p, dtype=_SPLAT_DTYPE)
    scale = rec["scale"].astype(np.float64)
    if not np.all(np.isfinite(scale)) or np.any(scale <= 0):
        bad = int((~(np.isfinite(scale) & (scale > 0))).any(axis=1).sum())
        raise UserError(f"{p}: {bad} Gaussians have non-positive or non-finite scales (not a .splat file?)")
    rgba = rec["rgba"].astype(np.float64) / 255.0
    q = (rec["rot"].astype(np.float64) - 128.0) / 128.0
    norm = np.linalg.norm(q, axis=1, keepdims=True)
    # A zero quaternion (all bytes 128) is not a rotation: use the identity instead of dividing by 0.
    q = np.where(norm > 1e-8, q / np.maximum(norm, 1e-12), np.array([1.0, 0, 0, 0]))
    a = np.clip(rgba[:, 3], 1e-4, 1 - 1e-4)
    fields = {
        "means": rec["pos"].astype(np.float32),
        "scales": np.log(scale).astype(np.float32),
        "quats": q.astype(np.float32),
        "opacities": np.log(a / (1 - a)).astype(np.float32),
        "sh0": ((rgba[:, None, :3] - 0.5) / C0).astype(np.float32),
        "shN": np.zeros((len(rec), 0, 3), dtype=np.float32),
    }
    return _build(p, fields)


# ----------------------------------------------------------------------------------------------------------------
# savers


def _cpu(splats: Splats) -> dict[str, Tensor]:
    return {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in splats.fields().items()}


def save_gsplat_checkpoint(splats: Splats, path: str | os.PathLike, step: int = 0) -> Path:
    """Write a gsplat `simple_trainer` checkpoint `{"step": step, "splats": {...}}`."""
    data = {"step": int(step), "splats": _cpu(splats)}
    return _atomic_write(path, lambda tmp: torch.save(data, tmp))


def save_inria_pth(splats: Splats, path: str | os.PathLike, iteration: int = 0) -> Path:
    """Write an Inria `chkpnt.pth`: ((sh_degree, xyz, f_dc, f_rest, scaling, rotation, opacity [N,1],
    max_radii2D, xyz_gradient_accum, denom, optimizer_state, spatial_lr_scale), iteration).

    The optimizer state is empty: the file is meant for loading/rendering, not for resuming training.
    """
    f = _cpu(splats)
    n = splats.num
    params = (
        splats.sh_degree, f["means"], f["sh0"], f["shN"], f["scales"], f["quats"], f["opacities"][:, None],
        torch.zeros(n), torch.zeros(n, 1), torch.zeros(n, 1), {"state": {}, "param_groups": []}, 1.0,
    )
    return _atomic_write(path, lambda tmp: torch.save((params, int(iteration)), tmp))


def save_inria_ply(splats: Splats, path: str | os.PathLike) -> Path:
    """Write an Inria 3DGS PLY (binary little endian; x y z nx ny nz f_dc_* f_rest_* opacity scale_* rot_*)."""
    f = _cpu(splats)
    n, k = splats.num, splats.shN.shape[1]
    names = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    names += [f"f_rest_{i}" for i in range(3 * k)]
    names += ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    cols = [
        f["means"], torch.zeros(n, 3), f["sh0"].reshape(n, 3),
        f["shN"].transpose(1, 2).reshape(n, 3 * k),  # channel-major, as Inria writes it
        f["opacities"][:, None], f["scales"], f["quats"],
    ]
    body = torch.cat(cols, dim=1).numpy().astype("<f4")
    assert body.shape == (n, len(names)), body.shape
    header = "ply\nformat binary_little_endian 1.0\n" + f"element vertex {n}\n"
    header += "".join(f"property float {nm}\n" for nm in names) + "end_header\n"

    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            fh.write(header.encode("ascii"))
            fh.write(body.tobytes())

    return _atomic_write(path, write)


def save_splat(splats: Splats, path: str | os.PathLike, sort: bool = False) -> Path:
    """Write an antimatter15 `.splat` (lossy: colour/opacity/rotation as bytes, view-dependent SH dropped).

    sort: order by the viewer's usual importance (descending volume x opacity) as antimatter15's converter does.
    """
    f = _cpu(splats)
    n = splats.num
    rec = np.zeros(n, dtype=_SPLAT_DTYPE)
    rec["pos"] = f["means"].numpy()
    rec["scale"] = torch.exp(f["scales"]).numpy()
    rgb = f["sh0"].reshape(n, 3).double() * C0 + 0.5
    alpha = torch.sigmoid(f["opacities"].double())[:, None]
    rec["rgba"] = (torch.cat([rgb, alpha], 1).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    q = f["quats"].double()
    q = q / q.norm(dim=1, keepdim=True).clamp_min(1e-12)
    rec["rot"] = (q * 128 + 128).round().clamp(0, 255).to(torch.uint8).numpy()
    if sort:
        importance = -(f["scales"].double().sum(1).exp() * alpha[:, 0]).numpy()
        rec = rec[np.argsort(importance, kind="stable")]

    def write(tmp: str) -> None:
        rec.tofile(tmp)

    return _atomic_write(path, write)


def save_scene(splats: Splats, path: str | os.PathLike, format: str | None = None) -> Path:
    """Save in `format` (default from the extension: .ply, .splat, .pth -> inria-pth, .pt/.ckpt -> gsplat)."""
    p = Path(path)
    fmt = format or {".ply": "ply", ".splat": "splat", ".pth": "inria-pth", ".pt": "gsplat", ".ckpt": "gsplat"}.get(
        p.suffix.lower()
    )
    if fmt == "ply":
        return save_inria_ply(splats, p)
    if fmt == "splat":
        return save_splat(splats, p)
    if fmt == "inria-pth":
        return save_inria_pth(splats, p)
    if fmt == "gsplat":
        return save_gsplat_checkpoint(splats, p)
    raise UserError(f"{p}: cannot tell the output format from the extension; use .ply, .splat, .pth or .pt")


__all__ = [
    "FORMATS", "detect_format", "load_scene", "load_gsplat_checkpoint", "load_inria_ply", "load_inria_pth",
    "load_splat", "save_gsplat_checkpoint", "save_inria_ply", "save_inria_pth", "save_splat", "save_scene",
]
