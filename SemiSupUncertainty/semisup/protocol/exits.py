"""Exit codes of every ``semisup`` command and what a front end tells a person about them."""

from __future__ import annotations

import enum
import re
import signal
from typing import Sequence

__all__ = ["EXIT_OK", "EXIT_ERROR", "EXIT_BAD_INPUT", "EXIT_CANCELLED", "ExitStatus", "explain_exit", "LAUNCHER_CRASH"]

EXIT_OK = 0  # finished
EXIT_ERROR = 1  # unexpected failure
EXIT_BAD_INPUT = 2  # configuration, data or checkpoint problem, named in the message
EXIT_CANCELLED = 3  # stopped on request, last.pt written

#: What Slicer's ``PythonSlicer`` launcher (CTK AppLauncher, Base/ctkAppLauncher.cpp,
#: ``applicationFinished``) writes when the interpreter it started dies of a signal;
#: the launcher then exits with 1, so the signal number is lost.
LAUNCHER_CRASH = re.compile(r"\] exit abnormally")

_OOM_ADVICE = "most often because the computer ran out of memory: lower the patch size or the batch sizes"


class ExitStatus(enum.Enum):
    NOT_STARTED = "not started"
    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"
    BAD_INPUT = "bad input"
    CANCELLED = "cancelled"
    KILLED = "killed"


#: Exit code of a script that reports a worker's outcome (docs/worker-protocol.md).
STATUS_EXIT_CODES = {
    ExitStatus.FINISHED: EXIT_OK,
    ExitStatus.FAILED: EXIT_ERROR,
    ExitStatus.KILLED: EXIT_ERROR,
    ExitStatus.BAD_INPUT: EXIT_BAD_INPUT,
    ExitStatus.CANCELLED: EXIT_CANCELLED,
}


def explain_exit(
    returncode: int | None,
    error_message: str = "",
    stderr_tail: Sequence[str] = (),
    cancel_requested: bool = False,
    killed: bool = False,
    what: str = "The worker",
) -> tuple[ExitStatus, str]:
    """A worker's exit code and last words to a status and a message for a person."""
    if returncode is None:
        return ExitStatus.RUNNING, ""
    if returncode == EXIT_OK:
        return ExitStatus.FINISHED, ""
    if returncode == EXIT_CANCELLED or cancel_requested:
        if killed:
            return ExitStatus.CANCELLED, f"{what} did not stop in time and was killed; resume continues from the last saved checkpoint."
        return ExitStatus.CANCELLED, "Cancelled; resume continues from the last saved checkpoint."
    message = error_message.strip()
    tail = [line.rstrip() for line in stderr_tail if line.strip()]
    if returncode < 0:  # ended by a signal: no exit code, maybe no message
        if killed:
            return ExitStatus.KILLED, f"{what} was killed; resume continues from the last saved checkpoint."
        text = f"{what} was stopped by the system ({_signal_name(-returncode)})"
        if -returncode == getattr(signal, "SIGKILL", 9):
            text += f", {_OOM_ADVICE}"
        return ExitStatus.KILLED, text + "." + (f" Last message: {message}" if message else "")
    if not message and any(LAUNCHER_CRASH.search(line) for line in tail):
        return ExitStatus.KILLED, f"{what} was stopped abruptly (Slicer's Python launcher reports that Python exited abnormally), {_OOM_ADVICE}."
    status = ExitStatus.BAD_INPUT if returncode == EXIT_BAD_INPUT else ExitStatus.FAILED
    if not message and tail:
        message = _message_from_stderr(tail)
    if not message:
        message = f"{what} stopped unexpectedly (exit code {returncode}) without an error message."
    if "No module named" in message and any(name in message for name in ("semisup", "torch", "monai")):
        message += " The Python packages the training needs are missing: click 'Install dependencies'."
    return status, message


def _message_from_stderr(tail: list[str]) -> str:
    for line in reversed(tail):  # a Python traceback ends with "SomeError: what happened"
        stripped = line.strip()
        if stripped.startswith("error:"):
            return stripped[len("error:") :].strip()
        head = stripped.split(":", 1)[0]
        if ":" in stripped and (head.endswith("Error") or head.endswith("Exception")) and " " not in head:
            return stripped
    return tail[-1].strip()


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"

#: A file in the run folder that asks a running training to stop after the current
#: iteration (as SIGTERM does): the way to cancel where no signal can reach the worker.
CANCEL_FILE = "cancel.request"
