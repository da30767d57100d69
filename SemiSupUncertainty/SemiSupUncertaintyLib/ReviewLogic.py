"""The labelling loop in the scene: review the ranked predictions, accept corrected labels, continue training.

Console use (inside Slicer)::

    from SemiSupUncertaintyLib import SemiSupUncertaintyLogic, ReviewLogic
    logic = SemiSupUncertaintyLogic()
    result = logic.predict(runDir, unlabeledVolumes)
    review = ReviewLogic.fromPrediction(logic, result)
    item = review.select(0)            # the most uncertain volume, shown with its overlay
    # ... correct item.segmentation with the Segment Editor ...
    change = review.accept(item)       # Dice / ml changed, stored in review.json
    trained = review.continueTraining(iterations=500)   # a new run, warm-started, naming its parent

Files (nothing is ever overwritten): accepted pairs go to
``<prediction folder>/accepted/<case>_image.nrrd`` and ``<case>_label.nrrd`` (a second
acceptance of the same volume writes ``_v2`` files and keeps the first), the ledger
``<prediction folder>/review.json`` records each acceptance with its change. "Continue
training" makes a new run folder whose ``dataset.json`` lists the parent's cases plus
the accepted pairs (removed from its unlabeled list), whose ``config.yaml`` is the
parent's with ``train.init_from`` = the parent's checkpoint, and whose ``parent.json``
names the parent, the checkpoint and the accepted cases.
"""

from __future__ import annotations

import csv
import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .LabelChange import LabelChange, labelChange
from .MRMLIO import fileStem, readVolume, sameGeometry, temporaryNodes, writeVolume
from .ReviewItem import ReviewItem
from .SceneExporter import ROLE_ATTRIBUTE, InputError, _segmentNames

from semisup.protocol.run_folder import RunInfo, class_names_of_run  # the package puts the core library on the path

__all__ = ["ReviewLogic", "SCORE_COLUMN", "PARENT_FILE", "LEDGER_FILE"]

#: Per-volume score of ``scores.csv`` ranking the review (the core library's key).
SCORE_COLUMN = "mean_uncertainty_foreground"
#: Written into every run started by "Continue training".
PARENT_FILE = "parent.json"
#: The acceptances of one prediction.
LEDGER_FILE = "review.json"


def _atomicJson(path: Path, doc: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        json.dump(doc, fh, indent=2)
    os.replace(tmp, path)


class ReviewLogic:
    """Ranked review of one prediction, acceptance of corrected labels, warm-started retraining.

    Parameters
    ----------
    logic:
        The module's :class:`SemiSupUncertaintyLogic` (scene, worker settings, runs folder).
    runDir:
        The run that predicted.
    outputDir:
        The prediction's output folder (``scores.csv``, ``<case>_label.nrrd``).
    items:
        One per predicted volume (any order; :meth:`rows` ranks them).
    """

    def __init__(self, logic, runDir: str | Path, outputDir: str | Path, items: Sequence[ReviewItem]) -> None:
        self.logic = logic
        self.runDir = Path(runDir)
        self.outputDir = Path(outputDir)
        self.items = list(items)
        self.tableNode = None

    # -- building ----------------------------------------------------------------
    @classmethod
    def fromPrediction(cls, logic, result) -> "ReviewLogic":
        """From the :class:`PredictionResult` of ``logic.predict`` (its nodes and ``scores.csv``)."""
        if result.outputDir is None or result.runDir is None:
            raise InputError("this prediction result does not name its run and output folder; predict again")
        nodes = {
            name: (volume, seg, unc)
            for name, volume, seg, unc in zip(result.caseNames, result.volumes, result.segmentations, result.uncertainties)
        }
        return cls.fromOutputs(logic, result.runDir, result.outputDir, nodes)

    @classmethod
    def fromOutputs(cls, logic, runDir: str | Path, outputDir: str | Path, nodes: dict[str, tuple]) -> "ReviewLogic":
        """From a prediction folder and the scene nodes of its cases: ``{case: (volume, segmentation, uncertainty)}``."""
        outputDir = Path(outputDir)
        scoresPath = outputDir / "scores.csv"
        if not scoresPath.is_file():
            raise InputError(f"{scoresPath}: not found: the review needs the prediction's scores.csv")
        with scoresPath.open(newline="") as fh:
            rows = {r["case"]: r for r in csv.DictReader(fh)}
        items = []
        for case, (volume, seg, unc) in nodes.items():
            row = rows.get(case)
            if row is None:
                raise InputError(f"volume '{volume.GetName()}': no row for case {case!r} in {scoresPath}")
            voxels = int(float(row.get("foreground_voxels") or 0))
            spacing = volume.GetSpacing()
            items.append(
                ReviewItem(
                    caseName=case,
                    volume=volume,
                    segmentation=seg,
                    uncertainty=unc,
                    score=float(row.get(SCORE_COLUMN) or "nan"),
                    foregroundVoxels=voxels,
                    predictedMl=voxels * float(np.prod(spacing)) / 1000.0,
                    labelPath=_labelPath(outputDir, case, row.get("label")),
                    sizeCheck=row.get("size_check") or "",
                )
            )
        review = cls(logic, runDir, outputDir, items)
        for entry in review.ledger():
            for item in review.items:
                if item.caseName == entry["case"]:
                    item.status = "accepted"
        return review

    # -- table -------------------------------------------------------------------
    def rows(self) -> list[ReviewItem]:
        """Most uncertain first; before all, a volume where nothing was predicted, then one whose size
        is flagged (far smaller or larger than any labeled one: the likely failures, whatever their score)."""
        def key(item: ReviewItem):
            score = item.score if math.isfinite(item.score) else float("-inf")
            return (item.foregroundVoxels != 0, not item.sizeFlagged, -score)

        return sorted(self.items, key=key)

    def table(self, name: str = "Review"):
        """A table node (rank, volume, score, predicted ml, status), updated in place on every change."""
        import vtk

        scene = self.logic.scene
        if self.tableNode is None or scene.GetNodeByID(self.tableNode.GetID()) is None:
            self.tableNode = scene.AddNewNodeByClass("vtkMRMLTableNode", scene.GenerateUniqueName(name))
            self.tableNode.SetAttribute(ROLE_ATTRIBUTE, "review")
            self.tableNode.SetAttribute("SemiSupUncertainty.RunDir", str(self.runDir))
        vt = self.tableNode.GetTable()
        while vt.GetNumberOfColumns():
            vt.RemoveColumn(0)
        columns = [
            (vtk.vtkIntArray, "Rank"), (vtk.vtkStringArray, "Volume"), (vtk.vtkDoubleArray, "Score"),
            (vtk.vtkDoubleArray, "Predicted volume (ml)"), (vtk.vtkStringArray, "Status"), (vtk.vtkStringArray, "Volume node ID"),
            (vtk.vtkStringArray, "Size check"),
        ]
        arrays = []
        for cls, title in columns:
            arr = cls()
            arr.SetName(title)
            arrays.append(arr)
        for rank, item in enumerate(self.rows(), start=1):
            arrays[0].InsertNextValue(rank)
            arrays[1].InsertNextValue(item.volume.GetName())
            arrays[2].InsertNextValue(item.score)
            arrays[3].InsertNextValue(item.predictedMl)
            arrays[4].InsertNextValue(item.status if item.foregroundVoxels else f"{item.status} (nothing predicted)")
            arrays[5].InsertNextValue(item.volume.GetID())
            arrays[6].InsertNextValue(item.sizeCheck)
        for arr in arrays:
            vt.AddColumn(arr)
        self.tableNode.SetColumnDescription("Score", f"{SCORE_COLUMN}: higher means the model is less sure; review the top rows")
        self.tableNode.SetColumnDescription("Size check", "flagged: a structure far smaller or larger than any labeled one (ranked first)")
        self.tableNode.Modified()
        return self.tableNode

    # -- selecting ---------------------------------------------------------------
    def _item(self, which) -> ReviewItem:
        if isinstance(which, ReviewItem):
            return which
        if isinstance(which, int):
            ranked = self.rows()
            if not 0 <= which < len(ranked):
                raise InputError(f"row {which} does not exist: the review has {len(ranked)} volume(s)")
            return ranked[which]
        for item in self.items:
            if which in (item.caseName, item.volume.GetName(), item.volume.GetID()):
                return item
        raise InputError(f"no volume {which!r} in this review")

    def select(self, which, opacity: float = 0.5) -> ReviewItem:
        """Show a volume (row index in rank order, case/volume name or item) with its segmentation and uncertainty overlay."""
        item = self._item(which)
        self.logic.importer.showOverlay(item.volume, item.uncertainty, item.segmentation, opacity=opacity)
        return item

    # -- accepting ---------------------------------------------------------------
    def ledger(self) -> list[dict[str, Any]]:
        path = self.outputDir.parent / LEDGER_FILE
        return json.loads(path.read_text())["accepted"] if path.is_file() else []

    def accept(self, which, segmentation=None) -> LabelChange:
        """Store the (corrected) segmentation of a volume as a labeled pair and record what changed.

        Raises :class:`InputError`, writing nothing, when the volume's grid no longer
        matches its prediction, a class segment is missing, or the label is empty.
        """
        item = self._item(which)
        seg = segmentation or item.segmentation
        name = item.volume.GetName()
        if seg is None:
            raise InputError(f"volume '{name}': no segmentation to accept")
        classNames = class_names_of_run(self.runDir)
        if not classNames:
            raise InputError(f"{self.runDir}: no class names (dataset.json): cannot turn '{seg.GetName()}' into a label map")
        present = {segName for _, segName in _segmentNames(seg)}
        missing = [c for c in classNames if c not in present]
        if missing:
            raise InputError(
                f"volume '{name}': segmentation '{seg.GetName()}' has no segment named {', '.join(repr(m) for m in missing)} "
                f"(the run's classes: {', '.join(classNames)}); add it back, empty if the class is absent"
            )
        scene = self.logic.scene
        if not item.labelPath.is_file():
            raise InputError(f"volume '{name}': its predicted label map {item.labelPath} is gone: predict again")
        with temporaryNodes(scene):
            predictedNode = readVolume(scene, item.labelPath, name="__semisup_review_prediction__", labelmap=True)
            if not sameGeometry(predictedNode, item.volume):
                raise InputError(
                    f"volume '{name}' no longer matches its prediction {item.labelPath.name} (its dimensions, spacing, "
                    "origin or orientation changed since it was predicted): predict it again; nothing was written"
                )
            predicted = np.array(_arrayFromVolume(predictedNode))

        folder = self.outputDir.parent / "accepted"
        folder.mkdir(parents=True, exist_ok=True)
        stem = self._freeStem(folder, item.caseName)
        tmpLabel = folder / f".{stem}_label.tmp.nrrd"
        try:
            _, histogram = self.logic.exporter.exportLabelmap(seg, item.volume, classNames, tmpLabel)
            if int(histogram[1:].sum()) == 0:
                raise InputError(
                    f"volume '{name}': the accepted segmentation '{seg.GetName()}' is empty: there is nothing to learn from; "
                    "draw the structure, or leave this volume unaccepted (nothing was stored)"
                )
            with temporaryNodes(scene):
                acceptedNode = readVolume(scene, tmpLabel, name="__semisup_review_accepted__", labelmap=True)
                accepted = np.array(_arrayFromVolume(acceptedNode))
            labelPath = folder / f"{stem}_label.nrrd"
            imagePath = writeVolume(item.volume, folder / f"{stem}_image.nrrd")
            os.replace(tmpLabel, labelPath)
        finally:
            tmpLabel.unlink(missing_ok=True)

        change = labelChange(predicted, accepted, float(np.prod(item.volume.GetSpacing())), classNames)
        entries = self.ledger()
        entries.append({
            "case": item.caseName,
            "volume": name,
            "image": str(imagePath),
            "label": str(labelPath),
            "prediction": str(item.labelPath),
            "run": str(self.runDir),
            "accepted_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "change": change.asDict(),
        })
        _atomicJson(self.outputDir.parent / LEDGER_FILE, {"accepted": entries})
        item.status = "accepted"
        if self.tableNode is not None:
            self.table()
        return change

    @staticmethod
    def _freeStem(folder: Path, case: str) -> str:
        stem, version = case, 2
        while (folder / f"{stem}_label.nrrd").exists() or (folder / f"{stem}_image.nrrd").exists():
            stem, version = f"{case}_v{version}", version + 1
        return stem

    # -- continuing --------------------------------------------------------------
    def acceptedPairs(self) -> dict[str, dict[str, Any]]:
        """The latest acceptance per case."""
        return {entry["case"]: entry for entry in self.ledger()}

    def prepareChildRun(self, runDir: str | Path | None = None, iterations: int | None = None, overrides: dict[str, Any] | None = None) -> Path:
        """Write the new run folder (dataset.json, config.yaml, parent.json); returns it. The parent is only read."""
        accepted = self.acceptedPairs()
        if not accepted:
            raise InputError("no volume has been accepted yet: accept at least one corrected segmentation first")
        parent = self.runDir
        info = RunInfo.read(parent)
        checkpoint = parent / "checkpoints" / ("best.pt" if info.has_best else "last.pt")
        if not checkpoint.is_file():
            raise InputError(f"{parent} has no checkpoint to continue from")
        child = Path(runDir) if runDir else self.logic.newRunDir(name=f"{parent.name}-continued")
        if child.resolve() == parent.resolve() or (child / "config.yaml").exists():
            raise InputError(f"{child} already holds a run: continue training into a new folder (the parent is never overwritten)")
        dataset = json.loads((parent / "dataset.json").read_text())

        def absolute(entry):
            if isinstance(entry, str):
                return str((parent / entry).resolve())
            return {k: str((parent / v).resolve()) for k, v in entry.items()}

        training = [absolute(e) for e in dataset.get("training", [])]
        validation = [absolute(e) for e in dataset.get("validation", [])]
        unlabeled = [absolute(e) for e in dataset.get("unlabeled", [])]

        def caseOf(entry) -> str:
            return fileStem(Path(entry if isinstance(entry, str) else entry["image"]))

        names = set(accepted)
        replaced = [caseOf(e) for e in training + validation if caseOf(e) in names]
        training = [e for e in training if caseOf(e) not in names]
        validation = [e for e in validation if caseOf(e) not in names]
        unlabeled = [e for e in unlabeled if caseOf(e) not in names]
        # The accepted pair's files are named after the case (the core library takes the case name from the file name).
        pairs = []
        for case, entry in sorted(accepted.items()):
            image = child / "imagesTr" / f"{case}.nrrd"
            label = child / "labelsTr" / f"{case}.nrrd"
            image.parent.mkdir(parents=True, exist_ok=True)
            label.parent.mkdir(parents=True, exist_ok=True)
            image.write_bytes(Path(entry["image"]).read_bytes())
            label.write_bytes(Path(entry["label"]).read_bytes())
            pairs.append({"image": f"imagesTr/{case}.nrrd", "label": f"labelsTr/{case}.nrrd"})
        doc = {**dataset, "training": training + pairs, "validation": validation, "unlabeled": unlabeled, "numTraining": len(training) + len(pairs)}
        _atomicJson(child / "dataset.json", doc)
        # data.dataset: the parent's saved config names the parent's dataset.json by its absolute path.
        settings = {"data.dataset": "dataset.json", "train.init_from": str(checkpoint.resolve()), **({"train.iterations": int(iterations)} if iterations else {}), **(overrides or {})}
        self.logic.writeConfig(child, settings, base=parent / "config.yaml")
        _atomicJson(child / PARENT_FILE, {
            "parent": str(parent.resolve()),
            "init_from": str(checkpoint.resolve()),
            "warm_start": "weights of the parent's checkpoint (train.init_from); optimizer and schedule restart",
            "accepted": [{"case": c, "volume": e["volume"], "change": e["change"], "prediction": e["prediction"]} for c, e in sorted(accepted.items())],
            "replaced_labels": replaced,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        })
        return child

    def continueTraining(
        self,
        runDir: str | Path | None = None,
        *,
        iterations: int | None = None,
        overrides: dict[str, Any] | None = None,
        wait: bool = True,
        onEvent: Callable | None = None,
        chart: bool = False,
    ):
        """Train a new run from the parent's weights on the enlarged labeled set (see :meth:`prepareChildRun`)."""
        from semisup.protocol import ProgressTracker

        child = self.prepareChildRun(runDir, iterations, overrides)
        args = ["train", "--config", child / "config.yaml", "--run-dir", child, "--progress", "json"]
        return self.logic._runTraining(child, args, ProgressTracker(), wait, onEvent, chart, None)


def _labelPath(outputDir: Path, case: str, listed: str | None) -> Path:
    """The predicted label map: beside scores.csv (the folder may have moved since), else as listed."""
    beside = outputDir / f"{case}_label.nrrd"
    return beside if beside.is_file() or not listed else Path(listed)


def _arrayFromVolume(node):
    import slicer

    return slicer.util.arrayFromVolume(node)
