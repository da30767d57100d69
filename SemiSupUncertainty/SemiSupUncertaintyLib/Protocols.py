"""The interfaces the widget depends on; tests and other front ends can pass their own implementations."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

__all__ = ["JobProtocol", "LogicProtocol", "InstallLogicProtocol"]


@runtime_checkable
class JobProtocol(Protocol):
    """A running plan, training or prediction (:class:`PlanJob`, :class:`TrainingJob`, :class:`PredictionJob`)."""

    tracker: Any  # ProgressTracker
    status: Any  # ExitStatus
    errorMessage: str
    result: Any

    def poll(self) -> list: ...

    def wait(self, timeout: float | None = None) -> Any: ...

    def cancel(self, gracePeriod: float = 10.0) -> None: ...

    def kill(self) -> None: ...

    def isRunning(self) -> bool: ...

    @property
    def finished(self) -> bool: ...


@runtime_checkable
class LogicProtocol(Protocol):
    """What the widget asks of the logic (:class:`SemiSupUncertaintyLogic`)."""

    runsDirectory: Path

    def pairSegmentationsWithVolumes(self) -> list[tuple]: ...

    def defaultUnlabeledVolumes(self, labeledPairs: Sequence[tuple]) -> list: ...

    def checkInputs(self, labeledPairs: Sequence[tuple], unlabeledVolumes: Sequence = (), classNames: Sequence[str] | None = None) -> list[str]: ...

    def plan(self, labeledPairs: Sequence[tuple], unlabeledVolumes: Sequence | None = None, runDir: str | Path | None = None, **kwargs: Any) -> Any: ...

    def train(self, labeledPairs: Sequence[tuple], unlabeledVolumes: Sequence | None = None, runDir: str | Path | None = None, **kwargs: Any) -> Any: ...

    def resume(self, runDir: str | Path, **kwargs: Any) -> Any: ...

    def predict(self, runDir: str | Path, volumes: Any, **kwargs: Any) -> Any: ...

    def listRuns(self, runsDirectory: str | Path | None = None) -> list: ...

    def newRunDir(self, method: str = "run", name: str | None = None, runsDirectory: str | Path | None = None) -> Path: ...

    def deviceInfo(self, timeout: float = 180.0) -> Any: ...


@runtime_checkable
class InstallLogicProtocol(Protocol):
    def isReady(self) -> bool: ...

    def describeMissing(self) -> str: ...

    def setupPythonRequirements(self, askConfirmation: bool = True) -> bool: ...


DeviceCallback = Callable[[Any], None]
