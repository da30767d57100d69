"""What the widget, the Python console and the headless scripts share.

Console use (inside Slicer; ``wait=True`` blocks until done and returns the result,
raising :class:`WorkerError` when the worker fails or is cancelled)::

    from SemiSupUncertaintyLib import SemiSupUncertaintyLogic
    logic = SemiSupUncertaintyLogic()
    pairs = logic.pairSegmentationsWithVolumes()
    trained = logic.train(pairs, iterations=1000, method="uamt")
    result = logic.predict(trained.runDir, [slicer.util.getNode("CT5")])
    result.segmentations[0], result.uncertainties[0], result.table

With ``wait=False`` the same calls return a job at once; call ``job.poll()``
periodically (the widget does it from a ``qt.QTimer``), ``job.cancel()`` to stop.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from .DeviceInfo import DeviceInfo, queryDeviceInfo
from .Parameters import TrainingSettings
from .PlanJob import PlanJob, PlanResult, readPlan
from .Paths import coreLibraryParent, ensureCoreLibraryOnPath
from .PredictionJob import PredictionJob, PredictionResult
from .ProgressChart import ProgressChart
from .RunFolder import classStylesOfRun
from .SceneExporter import InputError, SceneExporter
from .SceneImporter import SceneImporter
from .TrainingJob import TrainingJob, TrainingResult
from .WorkerProcess import WorkerProcess, defaultPythonExecutable

from semisup.protocol import Event, ProgressTracker
from semisup.protocol.exits import CANCEL_FILE
from semisup.protocol.run_folder import RunInfo, active_worker_pids, list_runs

__all__ = ["SemiSupUncertaintyLogic"]

log = logging.getLogger("SemiSupUncertainty")

#: Folders of the exported cases (SceneExporter), removed after a plan: it keeps what it measured.
EXPORTED_CASE_FOLDERS = ("imagesTr", "labelsTr", "imagesUnlabeled")


def _asList(nodes) -> list:
    if nodes is None:
        return []
    if isinstance(nodes, (list, tuple)):
        return list(nodes)
    return [nodes]


def _refuseTrainedRun(runDir: Path, advice: str) -> None:
    """An :class:`InputError` before anything is written into a folder that holds a checkpoint."""
    if any((runDir / "checkpoints" / name).exists() for name in ("last.pt", "best.pt")):
        raise InputError(f"{runDir} already holds a trained run: {advice}")


def _runChannels(runDir: Path) -> int | None:
    """Input channels the run was trained on (``data.channels``, saved by the trainer), or ``None``."""
    try:
        import yaml

        channels = (yaml.safe_load((runDir / "config.yaml").read_text()) or {}).get("data", {}).get("channels")
    except Exception:  # unreadable config: the worker reports it
        return None
    return int(channels) if isinstance(channels, int) and not isinstance(channels, bool) and channels > 0 else None


class SemiSupUncertaintyLogic:
    """Scene export, background training and prediction, result import.

    Parameters
    ----------
    scene:
        The MRML scene (default: ``slicer.mrmlScene`` at call time).
    pythonExecutable:
        Interpreter of the worker (default: ``PythonSlicer`` in Slicer, else ``sys.executable``).
    workerModule:
        Module run with ``-m`` (``semisup``; tests use a stand-in speaking the same protocol).
    extraPythonPath:
        Folders put on the worker's ``PYTHONPATH`` after the core library's.
    workerEnv:
        Extra environment variables of the worker.
    runsDirectory:
        Where new run folders go (default ``~/SemiSupUncertainty/runs``).
    """

    def __init__(
        self,
        scene=None,
        pythonExecutable: str | None = None,
        workerModule: str = "semisup",
        extraPythonPath: Sequence[str | Path] = (),
        workerEnv: dict[str, str] | None = None,
        runsDirectory: str | Path | None = None,
    ) -> None:
        self._scene = scene
        self.pythonExecutable = pythonExecutable
        self.workerModule = workerModule
        self.extraPythonPath = [str(p) for p in extraPythonPath]
        self.workerEnv = dict(workerEnv or {})
        self.runsDirectory = Path(runsDirectory) if runsDirectory else Path.home() / "SemiSupUncertainty" / "runs"

    # -- scene -----------------------------------------------------------------
    @property
    def scene(self):
        if self._scene is not None:
            return self._scene
        import slicer

        return slicer.mrmlScene

    @property
    def exporter(self) -> SceneExporter:
        return SceneExporter(self.scene)

    @property
    def importer(self) -> SceneImporter:
        return SceneImporter(self.scene)

    def pairSegmentationsWithVolumes(self) -> list[tuple]:
        """(volume, segmentation) for every segmentation, with the volume it references."""
        return self.exporter.pairSegmentationsWithVolumes()

    def defaultUnlabeledVolumes(self, labeledPairs: Sequence[tuple]) -> list:
        """Every scalar volume of the scene that is not a labeled case (nor an output of this module)."""
        return self.exporter.defaultUnlabeledVolumes(labeledPairs)

    def checkInputs(self, labeledPairs: Sequence[tuple], unlabeledVolumes: Sequence = (), classNames: Sequence[str] | None = None) -> list[str]:
        """The class list, or an :class:`InputError` listing every problem (nothing written)."""
        return self.exporter.checkInputs(labeledPairs, unlabeledVolumes, classNames)

    # -- worker ----------------------------------------------------------------
    @property
    def python(self) -> str:
        return self.pythonExecutable or defaultPythonExecutable()

    def _worker(self, commandArgs: Sequence[str], logPath: Path | None = None, cancelFile: Path | None = None) -> WorkerProcess:
        return WorkerProcess.semisup(
            [str(a) for a in commandArgs],
            python=self.python,
            pythonPath=[coreLibraryParent(), *self.extraPythonPath],
            module=self.workerModule,
            extraEnv=self.workerEnv,
            logPath=logPath,
            cancelFile=cancelFile,
        )

    def deviceInfo(self, timeout: float = 180.0) -> DeviceInfo:
        """GPU name and memory (or the CPU fallback notice) as the worker's interpreter sees them."""
        return queryDeviceInfo(self.python, self.extraPythonPath, self.workerEnv, timeout=timeout)

    # -- runs ------------------------------------------------------------------
    def newRunDir(self, method: str = "run", name: str | None = None, runsDirectory: str | Path | None = None) -> Path:
        root = Path(runsDirectory) if runsDirectory else self.runsDirectory
        base = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") if name else f"{time.strftime('%Y%m%d-%H%M%S')}-{method}"
        path, i = root / base, 2
        while path.exists():
            path, i = root / f"{base}-{i}", i + 1
        return path

    def listRuns(self, runsDirectory: str | Path | None = None) -> list[RunInfo]:
        return list_runs(runsDirectory or self.runsDirectory)

    def writeConfig(self, runDir: str | Path, overrides: dict[str, Any], base: str | Path | None = None) -> Path:
        """Write ``runDir/config.yaml``: the core library's defaults (or ``base``) with ``overrides`` applied.

        Keys are checked here (a typo is an :class:`InputError` at once); values are
        checked by the worker, which exits with 2 and a plain message. The full
        ``RunConfig.validate`` is not called in Slicer's process because it imports
        the networks (torch, MONAI: seconds to tens of seconds on the GUI thread).
        """
        ensureCoreLibraryOnPath()
        try:
            import yaml
            from semisup.config import RunConfig, apply_override
        except ImportError as exc:
            raise InputError(f"the core library cannot be imported in Slicer's Python ({exc}): click 'Install dependencies'") from None

        runDir = Path(runDir)
        defaults = RunConfig().to_dict()
        raw = yaml.safe_load(Path(base).read_text()) if base else RunConfig().to_dict()
        raw.setdefault("data", {})
        if not raw["data"].get("dataset"):
            raw["data"]["dataset"] = "dataset.json"
        for key, value in overrides.items():
            parts = key.split(".")
            section = defaults.get(parts[0])
            free = len(parts) > 2 and parts[0] == "method" and parts[1] == "params"  # a method's own parameters
            if not free and (len(parts) != 2 or not isinstance(section, dict) or parts[1] not in section):
                known = ", ".join(f"{s}.{k}" for s, v in defaults.items() if isinstance(v, dict) for k in v)
                raise InputError(f"unknown setting {key!r}; known settings: {known}")
            apply_override(raw, key, value)
        runDir.mkdir(parents=True, exist_ok=True)
        path = runDir / "config.yaml"
        tmp = path.with_suffix(".yaml.tmp")
        tmp.write_text(yaml.safe_dump(raw, sort_keys=False))
        tmp.replace(path)
        return path

    # -- training --------------------------------------------------------------
    def train(
        self,
        labeledPairs: Sequence[tuple],
        unlabeledVolumes: Sequence | None = None,
        runDir: str | Path | None = None,
        *,
        settings: TrainingSettings | None = None,
        classNames: Sequence[str] | None = None,
        overrides: dict[str, Any] | None = None,
        plan: PlanResult | str | Path | None = None,
        wait: bool = True,
        onEvent: Callable[[Event], None] | None = None,
        chart: bool = False,
        logProgress: bool | None = None,
        **settingFields: Any,
    ) -> TrainingResult | TrainingJob:
        """Export the cases and train in a background process.

        Parameters
        ----------
        labeledPairs:
            ``[(volumeNode, segmentationNode), ...]``; segment names are the classes.
        unlabeledVolumes:
            Volumes without labels (default: every other scalar volume of the scene; ``[]`` for none).
        runDir:
            Run folder (default: a new folder in ``runsDirectory``); must not hold a trained run.
        settings, settingFields:
            :class:`TrainingSettings`, or its fields by name (``iterations=500, method="uamt"``).
        overrides:
            Any other ``RunConfig`` key, dotted: ``{"method.params.ema_decay": 0.99}``.
        plan:
            A :meth:`plan` result (or its ``plan.yaml``): the base of the run's config, so the
            planned spacing, foreground sampling, schedule and inference settings are used;
            ``settings`` (default: the plan's own) and ``overrides`` are applied on top.
        wait:
            True: block until done and return a :class:`TrainingResult` (raises
            :class:`WorkerError` on failure or cancel). False: return the running
            :class:`TrainingJob` at once.
        chart:
            Also show the loss/Dice curves in plot nodes (``job.chart.chartNode``).
        """
        planPath = Path(plan.planPath if isinstance(plan, PlanResult) else plan) if plan else None
        if planPath is not None and not planPath.is_file():
            raise InputError(f"the plan {planPath} does not exist: plan again ('Plan from data')")
        if settings is None and planPath is not None:
            try:
                settings = readPlan(planPath)[1]
            except (OSError, ValueError) as exc:
                raise InputError(f"the plan {planPath} cannot be read: {exc}") from None
        settings = dataclasses.replace(settings or TrainingSettings(), **settingFields)
        problem = settings.validationError()
        if problem:
            raise InputError(problem)
        labeledPairs = [tuple(p) for p in labeledPairs]
        unlabeled = self.defaultUnlabeledVolumes(labeledPairs) if unlabeledVolumes is None else _asList(unlabeledVolumes)
        self.checkInputs(labeledPairs, unlabeled, classNames)  # before any file is written
        runDir = Path(runDir) if runDir else self.newRunDir(settings.method)
        _refuseTrainedRun(runDir, "resume it, or train into a new folder")
        dataset = self.exporter.export(runDir, labeledPairs, unlabeled, classNames, validationFraction=settings.validationFraction)
        for warning in dataset.warnings:
            log.warning(warning)
        # The plan's data.dataset names the cases it was made from; this run reads its own export.
        fromPlan = {"data.dataset": str(dataset.datasetPath)} if planPath is not None else {}
        config = self.writeConfig(runDir, {**settings.configOverrides(dataset.shapes), **fromPlan, **(overrides or {})}, base=planPath)
        args = ["train", "--config", config, "--run-dir", runDir, "--progress", "json"]
        return self._runTraining(runDir, args, ProgressTracker(), wait, onEvent, chart, logProgress)

    def plan(
        self,
        labeledPairs: Sequence[tuple],
        unlabeledVolumes: Sequence | None = None,
        runDir: str | Path | None = None,
        *,
        classNames: Sequence[str] | None = None,
        budgetMinutes: float | None = None,
        device: str = "auto",
        validationFraction: float | None = None,
        wait: bool = True,
        onEvent: Callable[[Event], None] | None = None,
        logProgress: bool | None = None,
    ) -> PlanResult | PlanJob:
        """Settings planned from the selected cases (``semisup plan`` in a background process).

        The cases are exported to ``runDir`` (default: a new ``*-plan`` folder of
        ``runsDirectory``) and fingerprinted (spacing, size, intensities, class sizes,
        case counts, device memory); the rules of ``docs/benchmarks.md`` ("Planning
        rules") turn that into ``runDir/plan.yaml``. Returns a :class:`PlanResult` whose
        ``settings`` fill the panel; pass it as ``train(..., plan=result)``.

        Parameters
        ----------
        budgetMinutes:
            Training time to plan for (default: the core library's, 60 on a CPU, the paper budget on a GPU).
        device:
            ``auto`` (the worker's machine), ``cpu`` or ``cuda``.
        """
        labeledPairs = [tuple(p) for p in labeledPairs]
        unlabeled = self.defaultUnlabeledVolumes(labeledPairs) if unlabeledVolumes is None else _asList(unlabeledVolumes)
        self.checkInputs(labeledPairs, unlabeled, classNames)
        if budgetMinutes is not None and not budgetMinutes > 0:
            raise InputError(f"the training budget must be a positive number of minutes, got {budgetMinutes}")
        runDir = Path(runDir) if runDir else self.newRunDir("plan")
        _refuseTrainedRun(runDir, "plan into a new folder")
        fraction = TrainingSettings().validationFraction if validationFraction is None else validationFraction
        exported = [runDir / folder for folder in EXPORTED_CASE_FOLDERS if not (runDir / folder).exists()]
        dataset = self.exporter.export(runDir, labeledPairs, unlabeled, classNames, validationFraction=fraction)
        planPath = runDir / "plan.yaml"
        args = ["plan", dataset.datasetPath, "--output", planPath, "--device", device]
        if budgetMinutes is not None:
            args += ["--budget-minutes", float(budgetMinutes)]
        job = PlanJob(self._worker(args, logPath=runDir / "slicer-worker.log"), runDir, planPath, removeAfterSuccess=exported,
                      onEvent=onEvent, logProgress=wait if logProgress is None else logProgress)
        return self._startJob(job, wait)

    def resume(
        self,
        runDir: str | Path,
        *,
        overrides: dict[str, Any] | None = None,
        wait: bool = True,
        onEvent: Callable[[Event], None] | None = None,
        chart: bool = False,
        logProgress: bool | None = None,
    ) -> TrainingResult | TrainingJob:
        """Continue an interrupted (cancelled, killed, crashed) run from ``checkpoints/last.pt``.

        ``overrides`` change the run's ``config.yaml`` first, e.g.
        ``{"train.iterations": 4000}`` to train a finished run longer.
        """
        runDir = Path(runDir)
        info = RunInfo.read(runDir)
        if not info.has_config:
            raise InputError(f"{runDir} is not a run folder (no config.yaml)")
        pids = active_worker_pids(runDir)
        if pids:
            raise InputError(f"{runDir} is being trained right now by process {', '.join(map(str, pids))}: cancel that first")
        if overrides:
            self.writeConfig(runDir, overrides, base=runDir / "config.yaml")
        elif info.state == "finished":
            raise InputError(f"{runDir} has finished training; to train longer, resume with more iterations (overrides={{'train.iterations': N}})")
        tracker = ProgressTracker.from_file(runDir / "progress.jsonl")  # the curves so far
        args = ["train", "--run-dir", runDir, "--resume", "--progress", "json"]
        return self._runTraining(runDir, args, tracker, wait, onEvent, chart, logProgress)

    def _runTraining(self, runDir: Path, args: list, tracker: ProgressTracker, wait: bool, onEvent, chart: bool, logProgress: bool | None):
        chartObject = ProgressChart(self.scene, f"SemiSup {runDir.name}") if chart else None
        job = TrainingJob(
            self._worker(args, logPath=runDir / "slicer-worker.log", cancelFile=runDir / CANCEL_FILE),
            runDir,
            chart=chartObject,
            tracker=tracker,
            onEvent=onEvent,
            logProgress=wait if logProgress is None else logProgress,
        )
        return self._startJob(job, wait)

    # -- prediction ------------------------------------------------------------
    @staticmethod
    def _startJob(job, wait: bool):
        """Start ``job``; return it at once (GUI), or wait and return its result (console, scripts)."""
        job.start()
        if not wait:
            return job
        job.wait()
        job.raiseIfFailed()
        return job.result

    def predict(
        self,
        runDir: str | Path,
        volumes,
        *,
        mcSamples: int | None = None,
        device: str = "auto",
        outputDir: str | Path | None = None,
        wait: bool = True,
        onEvent: Callable[[Event], None] | None = None,
        show: bool = True,
        keepInputs: bool = False,
        logProgress: bool | None = None,
    ) -> PredictionResult | PredictionJob:
        """Segment ``volumes`` with a trained run; load segmentations, uncertainty maps and a ranking table.

        Returns a :class:`PredictionResult` (``wait=True``) with, per input volume, a
        segmentation node named after it (one segment per class) and an uncertainty
        volume on its grid, plus a table node ranking the volumes most uncertain first.
        """
        runDir = Path(runDir)
        info = RunInfo.read(runDir)
        if not info.can_predict:
            raise InputError(f"{runDir} has no checkpoint (checkpoints/best.pt or last.pt): train it first")
        volumes = _asList(volumes)
        classNames = info.class_names
        base = Path(outputDir) if outputDir else runDir / "slicer-predictions" / time.strftime("%Y%m%d-%H%M%S")
        records = self.exporter.exportVolumes(volumes, base / "inputs", channels=_runChannels(runDir))
        args = ["predict", "--run-dir", runDir, "--input", *[r.image for r in records], "--output-dir", base / "outputs", "--progress", "json", "--device", device]
        if mcSamples is not None:
            args += ["--mc-samples", int(mcSamples)]
        job = PredictionJob(
            self._worker(args, logPath=base / "slicer-worker.log"),
            runDir,
            records,
            volumes,
            classNames,
            classStylesOfRun(runDir),
            base / "outputs",
            self.importer,
            show=show,
            removeAfterSuccess=None if keepInputs else base / "inputs",
            onEvent=onEvent,
            logProgress=wait if logProgress is None else logProgress,
        )
        return self._startJob(job, wait)
