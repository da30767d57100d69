"""A worker process plus the state read from its progress stream: shared by training and prediction."""

from __future__ import annotations

import logging
import sys
import time
from typing import Callable

from semisup.protocol import Event, ProgressTracker

from .WorkerProcess import ExitStatus, WorkerError, WorkerProcess

__all__ = ["WorkerJob", "slicerIdle"]

log = logging.getLogger("SemiSupUncertainty")


def slicerIdle() -> Callable[[], None] | None:
    """``slicer.app.processEvents`` inside Slicer (keeps the GUI painting while a console call blocks)."""
    slicer = sys.modules.get("slicer")
    app = getattr(slicer, "app", None) if slicer is not None else None
    return app.processEvents if app is not None else None


class WorkerJob:
    """Start, poll (GUI) or wait (console, scripts), cancel; ``status`` and ``errorMessage`` at the end.

    ``onEvent`` is called with every parsed event on the thread that polls/waits.
    Subclasses react to events in :meth:`_onEvent` and build their result in :meth:`_finish`.
    """

    what = "The worker"

    def __init__(self, worker: WorkerProcess, tracker: ProgressTracker | None = None, onEvent: Callable[[Event], None] | None = None, logProgress: bool = False) -> None:
        self.worker = worker
        self.tracker = tracker or ProgressTracker()
        self.onEvent = onEvent
        self.logProgress = logProgress
        self.status = ExitStatus.NOT_STARTED
        self.errorMessage = ""
        self.finishError = ""
        self._finalized = False
        self._lastLog = 0.0

    def start(self) -> "WorkerJob":
        self.worker.start()
        self.status = ExitStatus.RUNNING
        return self

    # -- progress --------------------------------------------------------------
    def _line(self, line: str) -> Event | None:
        event = self.tracker.feed(line)
        if event is None:
            return None
        try:
            self._onEvent(event)
        except Exception as exc:  # a broken import must not kill the poll loop; reported at the end
            log.exception("handling %s event failed", event.name)
            self.finishError = self.finishError or f"{type(exc).__name__}: {exc}"
        if event.name == "warning":  # e.g. one input of a prediction failed while the others went on
            log.warning(self.tracker.warnings[-1])
        if self.onEvent is not None:
            self.onEvent(event)
        if self.logProgress and (time.monotonic() - self._lastLog > 10.0 or event.name not in ("iteration", "checkpoint")):
            self._lastLog = time.monotonic()
            log.info(self.tracker.status_text())
        return event

    def _onEvent(self, event: Event) -> None:
        pass

    def _afterEvents(self) -> None:
        pass

    def _finish(self) -> None:
        pass

    def poll(self) -> list[Event]:
        """Handle what the worker wrote since the last call; never blocks. Call it from the GUI thread."""
        events = [e for e in (self._line(line) for line in self.worker.poll()) if e is not None]
        if events:
            self._afterEvents()
        self._finalizeIfDone()
        return events

    def wait(self, timeout: float | None = None) -> "WorkerJob":
        """Block until the worker has exited (or ``timeout`` seconds passed) and the result is built."""
        self.worker.wait(timeout=timeout, onLine=self._lineAndRefresh, idle=slicerIdle())
        self.poll()
        return self

    def _lineAndRefresh(self, line: str) -> None:
        if self._line(line) is not None:
            self._afterEvents()

    def _finalizeIfDone(self) -> None:
        if self._finalized or not self.worker.finished:
            return
        self._finalized = True
        status, message = self.worker.outcome(self.tracker.error_message, self.what)
        self.status, self.errorMessage = status, message
        try:
            self._finish()
        except Exception as exc:
            log.exception("building the result failed")
            self.finishError = self.finishError or f"{type(exc).__name__}: {exc}"
        if self.finishError and self.status == ExitStatus.FINISHED:
            self.status = ExitStatus.FAILED
            self.errorMessage = f"The worker finished but its results could not be loaded: {self.finishError}"
        if self.logProgress:
            log.info(self.errorMessage or self.tracker.status_text())

    # -- state -----------------------------------------------------------------
    @property
    def finished(self) -> bool:
        return self._finalized

    def isRunning(self) -> bool:
        return self.status == ExitStatus.RUNNING and not self._finalized

    def cancel(self, gracePeriod: float = 10.0) -> None:
        """Graceful stop (the worker saves ``last.pt``); the process tree is killed after ``gracePeriod`` s."""
        self.worker.cancel(gracePeriod=gracePeriod)

    def kill(self) -> None:
        """Kill the worker's process tree now (no checkpoint is written)."""
        self.worker.kill()

    def raiseIfFailed(self) -> None:
        if self.status != ExitStatus.FINISHED:
            raise WorkerError(self.errorMessage or f"{self.what} did not finish ({self.status.value})", self.status, self.worker.returncode)
