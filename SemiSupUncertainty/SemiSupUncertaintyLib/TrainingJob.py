"""A training run in the background: progress, optional live chart, result."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .ProgressChart import ProgressChart
from .WorkerJob import WorkerJob
from .WorkerProcess import ExitStatus

__all__ = ["TrainingJob", "TrainingResult"]


@dataclass
class TrainingResult:
    runDir: Path
    status: ExitStatus
    iteration: int
    iterations: int | None
    bestDice: float | None
    bestCheckpoint: str
    lastCheckpoint: str
    message: str = ""


class TrainingJob(WorkerJob):
    what = "The training process"

    def __init__(self, worker, runDir: str | Path, chart: ProgressChart | None = None, **kwargs) -> None:
        super().__init__(worker, **kwargs)
        self.runDir = Path(runDir)
        self.chart = chart
        self.result: TrainingResult | None = None
        if chart is not None:
            chart.update(self.tracker)

    def _afterEvents(self) -> None:
        if self.chart is not None:
            self.chart.update(self.tracker)

    def _finish(self) -> None:
        t = self.tracker
        best = t.best_checkpoint or (str(self.runDir / "checkpoints" / "best.pt") if (self.runDir / "checkpoints" / "best.pt").exists() else "")
        last = t.last_checkpoint or (str(self.runDir / "checkpoints" / "last.pt") if (self.runDir / "checkpoints" / "last.pt").exists() else "")
        self.result = TrainingResult(self.runDir, self.status, t.iteration, t.iterations, t.best_dice, best, last, self.errorMessage)
