"""The background process runner with real subprocesses: output, exit codes, cancel, process-tree kill."""

from __future__ import annotations

import os
import signal
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from SemiSupUncertaintyLib.WorkerProcess import ExitStatus, WorkerProcess

pytestmark = pytest.mark.skipif(os.name == "nt", reason="POSIX signals; Windows uses CTRL_BREAK (not exercised here)")


def script(tmp_path: Path, body: str, name: str = "worker.py") -> list[str]:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return [sys.executable, "-u", str(path)]


def assertGone(pids, timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        alive = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        if not alive:
            return
        time.sleep(0.05)
    raise AssertionError(f"processes left behind: {alive}")


def test_lines_are_queued_and_drained_by_poll_without_blocking(tmp_path):
    args = script(tmp_path, """
        import sys, time
        for i in range(3):
            print('{"event": "iteration", "iteration": %d}' % (i + 1), flush=True)
            print("log line", i, file=sys.stderr, flush=True)
        time.sleep(0.5)
    """)
    worker = WorkerProcess(args, logPath=tmp_path / "worker.log").start()
    t0 = time.monotonic()
    seen = worker.poll()
    assert time.monotonic() - t0 < 0.05  # poll never waits for the process
    while not worker.finished:
        seen += worker.poll()
        time.sleep(0.02)
    assert [s[-2] for s in seen] == ["1", "2", "3"]
    assert list(worker.stderrTail) == ["log line 0", "log line 1", "log line 2"]
    assert worker.outcome() == (ExitStatus.FINISHED, "")
    log = (tmp_path / "worker.log").read_text()
    assert '"iteration": 3' in log and "[stderr] log line 2" in log


@pytest.mark.parametrize(
    "code, status, words",
    [(1, ExitStatus.FAILED, "boom in plain words"), (2, ExitStatus.BAD_INPUT, "boom in plain words"), (3, ExitStatus.CANCELLED, "Cancelled")],
)
def test_exit_codes_map_to_statuses(tmp_path, code, status, words):
    args = script(tmp_path, f"""
        import sys
        print("error: boom in plain words", file=sys.stderr)
        sys.exit({code})
    """)
    worker = WorkerProcess(args).start()
    assert worker.wait(timeout=30) == code
    got, message = worker.outcome()
    assert got == status and words in message


def test_wait_times_out_and_returns_none(tmp_path):
    worker = WorkerProcess(script(tmp_path, "import time; time.sleep(30)")).start()
    t0 = time.monotonic()
    assert worker.wait(timeout=0.3) is None
    assert time.monotonic() - t0 < 2
    os.kill(worker.pid, signal.SIGKILL)  # killed from outside, as the kernel's out-of-memory killer does
    assert worker.wait(timeout=10) == -signal.SIGKILL
    status, message = worker.outcome()
    assert status == ExitStatus.KILLED and "SIGKILL" in message and "memory" in message


def test_kill_reports_killed(tmp_path):
    worker = WorkerProcess(script(tmp_path, "import time; time.sleep(30)")).start()
    worker.kill()
    assert worker.wait(timeout=10) == -signal.SIGKILL
    assert worker.outcome() == (ExitStatus.KILLED, "The worker was killed; resume continues from the last saved checkpoint.")


def test_graceful_cancel_lets_the_worker_finish_its_iteration(tmp_path):
    args = script(tmp_path, """
        import signal, sys, time
        stop = []
        signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
        print('{"event": "start"}', flush=True)
        while not stop:
            time.sleep(0.01)
        print('{"event": "cancelled", "iteration": 1}', flush=True)
        sys.exit(3)
    """)
    worker = WorkerProcess(args).start()
    while not worker.poll():
        time.sleep(0.01)
    t0 = time.monotonic()
    worker.cancel(gracePeriod=10)
    lines = []
    worker.wait(timeout=20, onLine=lines.append)
    assert time.monotonic() - t0 < 5 and worker.returncode == 3 and not worker.killed
    assert '"cancelled"' in lines[-1]
    assert worker.outcome()[0] == ExitStatus.CANCELLED


def test_cancel_kills_the_whole_tree_when_sigterm_is_ignored(tmp_path):
    args = script(tmp_path, """
        import signal, subprocess, sys, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        child = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"])
        print(child.pid, flush=True)
        time.sleep(600)
    """)
    worker = WorkerProcess(args).start()
    lines = []
    while not lines:
        lines = worker.poll()
        time.sleep(0.01)
    child = int(lines[0])
    pids = worker.descendantPids()
    assert child in pids and len(pids) == 2
    t0 = time.monotonic()
    worker.cancel(gracePeriod=0.5)
    worker.wait(timeout=20)
    assert time.monotonic() - t0 < 5
    assert worker.killed and worker.outcome()[0] == ExitStatus.CANCELLED
    assert "killed" in worker.outcome()[1]
    assertGone(pids)


def test_sigterm_reaches_the_interpreter_below_a_launcher(tmp_path):
    """Slicer's PythonSlicer is a launcher that starts the real interpreter as a child.

    The launcher must not get SIGTERM (it would die at once, leaving the worker running
    and losing its exit code); the interpreter must, and the launcher returns its code 3.
    """
    launcher = tmp_path / "PythonSlicer"
    launcher.symlink_to(sys.executable)
    worker_args = script(tmp_path, """
        import signal, sys, time
        stop = []
        signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
        print("ready", flush=True)
        while not stop:
            time.sleep(0.01)
        sys.exit(3)
    """)
    launch = script(tmp_path, f"""
        import subprocess, sys
        sys.exit(subprocess.call({worker_args!r}))
    """, name="launch.py")
    worker = WorkerProcess([str(launcher), *launch[1:]]).start()
    while not worker.poll():
        time.sleep(0.01)
    assert psutil.Process(worker.pid).name() == "PythonSlicer"
    assert worker._gracefulTargets() != [worker.pid]
    worker.cancel(gracePeriod=10)
    assert worker.wait(timeout=20) == 3 and not worker.killed


def test_a_worker_that_cannot_start_says_so(tmp_path):
    from SemiSupUncertaintyLib.WorkerProcess import WorkerError

    with pytest.raises(WorkerError, match="Could not start"):
        WorkerProcess([str(tmp_path / "no-such-python"), "-c", "pass"]).start()


def test_semisup_command_line_and_environment(tmp_path):
    worker = WorkerProcess.semisup(["train", "--run-dir", "r"], python="py", pythonPath=["/core", "/extra"], extraEnv={"X": "1"})
    assert worker.args == ["py", "-u", "-m", "semisup", "train", "--run-dir", "r"]
    assert worker.env["PYTHONPATH"].split(os.pathsep)[:2] == ["/core", "/extra"] and worker.env["X"] == "1"
