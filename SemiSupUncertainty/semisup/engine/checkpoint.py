"""Checkpoints: atomic writes, safe loading, integrity checks, clear errors for bad files.

Every checkpoint carries a SHA-256 checksum of its tensors (``tensor_checksum``),
verified on load, so a bit flip or an edited tensor is refused rather than loaded;
the weights must also be finite.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import re
import uuid
import zipfile
from pathlib import Path
from typing import Any

import torch

from .._version import __version__

__all__ = [
    "CHECKPOINT_FORMAT",
    "CheckpointError",
    "save_checkpoint",
    "load_checkpoint",
    "tensor_checksum",
    "remove_stale_temporaries",
]

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "semisup-checkpoint/1"
#: Key of the checksum inside a checkpoint; files written before it existed have none.
CHECKSUM_KEY = "checksum_sha256"
#: Temporary files are ``.<name>.<pid>.<random>.tmp`` beside the checkpoint.
_TMP_GLOB = ".*.tmp"


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt, untrusted or from an incompatible version."""


def _tensors(value: Any, prefix: str = ""):
    """``(key path, tensor)`` for every tensor in nested dicts/lists, in a stable order."""
    if torch.is_tensor(value):
        yield prefix, value
    elif isinstance(value, dict):
        for key in sorted(value, key=str):
            yield from _tensors(value[key], f"{prefix}/{key}")
    elif isinstance(value, (list, tuple)):
        for n, item in enumerate(value):
            yield from _tensors(item, f"{prefix}/{n}")


def tensor_checksum(state: dict[str, Any]) -> str:
    """SHA-256 over every tensor's key path, dtype, shape and bytes (checksum key excluded)."""
    digest = hashlib.sha256()
    for key, tensor in _tensors({k: v for k, v in state.items() if k != CHECKSUM_KEY}):
        t = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{key}|{t.dtype}|{tuple(tensor.shape)}|".encode())
        # A byte view works for every dtype (bfloat16 has no numpy counterpart).
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` (tensors, numbers, strings, lists, dicts) atomically, with a checksum.

    The file appears complete or not at all: a process killed mid-write leaves the
    previous checkpoint untouched (and a ``.tmp`` file that the next training start
    removes). The file gets the usual permissions of the user's umask.

    Raises
    ------
    OSError
        The folder is not writable or the disk is full; the message names the path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": CHECKPOINT_FORMAT, "version": __version__, **state}
    payload[CHECKSUM_KEY] = tensor_checksum(payload)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        # os.open with 0o666 lets the umask decide, as for any file the user writes
        # (tempfile.mkstemp would force 0600).
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as fh:
            torch.save(payload, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        # torch wraps a failed write (full disk) in a RuntimeError; name the checkpoint in it.
        cause = exc if isinstance(exc, OSError) else exc.__cause__ or exc.__context__ if isinstance(exc, RuntimeError) else None
        if isinstance(cause, OSError) and cause.errno is not None:
            raise OSError(cause.errno, cause.strerror, str(path)) from None
        raise
    return path


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete ``.tmp`` files that killed checkpoint writes left in ``folder``.

    Only call this while holding the run folder's lock (engine/runlock.py): another
    process's write in progress would otherwise lose its file.
    """
    removed = []
    for tmp in Path(folder).glob(_TMP_GLOB):
        if tmp.is_file():
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    if removed:
        log.info("removed %d unfinished checkpoint file(s) left by a killed write in %s", len(removed), folder)
    return removed


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``: no arbitrary code runs from the file.

    The checksum of its tensors must match and its weights (``method``) must be finite.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        what = f" ({found.group(1)})" if found else ""
        raise CheckpointError(
            f"{path}: refused to load: the file holds a Python object{what} besides tensors and plain data; "
            "a semisup checkpoint never does, so it was not written by semisup or has been altered"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as exc:
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint ({exc.__class__.__name__}: {exc})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a semisup checkpoint (expected format {CHECKPOINT_FORMAT!r})")
    stored = state.pop(CHECKSUM_KEY, None)
    if stored is None:
        log.warning("%s: has no checksum (written before checkpoints carried one); its tensors are not verified", path)
    elif stored != tensor_checksum(state):
        raise CheckpointError(
            f"{path}: checksum mismatch: its tensors changed after it was written (disk or copy error, or an edit); "
            "use another checkpoint (last.pt or best.pt) or retrain"
        )
    for key, tensor in _tensors(state.get("method", {}), "method"):
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"{path}: weights {key} hold NaN or infinite values: the model is unusable")
    return state
