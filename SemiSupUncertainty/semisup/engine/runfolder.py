"""Who may write a run folder: one training at a time, never over a trained run.

``train.lock`` in the run folder is created with ``O_EXCL`` and holds the writer's
pid, host name and start time. A lock whose process is gone (killed, crashed) is
stale and taken over; a live one makes the next training refuse, naming the pid.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid
from pathlib import Path
from typing import Any

from ..config import ConfigError

__all__ = ["LOCK_NAME", "RunFolderBusy", "RunLock", "acquire_run_lock", "check_can_train"]

log = logging.getLogger(__name__)

LOCK_NAME = "train.lock"
#: A lock file still empty after this many seconds was left by a process killed
#: between creating and filling it (the two happen microseconds apart).
EMPTY_LOCK_STALE_SECONDS = 10.0


class RunFolderBusy(ConfigError):
    """Another live process is training into the run folder."""


def check_can_train(run_dir: str | Path, resume: bool) -> None:
    """Refuse to start a run over a trained one, before anything is written.

    Without ``resume`` a folder holding ``checkpoints/last.pt`` or ``best.pt`` is
    refused (a new run would overwrite them); with ``resume`` a folder with a
    ``best.pt`` but no ``last.pt`` is refused (there is nothing to continue from,
    and starting over would overwrite ``best.pt``).
    """
    ckpt = Path(run_dir) / "checkpoints"
    found = [n for n in ("last.pt", "best.pt") if (ckpt / n).is_file()]
    if not resume and found:
        raise ConfigError(
            f"{ckpt / found[0]}: the run folder {run_dir} already holds a trained run; continue it with --resume "
            "(with --set train.iterations=N to train longer) or train into a new --run-dir; nothing was changed"
        )
    if resume and found == ["best.pt"]:
        raise ConfigError(
            f"{ckpt / 'last.pt'}: not found, so there is nothing to resume from, and a fresh start would overwrite "
            f"{ckpt / 'best.pt'}; train into a new --run-dir"
        )


def _alive(pid: int, started: float | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    if started is not None:
        try:
            import psutil

            # The pid was reused by a process born after the lock was written.
            if psutil.Process(pid).create_time() > started + 1.0:
                return False
        except Exception:  # psutil missing or the process just ended: keep the safe answer
            pass
    return True


class RunLock:
    """The lock on a run folder; also a progress sink whose ``close`` releases it, so
    the last event of a run is written before another process may take the folder."""

    def __init__(self, path: Path | None, token: str = "") -> None:
        self.path, self.token = path, token

    def emit(self, event: dict[str, Any]) -> None:  # a sink that records nothing
        pass

    def close(self) -> None:
        self.release()

    def release(self) -> None:
        if self.path is None:
            return
        try:
            if json.loads(self.path.read_text()).get("token") == self.token:
                self.path.unlink()
        except (OSError, ValueError):
            pass
        self.path = None

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _holder(path: Path) -> dict[str, Any] | None:
    try:
        text = path.read_text()
        return json.loads(text) if text.strip() else {}
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}


def _is_stale(path: Path, holder: dict[str, Any]) -> bool:
    if not holder:
        try:
            return time.time() - path.stat().st_mtime > EMPTY_LOCK_STALE_SECONDS
        except FileNotFoundError:
            return True
    if holder.get("hostname") != socket.gethostname():
        return False  # another machine's process cannot be checked: assume it lives
    return not _alive(int(holder.get("pid", -1)), holder.get("started"))


def acquire_run_lock(run_dir: str | Path) -> RunLock:
    """Lock ``run_dir`` for this process (re-entrant: a second call in the same
    process returns a handle that releases nothing).

    Raises
    ------
    RunFolderBusy
        A live process holds the lock; the message names its pid, host and start.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_NAME
    host, pid = socket.gethostname(), os.getpid()
    for _ in range(3):
        token = uuid.uuid4().hex
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            holder = _holder(path)
            if holder is None:
                continue  # released meanwhile
            if holder.get("pid") == pid and holder.get("hostname") == host and _alive(pid, holder.get("started")):
                return RunLock(None)  # ours already (a stale lock of an earlier process with our pid is taken over)
            if not _is_stale(path, holder):
                since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder["started"])) if holder.get("started") else "?"
                raise RunFolderBusy(
                    f"{path}: the run folder is being written by process {holder.get('pid', '?')} on "
                    f"{holder.get('hostname', '?')} (since {since}); wait for it or cancel it, or train into a new "
                    "--run-dir (delete the lock file only if that process is surely gone)"
                ) from None
            _take_over(path, holder)
            continue
        with os.fdopen(fd, "w") as fh:
            json.dump({"pid": pid, "hostname": host, "started": time.time(), "token": token}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        return RunLock(path, token)
    raise RunFolderBusy(f"{path}: could not lock the run folder (another process keeps taking it)")


def _take_over(path: Path, holder: dict[str, Any]) -> None:
    """Remove a stale lock, unless another process replaced it meanwhile."""
    # Move it aside first: only one process wins the rename, and the winner checks it
    # moved the stale lock and not a fresh one.
    aside = path.with_name(f".{LOCK_NAME}.{os.getpid()}.{uuid.uuid4().hex[:8]}.stale")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return
    moved = _holder(aside) or {}
    if moved and moved.get("token") != holder.get("token"):
        try:  # a fresh lock: put it back, unless yet another one was made meanwhile (rare)
            os.link(aside, path)
        except FileExistsError:
            pass
        aside.unlink(missing_ok=True)
        return
    log.warning("%s: took over the lock of process %s, which is gone", path, holder.get("pid", "?"))
    aside.unlink(missing_ok=True)
