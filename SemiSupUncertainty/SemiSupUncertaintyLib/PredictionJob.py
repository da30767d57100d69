"""A prediction in the background; each predicted volume is loaded into the scene as it arrives."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from semisup.protocol import Event

from .SceneExporter import ROLE_ATTRIBUTE, CaseRecord
from .SceneImporter import SceneImporter, ScoreRow, primaryScore
from .WorkerJob import WorkerJob

__all__ = ["PredictionJob", "PredictionResult"]


@dataclass
class PredictionResult:
    """Nodes created by a prediction, in the order of the input volumes."""

    volumes: list = field(default_factory=list)
    segmentations: list = field(default_factory=list)
    uncertainties: list = field(default_factory=list)
    table: object = None
    scores: list[dict[str, float]] = field(default_factory=list)
    outputDir: Path | None = None
    runDir: Path | None = None
    caseNames: list[str] = field(default_factory=list)  # file stems of the outputs, per input volume

    def mostUncertainFirst(self) -> list:
        """Input volumes ranked by uncertainty score, most uncertain (label next) first."""
        order = sorted(range(len(self.volumes)), key=lambda i: primaryScore(self.scores[i])[1] if self.scores[i] else float("-inf"), reverse=True)
        return [self.volumes[i] for i in order]


class PredictionJob(WorkerJob):
    what = "The prediction process"

    def __init__(self, worker, runDir: str | Path, records: Sequence[CaseRecord], volumes: Sequence, classNames: Sequence[str], classStyles: dict[str, dict], outputDir: str | Path, importer: SceneImporter, show: bool = True, tableName: str = "Uncertainty ranking", removeAfterSuccess: Path | None = None, **kwargs) -> None:
        super().__init__(worker, **kwargs)
        self.runDir = Path(runDir)
        self.records = list(records)
        self.volumes = list(volumes)
        self.classNames = list(classNames)
        self.classStyles = dict(classStyles or {})
        self.outputDir = Path(outputDir)
        self.importer = importer
        self.show = show
        self.tableName = tableName
        self.removeAfterSuccess = removeAfterSuccess  # the exported inputs: not needed once predicted
        self._loaded: dict[int, tuple] = {}  # input index -> (segmentation, uncertainty, scores)
        self._arrivals = 0
        self.result: PredictionResult | None = None

    def _indexOf(self, event: Event) -> int | None:
        for i, record in enumerate(self.records):
            if record.name == event.case and i not in self._loaded:
                return i
        if event.index is not None and 1 <= event.index <= len(self.records) and event.index - 1 not in self._loaded:
            return event.index - 1  # the protocol's index is 1-based
        remaining = [i for i in range(len(self.records)) if i not in self._loaded]
        return remaining[0] if remaining else None

    def _path(self, value: str) -> Path:
        path = Path(value)
        return path if path.is_absolute() else self.outputDir / path

    def _onEvent(self, event) -> None:
        if event.name != "predicted":
            return
        index = self._indexOf(event)
        if index is None:
            return
        volume = self.volumes[index]
        if "label" not in event.outputs:
            raise OSError(f"the worker reported no label map for {event.case}")
        seg = self.importer.segmentationFromLabelmapFile(self._path(event.outputs["label"]), self.classNames, volume, f"{volume.GetName()} segmentation", self.classStyles)
        unc = None
        if event.outputs.get("uncertainty"):
            unc = self.importer.uncertaintyVolumeFromFile(self._path(event.outputs["uncertainty"]), f"{volume.GetName()} uncertainty")
        for node in (seg, unc):
            if node is None:
                continue
            node.SetAttribute(ROLE_ATTRIBUTE, node.GetAttribute(ROLE_ATTRIBUTE) or "prediction")
            node.SetAttribute("SemiSupUncertainty.RunDir", str(self.runDir))
            node.SetAttribute("SemiSupUncertainty.SourceVolumeID", volume.GetID())
            # Outputs are on the volume's local grid: they follow the volume's parent transform.
            node.SetAndObserveTransformNodeID(volume.GetTransformNodeID())
            self.importer.placeBeside(node, volume)
        self._loaded[index] = (seg, unc, dict(event.scores))

    def _finish(self) -> None:
        result = PredictionResult(outputDir=self.outputDir, runDir=self.runDir)
        for i in sorted(self._loaded):
            seg, unc, scores = self._loaded[i]
            result.caseNames.append(self.records[i].name)
            result.volumes.append(self.volumes[i])
            result.segmentations.append(seg)
            result.uncertainties.append(unc)
            result.scores.append(scores)
        if self.status.value == "finished":
            missing = [self.volumes[i].GetName() for i in range(len(self.volumes)) if i not in self._loaded]
            if missing:
                self.finishError = self.finishError or f"no prediction came back for {', '.join(missing)}"
            if result.volumes:
                rows = [ScoreRow(v.GetName(), s, v.GetID()) for v, s in zip(result.volumes, result.scores)]
                result.table = self.importer.scoreTable(rows, self.tableName)
                result.table.SetAttribute("SemiSupUncertainty.RunDir", str(self.runDir))
                if self.show:
                    first = result.volumes.index(result.mostUncertainFirst()[0])
                    self.importer.showOverlay(result.volumes[first], result.uncertainties[first], result.segmentations[first])
            if self.removeAfterSuccess is not None and not self.finishError:
                shutil.rmtree(self.removeAfterSuccess, ignore_errors=True)
        self.result = result
