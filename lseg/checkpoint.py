"""Loading `lseg_minimal_e200.ckpt` (strictly) into `LSegNet`, or only its CLIP text tower."""

from __future__ import annotations

import argparse
import pickle
import re
from pathlib import Path

import torch
from torch import Tensor, nn

from utils.errors import UserError

from .net import LSegNet, Normalization, build_clip, build_on_meta, restore_clip_mask

CKPT_NAME = "lseg_minimal_e200.ckpt"
CLIP_PREFIX = "clip_pretrained."
_WRAPPER_PREFIXES = ("net.", "module.")


def _missing_message(path: Path) -> str:
    return (
        f"{path}: LSeg checkpoint not found; put {CKPT_NAME} (the released e200 checkpoint of the lseg-minimal "
        f"project) in checkpoints/"
    )


def _torch_load(path: Path) -> object:
    # argparse.Namespace (Lightning hyper-parameters) is a plain attribute container: safe to allow.
    with torch.serialization.safe_globals([argparse.Namespace]):
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:  # legacy (non-zip) format cannot be mmapped
            if "mmap" not in str(e):
                raise
        return torch.load(path, map_location="cpu", weights_only=True)


def _reason(e: Exception) -> str:
    """The informative part of torch.load's (long, multi-line) error."""
    text = str(e)
    m = re.search(r"WeightsUnpickler error:\s*([^\n]+)", text)
    reason = m.group(1).split(". Please")[0] if m else (text.strip().splitlines() or [type(e).__name__])[0]
    if "Unsupported operand" in reason:
        reason = "not a PyTorch checkpoint (" + reason + ")"
    return reason[:300]


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The float32 state dict in a checkpoint file: raw, under `state_dict`, keys maybe prefixed `net.`; fp16 -> fp32.

    Uses mmap when the file is in the zip format so that unused tensors are never read.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(_missing_message(path))
    try:
        obj = _torch_load(path)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as e:
        raise UserError(f"{path}: cannot read as a PyTorch checkpoint (weights_only): {_reason(e)}") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()):
        raise UserError(f"{path}: not a state dict (expected a dict of tensors, optionally under 'state_dict')")
    out = {}
    for k, v in obj.items():
        for p in _WRAPPER_PREFIXES:
            if k.startswith(p):
                k = k[len(p) :]
                break
        v = v.float() if v.dtype in (torch.float16, torch.bfloat16) else v
        out[k] = v if v.is_contiguous() else v.contiguous()  # e.g. broadcast (stride-0) tensors saved as such
    return out


def _check_keys(path: Path, sd: dict[str, Tensor], model: nn.Module, what: str) -> None:
    """Raise UserError unless `sd` has exactly the model's keys and shapes."""
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = [k for k in want if k not in sd]
    unexpected = [k for k in sd if k not in want]
    wrong = [f"{k} {tuple(sd[k].shape)} != {want[k]}" for k in want if k in sd and tuple(sd[k].shape) != want[k]]
    if missing or unexpected or wrong:
        parts = [f"{len(missing)} missing (e.g. {', '.join(missing[:3])})" if missing else "",
                 f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})" if unexpected else "",
                 f"{len(wrong)} with wrong shape (e.g. {'; '.join(wrong[:2])})" if wrong else ""]
        raise UserError(f"{path}: not an lseg-minimal {what} checkpoint: " + "; ".join(p for p in parts if p) + " keys")


def load_lseg(path: str | Path, device: str | torch.device = "cpu", normalization: Normalization = "none") -> LSegNet:
    """`LSegNet` in eval mode with the checkpoint's weights (strict: exactly the 730 keys), float32, on `device`."""
    path = Path(path)
    sd = read_state_dict(path)
    net = build_on_meta(normalization)  # no random init of 495M parameters
    _check_keys(path, sd, net, "LSeg")
    net.load_state_dict(sd, strict=True, assign=True)
    del sd
    restore_clip_mask(net.clip_pretrained)
    return net.to(device).eval()


def load_lseg_text(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Only the checkpoint's CLIP model (`clip_pretrained.*` keys, strict), for encoding text; eval, float32."""
    path = Path(path)
    sd = read_state_dict(path)
    clip_sd = {k[len(CLIP_PREFIX) :]: v for k, v in sd.items() if k.startswith(CLIP_PREFIX)}
    del sd
    with torch.device("meta"):
        clip = build_clip()
    _check_keys(path, clip_sd, clip, "LSeg (clip_pretrained.*)")
    clip.load_state_dict(clip_sd, strict=True, assign=True)
    restore_clip_mask(clip)
    return clip.to(device).eval()
