"""Atomic file writes: a reader never sees a half-written output, an interrupted write leaves no file."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch

from .errors import UserError


def temp_beside(path: str | Path, suffix: str | None = None) -> Path:
    """A new empty temporary file in `path`'s folder (created if needed), ending in `suffix` (default: `path`'s own,
    so writers that pick the format from the name keep working). One-line `UserError` if the folder is not writable."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{path.suffix if suffix is None else suffix}",
                                   dir=path.parent)  # fmt: skip
    except OSError as e:
        raise UserError(f"{path.parent}: cannot write here ({e.strerror or e})") from None
    os.close(fd)
    return Path(tmp)


def publish(tmp: str | Path, path: str | Path) -> Path:
    """Move a finished temporary into place atomically, with the permissions of an ordinary new file
    (mkstemp makes it 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)
    return Path(path)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path`, on error it is removed."""
    tmp_path = temp_beside(path)
    try:
        yield tmp_path
        publish(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def atomic_write_bytes(data: bytes, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(text: str, path: str | Path) -> None:
    atomic_write_bytes(text.encode(), path)
