"""What a run folder says about its run: trained, interrupted, failed; can it resume or predict.

The run folder is the record of a run (docs/worker-protocol.md): its state is read
from ``progress.jsonl``, ``config.yaml``, the checkpoints and ``dataset.json``, so any
front end knows it without having watched the run.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from .tracker import ProgressTracker

__all__ = ["RunInfo", "list_runs", "class_names_of_run", "active_worker_pids"]

#: Run states and how they read.
STATES = ("new", "running-or-interrupted", "interrupted", "finished", "failed")


@dataclass
class RunInfo:
    path: Path
    state: str = "new"  # one of STATES
    method: str = ""
    iteration: int = 0
    iterations: int | None = None
    best_dice: float | None = None
    class_names: list[str] = field(default_factory=list)
    error_message: str = ""
    has_config: bool = False
    has_last: bool = False
    has_best: bool = False

    @classmethod
    def read(cls, path: str | Path) -> "RunInfo":
        path = Path(path)
        info = cls(path=path)
        info.has_config = (path / "config.yaml").is_file()
        info.has_last = (path / "checkpoints" / "last.pt").is_file()
        info.has_best = (path / "checkpoints" / "best.pt").is_file()
        info.class_names = class_names_of_run(path)
        tracker = ProgressTracker.from_file(path / "progress.jsonl")
        info.method = tracker.method
        info.iteration, info.iterations, info.best_dice = tracker.iteration, tracker.iterations, tracker.best_dice
        phase_state = {"done": "finished", "failed": "failed", "cancelled": "interrupted", "training": "running-or-interrupted"}
        info.state = phase_state.get(tracker.phase, "new")  # training without a final event: killed, crashed, or running
        if info.state == "failed":
            info.error_message = tracker.error_message
        return info

    @property
    def can_resume(self) -> bool:
        return self.has_config and self.state != "finished"

    @property
    def can_predict(self) -> bool:
        return self.has_best or self.has_last

    def describe(self) -> str:
        dice = f", best Dice {self.best_dice:.3f}" if self.best_dice is not None else ""
        its = f"{self.iteration}/{self.iterations}" if self.iterations else str(self.iteration)
        words = {
            "new": "not trained yet",
            "running-or-interrupted": f"stopped without a final message at iteration {its} (killed or still running)",
            "interrupted": f"cancelled at iteration {its}",
            "finished": f"finished, {its} iterations",
            "failed": f"failed: {self.error_message}",
        }[self.state]
        return f"{self.path.name}: {self.method or '?'}, {words}{dice}"


def class_names_of_run(run_dir: str | Path) -> list[str]:
    """Class names (label 1, 2, ...) from the run's ``dataset.json`` ``labels``."""
    path = Path(run_dir) / "dataset.json"
    if not path.is_file():
        return []
    try:
        labels = json.loads(path.read_text()).get("labels", {})
    except ValueError:
        return []
    pairs = sorted((int(k), str(v)) for k, v in labels.items() if str(k).isdigit() and int(k) > 0)
    return [name for _, name in pairs]


def list_runs(runs_directory: str | Path) -> list[RunInfo]:
    """Run folders (those with a ``config.yaml``) in ``runs_directory``, newest first."""
    root = Path(runs_directory)
    if not root.is_dir():
        return []
    runs = [RunInfo.read(p) for p in root.iterdir() if (p / "config.yaml").is_file()]
    return sorted(runs, key=lambda r: (r.path / "config.yaml").stat().st_mtime, reverse=True)


def active_worker_pids(run_dir: str | Path) -> list[int]:
    """Processes (other than this one) running ``semisup train`` on ``run_dir``: two trainings must not share a folder."""
    try:
        import psutil
    except ImportError:  # pragma: no cover - a declared dependency
        return []
    target = str(Path(run_dir).resolve())
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            cmd = proc.info["cmdline"] or []
        except (psutil.Error, KeyError):
            continue
        if proc.info["pid"] == os.getpid() or "train" not in cmd or "--run-dir" not in cmd:
            continue
        i = cmd.index("--run-dir")
        if i + 1 < len(cmd):
            try:
                if str(Path(cmd[i + 1]).resolve()) == target:
                    found.append(proc.info["pid"])
            except OSError:
                continue
    return found
