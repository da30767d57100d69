"""The background worker: a ``python -m semisup ...`` process, its output and its end.

Follows docs/worker-protocol.md and the pattern of SlicerMONAIAuto3DSeg's process
runner: reader threads queue the worker's stdout (JSON lines) and stderr (human
messages); :meth:`WorkerProcess.poll` drains them on the caller's thread (a
``qt.QTimer`` in the widget, a loop in :meth:`WorkerProcess.wait` for scripts), so
the GUI thread never blocks on a pipe. Cancel sends SIGTERM to the worker (it
finishes the current iteration, writes ``last.pt`` and exits with 3); if it has not
exited after a grace period, the whole process tree is killed with psutil, since
killing only a launcher leaves the real interpreter running.
"""

from __future__ import annotations

import atexit
import collections
import logging
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path
from typing import Callable, Iterable, Sequence

from semisup.protocol import ExitStatus, explain_exit

__all__ = [
    "ExitStatus",
    "WorkerError",
    "WorkerProcess",
    "defaultPythonExecutable",
    "workerEnvironment",
    "windowsCreationFlags",
]

log = logging.getLogger(__name__)

#: Executables that start the real interpreter as a child (Slicer's launcher):
#: a graceful SIGTERM must reach the child, and the launcher then exits with its code.
LAUNCHER_NAMES = {"pythonslicer", "pythonslicer.exe", "slicer", "slicer.exe"}


class WorkerError(RuntimeError):
    """The worker did not finish: ``status`` says how, the message says why in plain words."""

    def __init__(self, message: str, status: ExitStatus = ExitStatus.FAILED, returncode: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.returncode = returncode


def _inSlicerApplication() -> bool:
    slicer = sys.modules.get("slicer")
    return slicer is not None and getattr(slicer, "app", None) is not None


def defaultPythonExecutable() -> str:
    """Slicer's own Python (``PythonSlicer`` launcher) inside Slicer, else this interpreter."""
    if _inSlicerApplication():
        found = shutil.which("PythonSlicer")
        if found:
            return found
    return sys.executable


def workerEnvironment(pythonPath: Iterable[str | Path] = (), extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for the worker: Slicer's startup environment in Slicer, else ours; ``PYTHONPATH`` prepended."""
    env = None
    if _inSlicerApplication():
        try:
            import slicer

            env = dict(slicer.util.startupEnvironment())
        except Exception:  # pragma: no cover - older Slicer
            env = None
    env = dict(os.environ) if env is None else env
    paths = [str(p) for p in pythonPath]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    if paths:
        env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("PYTHONIOENCODING", "utf-8")
    env.update(extra or {})
    return env


#: Windows process creation flags (Win32 API, "Process Creation Flags"); subprocess defines
#: them only on Windows.
CREATE_NEW_PROCESS_GROUP = 0x00000200
CREATE_NO_WINDOW = 0x08000000


def windowsCreationFlags(newProcessGroup: bool = True, osName: str | None = None) -> int:
    """``creationflags`` for a worker (or, without a process group, the device check); 0 off Windows.

    ``CREATE_NO_WINDOW``: no console window pops up for a console program started from
    Slicer's GUI, which is what ``slicer.util.launchConsoleProcess`` achieves with
    ``STARTUPINFO``/``SW_HIDE`` (Base/Python/slicer/util.py). ``CREATE_NEW_PROCESS_GROUP``:
    a CTRL_BREAK for the worker does not reach Slicer.
    """
    if (osName or os.name) != "nt":
        return 0
    return CREATE_NO_WINDOW | (CREATE_NEW_PROCESS_GROUP if newProcessGroup else 0)


_running: "weakref.WeakSet[WorkerProcess]" = weakref.WeakSet()


@atexit.register
def _killLeftovers() -> None:  # pragma: no cover - runs at interpreter exit
    for worker in list(_running):
        try:
            worker.kill()
        except Exception:
            pass


class WorkerProcess:
    """One worker process. Use :meth:`poll` (non-blocking) or :meth:`wait` (blocking).

    Parameters
    ----------
    args:
        Full command line, interpreter first.
    env, cwd:
        Environment and working folder of the worker.
    logPath:
        When given, every stdout and stderr line is also appended there.
    stderrLines:
        How many stderr lines to keep for error messages.
    cancelFile:
        For a training: ``<run>/cancel.request``, the stop request every platform
        honours (see :meth:`cancel`).
    """

    def __init__(
        self,
        args: Sequence[str],
        env: dict[str, str] | None = None,
        cwd: str | Path | None = None,
        logPath: str | Path | None = None,
        stderrLines: int = 200,
        cancelFile: str | Path | None = None,
    ) -> None:
        self.args = [str(a) for a in args]
        self.env = env
        self.cwd = str(cwd) if cwd is not None else None
        self.logPath = Path(logPath) if logPath else None
        self.cancelFile = Path(cancelFile) if cancelFile else None
        self.stderrTail: collections.deque[str] = collections.deque(maxlen=stderrLines)
        self.process: subprocess.Popen | None = None
        self.cancelRequested = False
        self.killed = False
        self._queue: queue.Queue = queue.Queue()
        self._readers: list[threading.Thread] = []
        self._openStreams = 0
        self._cancelDeadline: float | None = None
        self._exitTime: float | None = None
        self._log = None

    @classmethod
    def semisup(
        cls,
        commandArgs: Sequence[str],
        python: str | None = None,
        pythonPath: Iterable[str | Path] = (),
        module: str = "semisup",
        extraEnv: dict[str, str] | None = None,
        **kwargs,
    ) -> "WorkerProcess":
        """``<python> -u -m semisup <commandArgs>`` with the core library on ``PYTHONPATH``."""
        python = python or defaultPythonExecutable()
        return cls([python, "-u", "-m", module, *commandArgs], env=workerEnvironment(pythonPath, extraEnv), **kwargs)

    # -- starting --------------------------------------------------------------
    def start(self) -> "WorkerProcess":
        if self.process is not None:
            raise RuntimeError("worker already started")
        kwargs = {"creationflags": windowsCreationFlags()} if os.name == "nt" else {}  # Popen refuses the argument elsewhere
        if self.cancelFile is not None:
            self.cancelFile.unlink(missing_ok=True)  # a stale request must not stop the new attempt
        if self.logPath is not None:
            self.logPath.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(self.logPath, "a", encoding="utf-8")
            self._log.write(f"$ {' '.join(self.args)}\n")
        try:
            self.process = subprocess.Popen(
                self.args,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=self.env,
                cwd=self.cwd,
                text=True,
                encoding="utf-8",
                errors="replace",
                bufsize=1,
                **kwargs,
            )
        except OSError as exc:
            self._closeLog()
            raise WorkerError(f"Could not start the worker process {self.args[0]!r}: {exc}", ExitStatus.FAILED) from None
        _running.add(self)
        for name, stream in (("out", self.process.stdout), ("err", self.process.stderr)):
            thread = threading.Thread(target=self._read, args=(name, stream), name=f"semisup-{name}-{self.process.pid}", daemon=True)
            thread.start()
            self._readers.append(thread)
        self._openStreams = 2
        return self

    def _read(self, name: str, stream) -> None:
        try:
            for line in iter(stream.readline, ""):
                self._queue.put((name, line.rstrip("\r\n")))
        except (OSError, ValueError):
            pass
        finally:
            self._queue.put((name, None))

    # -- reading ---------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def returncode(self) -> int | None:
        return self.process.returncode if self.process is not None else None

    def _handle(self, item, out: list[str]) -> None:
        name, line = item
        if line is None:
            self._openStreams -= 1
            return
        if self._log is not None:
            self._log.write(("" if name == "out" else "[stderr] ") + line + "\n")
        if name == "out":
            out.append(line)
        else:
            self.stderrTail.append(line)

    def poll(self) -> list[str]:
        """Stdout lines that arrived since the last call; never blocks. Also enforces the cancel deadline."""
        out: list[str] = []
        while True:
            try:
                self._handle(self._queue.get_nowait(), out)
            except queue.Empty:
                break
        self._checkExit()
        return out

    def _checkExit(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is not None:
            if self._exitTime is None:
                self._exitTime = time.monotonic()
                _running.discard(self)
        elif self._cancelDeadline is not None and time.monotonic() > self._cancelDeadline:
            log.warning("worker %s did not stop within the grace period: killing its process tree", self.pid)
            self.kill()
        if self.finished:
            self._closeLog()

    @property
    def finished(self) -> bool:
        """The process has exited and its output has been read (or a grandchild holds the pipes too long)."""
        if self.process is None or self._exitTime is None:
            return False
        return self._openStreams <= 0 or time.monotonic() - self._exitTime > 2.0

    def isRunning(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait(self, timeout: float | None = None, onLine: Callable[[str], None] | None = None, idle: Callable[[], None] | None = None) -> int | None:
        """Block until the worker has exited and its output is read; ``onLine`` gets each stdout line.

        ``idle`` is called between reads (e.g. ``slicer.app.processEvents``). Returns the
        exit code, or ``None`` when ``timeout`` passed first.
        """
        if self.process is None:
            raise RuntimeError("worker not started")
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            lines = self.poll()
            if onLine is not None:
                for line in lines:
                    onLine(line)
            if self.finished:
                return self.returncode
            if end is not None and time.monotonic() >= end:
                return None
            if idle is not None:
                idle()
            try:
                item = self._queue.get(timeout=0.05 if idle is not None else 0.2)
            except queue.Empty:
                continue
            out: list[str] = []
            self._handle(item, out)
            if onLine is not None:
                for line in out:
                    onLine(line)

    # -- stopping --------------------------------------------------------------
    def _gracefulTargets(self) -> list[int]:
        """The process(es) that must receive SIGTERM: the worker, or the real interpreter below a launcher."""
        pid = self.pid
        try:
            import psutil

            root = psutil.Process(pid)
            if root.name().lower() in LAUNCHER_NAMES:
                children = root.children(recursive=False)
                if children:
                    return [c.pid for c in children]
        except ImportError:
            pass
        except Exception:  # process already gone
            pass
        return [pid]

    def cancel(self, gracePeriod: float = 10.0, wait: bool = False) -> None:
        """Ask the worker to stop; kill the whole tree if it has not exited after ``gracePeriod`` s.

        The request is the cancel file where there is one (a training: the trainer
        checks it after every iteration, on every platform), plus a signal: SIGTERM on
        POSIX, CTRL_BREAK (the worker's SIGBREAK) on Windows. From Slicer's GUI process,
        which has no console, and to a worker started with ``CREATE_NO_WINDOW``, which has
        its own, ``GenerateConsoleCtrlEvent`` cannot deliver CTRL_BREAK; the file still
        stops the training gracefully there. Non-blocking by default: the deadline is
        enforced by :meth:`poll`/:meth:`wait`.
        """
        if not self.isRunning():
            return
        self.cancelRequested = True
        if self.cancelFile is not None:
            try:
                self.cancelFile.parent.mkdir(parents=True, exist_ok=True)
                self.cancelFile.write_text(f"cancel requested by process {os.getpid()}\n")
            except OSError as exc:
                log.warning("could not write the cancel request %s: %s", self.cancelFile, exc)
        try:
            self._signalStop()
        except OSError as exc:
            if self.cancelFile is None:
                log.warning("could not signal the worker (%s): killing it", exc)
                self.kill()
                return
            log.info("could not signal the worker (%s); it stops on the cancel request file", exc)
        self._cancelDeadline = time.monotonic() + gracePeriod
        if wait:
            self.wait(timeout=gracePeriod + 5.0)

    def _signalStop(self) -> None:
        if os.name == "nt":  # pragma: no cover - Windows
            self.process.send_signal(signal.CTRL_BREAK_EVENT)  # the worker's SIGBREAK (engine/trainer.py)
            return
        for pid in self._gracefulTargets():
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        """Kill the worker and every process it started, now (children first)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.killed = True
        try:
            import psutil

            try:
                descendants = psutil.Process(self.process.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                descendants = []
            for proc in descendants:
                try:
                    proc.kill()
                except psutil.NoSuchProcess:
                    pass
            # The root is killed and reaped through Popen, not psutil: psutil would reap it
            # first and Popen would then report exit code 0 instead of -9.
            try:
                self.process.kill()
            except OSError:
                pass
            psutil.wait_procs(descendants, timeout=5)
        except ImportError:  # pragma: no cover - psutil is a declared dependency
            log.warning("psutil is not installed: only the worker itself is killed, not processes it started")
            try:
                self.process.kill()
            except OSError:
                pass
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:  # pragma: no cover
            pass
        self._cancelDeadline = None
        self._checkExit()

    def descendantPids(self) -> list[int]:
        """The worker and every process below it that is still alive (for tests and diagnostics)."""
        if self.process is None:
            return []
        import psutil

        try:
            root = psutil.Process(self.process.pid)
            procs = [root] + root.children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        return [p.pid for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]

    def _closeLog(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    # -- outcome ---------------------------------------------------------------
    def outcome(self, errorMessage: str = "", what: str = "The worker") -> tuple[ExitStatus, str]:
        """Status and plain-words message once finished (``RUNNING`` before)."""
        if self.process is None:
            return ExitStatus.NOT_STARTED, ""
        if not self.finished:
            return ExitStatus.RUNNING, ""
        return explain_exit(self.returncode, errorMessage, list(self.stderrTail), self.cancelRequested, self.killed, what)
