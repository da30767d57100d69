"""What scripts/slicer_train.py, slicer_predict.py and slicer_review.py do: files in, files out, exit codes.

Works inside Slicer (``Slicer --no-main-window --python-script ...``) and with plain
Python plus the ``slicer-core`` wheel: files are read and written with MRML storage
nodes, never with ``slicer.util.loadVolume`` (which needs the application). The
scripts themselves only find this package and turn every outcome into an exit code.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

from .MRMLIO import readSegmentation, readVolume, writeSegmentation, writeVolume
from semisup.protocol import EXIT_BAD_INPUT, EXIT_ERROR, EXIT_OK, STATUS_EXIT_CODES, Event, ExitStatus, ProgressTracker

__all__ = ["EXIT_CODES", "scene", "scriptArguments", "loadLabeledCase", "progressPrinter", "writeTableCsv", "writePrediction", "addWorkerOptions", "logicFromOptions", "trainMain", "predictMain", "reviewMain"]

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


def trainMain(argv: Sequence[str] | None = None) -> int:
    """``slicer_train.py``: train (or ``--resume``) from image and segmentation files; returns the exit code."""
    from .Parameters import TrainingSettings
    from .SceneExporter import InputError
    from .WorkerProcess import WorkerError

    parser = argparse.ArgumentParser(prog="slicer_train.py", description="Train a SemiSupUncertainty model from files.")
    parser.add_argument("--labeled", nargs=2, action="append", default=[], metavar=("IMAGE", "SEGMENTATION"), help="a labeled case (repeat); SEGMENTATION: .seg.nrrd or a label map")
    parser.add_argument("--unlabeled", nargs="+", default=[], metavar="IMAGE", help="unlabeled images")
    parser.add_argument("--run-dir", required=True, help="run folder (created; with --resume: the run to continue)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its last checkpoint")
    parser.add_argument("--classes", nargs="+", help="class names of label-map segmentations (label 1, 2, ...)")
    parser.add_argument("--plan", action="store_true", help="plan the settings from the cases first (semisup plan: "
                        "run-dir/plan.yaml, the run's config base); the options below, where given, override it")
    parser.add_argument("--budget-minutes", type=float, help="with --plan: training time to plan for")
    parser.add_argument("--method", help="default: uamt (with --plan: the plan's)")
    parser.add_argument("--network", help="default: vnet (with --plan: the plan's)")
    parser.add_argument("--iterations", type=int, help="default: 2000 (with --plan: the plan's)")
    parser.add_argument("--patch-size", type=int, nargs="+", help="x y z (default: the largest multiple of 16 that fits; with --plan: the plan's)")
    parser.add_argument("--modality", choices=["MR", "CT", "mr", "ct"], help="default: MR (with --plan: the plan's)")
    parser.add_argument("--validation-fraction", type=float, default=0.2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any config setting, e.g. train.lr=0.005")
    addWorkerOptions(parser)
    options = parser.parse_args(scriptArguments(argv))
    mrmlScene = scene()
    logic = logicFromOptions(options, mrmlScene)
    try:
        overrides = dict(_keyValue(item) for item in options.set)
        if options.resume:
            job = logic.resume(options.run_dir, overrides=overrides or None, wait=False, onEvent=progressPrinter())
        else:
            pairs = [loadLabeledCase(mrmlScene, image, labels, options.classes) for image, labels in options.labeled]
            unlabeled = [readVolume(mrmlScene, path) for path in options.unlabeled]
            planned = None
            if options.plan:
                print("Planning from the cases (semisup plan)...")
                try:
                    planned = logic.plan(pairs, unlabeled, options.run_dir, classNames=options.classes, budgetMinutes=options.budget_minutes,
                                         device=options.device, validationFraction=options.validation_fraction, logProgress=False)
                except WorkerError as exc:  # the planning process failed or was cancelled: its own words
                    print(f"error: {exc}", file=sys.stderr)
                    return EXIT_CODES.get(exc.status, EXIT_ERROR)
                print(f"Plan: {planned.planPath}")
            given = {
                "method": options.method,
                "network": options.network,
                "iterations": options.iterations,
                "patchSize": options.patch_size,
                "modality": options.modality.upper() if options.modality else None,
            }
            given = {k: v for k, v in given.items() if v is not None}
            if "network" in given:
                given["spatialDims"] = 2 if given["network"] == "unet2d" else 3
            settings = dataclasses.replace(planned.settings if planned else TrainingSettings(), **given,
                                           validationFraction=options.validation_fraction, device=options.device)
            job = logic.train(pairs, unlabeled, options.run_dir, settings=settings, classNames=options.classes, overrides=overrides,
                              plan=planned, wait=False, onEvent=progressPrinter())
    except (InputError, FileNotFoundError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    _waitCancellingOnInterrupt(job, "Cancelling: finishing the current iteration and saving a checkpoint...")
    if job.status != ExitStatus.FINISHED:
        print(f"error: {job.errorMessage}", file=sys.stderr)
    else:
        print(f"Trained: {job.result.bestCheckpoint or job.result.lastCheckpoint}")
    return EXIT_CODES.get(job.status, EXIT_ERROR)


def predictMain(argv: Sequence[str] | None = None) -> int:
    """``slicer_predict.py``: segmentations, uncertainty maps and a ranking for image files; returns the exit code."""
    from .SceneExporter import InputError

    parser = argparse.ArgumentParser(prog="slicer_predict.py", description="Predict with a trained SemiSupUncertainty run.")
    parser.add_argument("--run-dir", required=True, help="a trained run folder")
    parser.add_argument("--input", nargs="+", required=True, metavar="IMAGE")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--mc-samples", type=int, help="MC-dropout samples (default: the run's)")
    parser.add_argument("--device", default="auto")
    addWorkerOptions(parser)
    options = parser.parse_args(scriptArguments(argv))
    mrmlScene = scene()
    logic = logicFromOptions(options, mrmlScene)
    try:
        volumes = [readVolume(mrmlScene, path) for path in options.input]
        job = logic.predict(options.run_dir, volumes, mcSamples=options.mc_samples, device=options.device, outputDir=Path(options.output_dir) / "worker", wait=False, show=False, onEvent=progressPrinter(every=0))
    except (InputError, FileNotFoundError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    _waitCancellingOnInterrupt(job, "Cancelling the prediction...", gracePeriod=3)
    if job.status != ExitStatus.FINISHED:
        print(f"error: {job.errorMessage}", file=sys.stderr)
        return EXIT_CODES.get(job.status, EXIT_ERROR)
    for path in writePrediction(job.result, options.output_dir):
        print(f"wrote {path}")
    return EXIT_OK


def reviewMain(argv: Sequence[str] | None = None) -> int:
    """``slicer_review.py``: accept corrected labels of predicted volumes, then optionally continue training.

    A refused volume (empty, missing a class segment, grid changed since its prediction)
    is named on stderr and the others are still accepted; the exit code is then 2 and no
    training starts.
    """
    from semisup.protocol.run_folder import class_names_of_run

    from .ReviewLogic import ReviewLogic
    from .SceneExporter import InputError

    parser = argparse.ArgumentParser(prog="slicer_review.py", description="Accept corrected labels and continue training.")
    parser.add_argument("--run-dir", required=True, help="the run that predicted")
    parser.add_argument("--prediction-dir", required=True, help="the prediction's output folder (with scores.csv)")
    parser.add_argument("--accept", nargs=2, action="append", default=[], metavar=("IMAGE", "LABELS"),
                        help="an image that was predicted and its corrected .seg.nrrd or label map (repeatable)")
    parser.add_argument("--continue-iterations", type=int, help="then train a new run from the run's model")
    parser.add_argument("--new-run-dir", help="folder of the new run (default: beside the run)")
    addWorkerOptions(parser)
    options = parser.parse_args(scriptArguments(argv))
    mrmlScene = scene()
    logic = logicFromOptions(options, mrmlScene)
    logic.runsDirectory = Path(options.run_dir).resolve().parent
    classNames = class_names_of_run(options.run_dir)
    code = EXIT_OK
    try:
        nodes = {}
        for image, labels in options.accept:
            volume, seg = loadLabeledCase(mrmlScene, image, labels, classNames)
            nodes[volume.GetName()] = (volume, seg, None)
        review = ReviewLogic.fromOutputs(logic, options.run_dir, options.prediction_dir, nodes)
    except (InputError, FileNotFoundError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    for case in nodes:
        try:
            change = review.accept(case)
        except InputError as exc:  # the other volumes are still accepted
            print(f"error: {exc}", file=sys.stderr)
            code = EXIT_BAD_INPUT
            continue
        print(f"accepted {case}: Dice to the prediction {change.dice:.4f}, {change.changedMl:.3f} ml changed "
              f"(+{change.addedMl:.3f} / -{change.removedMl:.3f} ml)")
    if options.continue_iterations and code == EXIT_OK:
        try:
            job = review.continueTraining(options.new_run_dir, iterations=options.continue_iterations, wait=False, onEvent=progressPrinter())
        except InputError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT
        _waitCancellingOnInterrupt(job, "Cancelling: finishing the current iteration and saving a checkpoint...")
        if job.status != ExitStatus.FINISHED:
            print(f"error: {job.errorMessage}", file=sys.stderr)
            return EXIT_CODES.get(job.status, EXIT_ERROR)
        print(f"Trained: {job.runDir} (parent {options.run_dir})")
    return code


def _keyValue(item: str) -> tuple[str, str]:
    from .SceneExporter import InputError

    if "=" not in item:
        raise InputError(f"--set {item!r} is not KEY=VALUE (e.g. train.lr=0.005)")
    key, value = item.split("=", 1)
    return key.strip(), value.strip()


def _waitCancellingOnInterrupt(job, message: str, gracePeriod: float = 10.0) -> None:
    """Wait for the worker; Ctrl+C asks it to stop gracefully (a checkpoint for a training) and waits again."""
    try:
        job.wait()
    except KeyboardInterrupt:
        print(message, file=sys.stderr)
        job.cancel(gracePeriod=gracePeriod)
        job.wait()
