"""What a run folder says about its run: trained, interrupted, failed; can it resume or predict.

The run folder is the record of a run (docs/worker-protocol.md); nothing else is
needed to resume or predict, so the module reads the state from there and not from
the scene.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from semisup.protocol import ProgressTracker

__all__ = ["RunInfo", "listRuns", "classNamesOfRun", "classStylesOfRun", "activeWorkerPids"]


@dataclass
class RunInfo:
    path: Path
    state: str = "new"  # new, running-or-interrupted, interrupted, finished, failed
    method: str = ""
    iteration: int = 0
    iterations: int | None = None
    bestDice: float | None = None
    classNames: list[str] = field(default_factory=list)
    errorMessage: str = ""
    hasConfig: bool = False
    hasLast: bool = False
    hasBest: bool = False

    @classmethod
    def read(cls, path: str | Path) -> "RunInfo":
        path = Path(path)
        info = cls(path=path)
        info.hasConfig = (path / "config.yaml").is_file()
        info.hasLast = (path / "checkpoints" / "last.pt").is_file()
        info.hasBest = (path / "checkpoints" / "best.pt").is_file()
        info.classNames = classNamesOfRun(path)
        tracker = ProgressTracker.from_file(path / "progress.jsonl")
        info.method = tracker.method
        info.iteration, info.iterations, info.bestDice = tracker.iteration, tracker.iterations, tracker.best_dice
        if tracker.phase == "done":
            info.state = "finished"
        elif tracker.phase == "failed":
            info.state, info.errorMessage = "failed", tracker.error_message
        elif tracker.phase == "cancelled":
            info.state = "interrupted"
        elif tracker.phase == "training":
            # No final event: killed, crashed, or still running in another process.
            info.state = "running-or-interrupted"
        return info

    @property
    def canResume(self) -> bool:
        return self.hasConfig and self.state != "finished"

    @property
    def canPredict(self) -> bool:
        return self.hasBest or self.hasLast

    def describe(self) -> str:
        dice = f", best Dice {self.bestDice:.3f}" if self.bestDice is not None else ""
        its = f"{self.iteration}/{self.iterations}" if self.iterations else str(self.iteration)
        words = {
            "new": "not trained yet",
            "running-or-interrupted": f"stopped without a final message at iteration {its} (killed or still running)",
            "interrupted": f"cancelled at iteration {its}",
            "finished": f"finished, {its} iterations",
            "failed": f"failed: {self.errorMessage}",
        }[self.state]
        return f"{self.path.name}: {self.method or '?'}, {words}{dice}"


def classNamesOfRun(runDir: str | Path) -> list[str]:
    """Class names (label 1, 2, ...) from the run's ``dataset.json`` ``labels``."""
    path = Path(runDir) / "dataset.json"
    if not path.is_file():
        return []
    try:
        labels = json.loads(path.read_text()).get("labels", {})
    except ValueError:
        return []
    pairs = sorted((int(k), str(v)) for k, v in labels.items() if str(k).isdigit() and int(k) > 0)
    return [name for _, name in pairs]


def classStylesOfRun(runDir: str | Path) -> dict[str, dict]:
    """Colour and terminology per class as the module exported them (``slicer-cases.json``); empty if unknown."""
    path = Path(runDir) / "slicer-cases.json"
    try:
        styles = json.loads(path.read_text()).get("classStyles", {}) if path.is_file() else {}
    except ValueError:
        return {}
    return styles if isinstance(styles, dict) else {}


def listRuns(runsDirectory: str | Path) -> list[RunInfo]:
    """Run folders (those with a ``config.yaml``) in ``runsDirectory``, newest first."""
    root = Path(runsDirectory)
    if not root.is_dir():
        return []
    runs = [RunInfo.read(p) for p in root.iterdir() if (p / "config.yaml").is_file()]
    return sorted(runs, key=lambda r: (r.path / "config.yaml").stat().st_mtime, reverse=True)


def activeWorkerPids(runDir: str | Path) -> list[int]:
    """Processes (other than this one) running ``semisup train`` on ``runDir``: two trainings must not share a folder."""
    try:
        import psutil
    except ImportError:  # pragma: no cover
        return []
    import os

    target = str(Path(runDir).resolve())
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
