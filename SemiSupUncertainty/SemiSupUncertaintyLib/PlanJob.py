"""``semisup plan`` of the exported cases in the background: the planned settings as the result."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from .Parameters import TrainingSettings
from .WorkerJob import WorkerJob
from .WorkerProcess import ExitStatus

__all__ = ["PlanJob", "PlanResult"]


@dataclass
class PlanResult:
    """What ``semisup plan`` wrote for the selected cases.

    ``planPath`` is the editable YAML (one comment per rule saying why); ``settings``
    are its values as the panel shows them; ``config`` the whole plan (spacing,
    foreground sampling, schedule and inference too), the base of the training config.
    """

    runDir: Path
    planPath: Path
    settings: TrainingSettings
    config: dict[str, Any] = field(default_factory=dict)
    fingerprintPath: Path | None = None


def readPlan(planPath: str | Path) -> tuple[dict[str, Any], TrainingSettings]:
    """The plan's configuration and the settings it sets (raises ``ValueError`` on a file that is no plan)."""
    import yaml

    planPath = Path(planPath)
    config = yaml.safe_load(planPath.read_text())
    if not isinstance(config, dict) or not isinstance(config.get("train"), dict):
        raise ValueError(f"{planPath} is not a run configuration written by 'semisup plan'")
    return config, TrainingSettings.fromConfig(config)


class PlanJob(WorkerJob):
    what = "The planning process"

    def __init__(self, worker, runDir: str | Path, planPath: str | Path, removeAfterSuccess: Sequence[Path] = (), **kwargs) -> None:
        super().__init__(worker, **kwargs)
        self.runDir = Path(runDir)
        self.planPath = Path(planPath)
        # The exported volumes: the plan and its fingerprint keep what was measured, and
        # training exports the cases again, so a copy of every volume per plan is not kept.
        self.removeAfterSuccess = [Path(p) for p in removeAfterSuccess]
        self.result: PlanResult | None = None

    def _finish(self) -> None:
        if not self.planPath.exists():
            if self.status == ExitStatus.FINISHED:  # exit 0 without its output: never silently "planned"
                self.finishError = f"the planning process wrote no {self.planPath}"
            return  # failed or cancelled: the worker's message says why
        config, settings = readPlan(self.planPath)
        fingerprint = self.planPath.with_name(self.planPath.stem + "_fingerprint.json")
        self.result = PlanResult(self.runDir, self.planPath, settings, config, fingerprint if fingerprint.exists() else None)
        for folder in self.removeAfterSuccess:
            shutil.rmtree(folder, ignore_errors=True)
