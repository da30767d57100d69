"""A stop request (SIGTERM, SIGINT, SIGBREAK) before training's own handlers are in place.

Installed by ``python -m semisup`` before the heavy imports (torch takes seconds), so a
front end cancelling a worker that is still starting gets a ``cancelled`` event and
exit code 3, as it does during training, instead of a signal death or a traceback.
The training loop installs its own graceful handlers (finish the iteration, write
``last.pt``) and restores these afterwards.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from typing import Any

__all__ = ["StartupCancelled", "install_cancel_handlers", "restore_handlers", "cancelled_line", "report_early_cancel"]


class StartupCancelled(BaseException):
    """A stop was requested before training (or prediction) started its work.

    A ``BaseException``, like ``KeyboardInterrupt``: ``except Exception`` in library
    code must not swallow a cancel.
    """


def _signals() -> list[int]:
    # SIGBREAK: what a front end on Windows sends (CTRL_BREAK_EVENT) to ask for a stop.
    return [signal.SIGTERM, signal.SIGINT] + ([signal.SIGBREAK] if hasattr(signal, "SIGBREAK") else [])


def _ignore(signum: int, frame: Any) -> None:
    pass


def _raise(signum: int, frame: Any) -> None:
    for sig in _signals():  # a second request must not interrupt the way out
        signal.signal(sig, _ignore)
    raise StartupCancelled(f"stopped by {signal.Signals(signum).name} outside the training loop (while starting or writing results)")


def install_cancel_handlers() -> dict[int, Any]:
    """Make a stop signal raise :class:`StartupCancelled` in the main thread; return the
    previous handlers (for :func:`restore_handlers`)."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    previous = {sig: signal.getsignal(sig) for sig in _signals()}
    for sig in previous:
        signal.signal(sig, _raise)
    return previous


def restore_handlers(previous: dict[int, Any]) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)


def cancelled_line(reason: str) -> str:
    """The ``cancelled`` progress event as a JSON line, for when no emitter exists yet."""
    return json.dumps({"event": "cancelled", "time": round(time.time(), 3), "iteration": None, "checkpoint": None, "reason": reason})


def report_early_cancel(exc: StartupCancelled, argv: list[str]) -> int:
    """Write the ``cancelled`` event for a stop during the imports; return exit code 3."""
    from .exit_codes import EXIT_CANCELLED

    if "bar" not in argv and "none" not in argv and not sys.stdout.isatty():
        print(cancelled_line(str(exc)), flush=True)
    print(f"cancelled: {exc}", file=sys.stderr)
    return EXIT_CANCELLED
