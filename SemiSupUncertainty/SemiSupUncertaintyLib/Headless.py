"""Shared by scripts/slicer_train.py and scripts/slicer_predict.py: files in, files out, exit codes.

Works inside Slicer (``Slicer --no-main-window --python-script ...``) and with plain
Python plus the ``slicer-core`` wheel: files are read and written with MRML storage
nodes, never with ``slicer.util.loadVolume`` (which needs the application).
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

from .MRMLIO import readSegmentation, readVolume, writeSegmentation, writeVolume
from semisup.protocol import STATUS_EXIT_CODES, Event, ProgressTracker

__all__ = ["EXIT_CODES", "scene", "scriptArguments", "loadLabeledCase", "progressPrinter", "writeTableCsv", "writePrediction", "finish", "addWorkerOptions", "logicFromOptions"]

#: Script exit codes: the worker's (docs/worker-protocol.md).
EXIT_CODES = STATUS_EXIT_CODES


def scene():
    """``slicer.mrmlScene`` inside Slicer; a new scene (set as ``slicer.mrmlScene``) with slicer-core."""
    import slicer

    if getattr(slicer, "mrmlScene", None) is None:
        slicer.mrmlScene = slicer.vtkMRMLScene()
        colorLogic = slicer.vtkMRMLColorLogic()  # keeps the colour tables alive
        colorLogic.SetMRMLScene(slicer.mrmlScene)
        slicer._semisupColorLogic = colorLogic
    return slicer.mrmlScene


def scriptArguments(argv: Sequence[str] | None = None) -> list[str]:
    """The script's own arguments: after ``--`` when Slicer passes it along."""
    args = list(sys.argv[1:] if argv is None else argv)
    return args[1:] if args[:1] == ["--"] else args


def addWorkerOptions(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("worker (advanced)")
    group.add_argument("--python", help="interpreter of the worker (default: Slicer's PythonSlicer, else this Python)")
    group.add_argument("--worker-module", default="semisup", help=argparse.SUPPRESS)
    group.add_argument("--worker-path", action="append", default=[], help=argparse.SUPPRESS)


def logicFromOptions(options, mrmlScene):
    from .Logic import SemiSupUncertaintyLogic

    return SemiSupUncertaintyLogic(mrmlScene, pythonExecutable=options.python, workerModule=options.worker_module, extraPythonPath=options.worker_path)


def loadLabeledCase(mrmlScene, image: str, labels: str, classNames: Sequence[str] | None = None):
    """(volume, segmentation) from an image file and a ``.seg.nrrd`` (segment names = classes)
    or a label-map file (label ``i`` = ``classNames[i-1]``)."""
    from .SceneImporter import SceneImporter

    volume = readVolume(mrmlScene, image)
    if labels.lower().endswith(".seg.nrrd"):
        seg = readSegmentation(mrmlScene, labels)
        seg.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    else:
        seg = SceneImporter(mrmlScene).segmentationFromLabelmapFile(labels, list(classNames or []), volume, f"{volume.GetName()} segmentation")
    return volume, seg


def progressPrinter(out=None, every: float = 5.0) -> Callable[[Event], None]:
    """An ``onEvent`` callback printing the status line: every event but iterations, which at most every ``every`` s."""
    out = out or sys.stdout
    last = [0.0]
    tracker = ProgressTracker()

    def onEvent(event: Event) -> None:
        tracker.update(event)
        now = time.monotonic()
        if event.name in ("iteration", "checkpoint") and now - last[0] < every:
            return
        last[0] = now
        print(tracker.status_text(), file=out, flush=True)

    return onEvent


def writeTableCsv(tableNode, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow([tableNode.GetColumnName(c) for c in range(tableNode.GetNumberOfColumns())])
        for r in range(tableNode.GetNumberOfRows()):
            writer.writerow([tableNode.GetCellText(r, c) for c in range(tableNode.GetNumberOfColumns())])
    return path


def writePrediction(result, outputDir: str | Path) -> list[Path]:
    """``<name>.seg.nrrd``, ``<name>_uncertainty.nrrd`` per volume and ``uncertainty_ranking.csv``."""
    from .SceneExporter import SceneExporter

    outputDir = Path(outputDir)
    written = []
    names = SceneExporter._caseNames(result.volumes)
    for name, seg, unc in zip(names, result.segmentations, result.uncertainties):
        written.append(writeSegmentation(seg, outputDir / f"{name}.seg.nrrd"))
        if unc is not None:
            written.append(writeVolume(unc, outputDir / f"{name}_uncertainty.nrrd"))
    if result.table is not None:
        written.append(writeTableCsv(result.table, outputDir / "uncertainty_ranking.csv"))
    return written


def finish(code: int) -> None:
    """Exit with ``code``: through Slicer's own exit when running in the application."""
    import slicer

    if getattr(slicer, "app", None) is not None:
        slicer.util.exit(code)
    else:
        sys.exit(code)
