"""Accept corrected segmentations of predicted volumes and continue training from the run's model.

    Slicer --no-main-window --python-script scripts/slicer_review.py -- \
        --run-dir runs/liver --prediction-dir results/worker/outputs \
        --accept ct5.nrrd ct5_corrected.seg.nrrd --accept ct6.nrrd ct6_labels.nrrd \
        --continue-iterations 1000

``--prediction-dir`` is the folder holding the prediction's ``scores.csv`` (for
``slicer_predict.py --output-dir results`` it is ``results/worker/outputs``). Each accepted
pair is compared with its prediction (Dice, ml changed; printed and stored in
``review.json`` beside that folder) and stored in ``accepted/``. With
``--continue-iterations`` a new run folder (``--new-run-dir``, default beside the
run) trains from the run's checkpoint on the enlarged labeled set and names its
parent in ``parent.json``; the run itself is never modified. Exit codes: 0 done,
1 failed, 2 bad input (nothing stored for that volume), 3 cancelled. See docs/slicer.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

MODULE_DIR = Path(__file__).resolve().parents[1] / "SemiSupUncertainty"


def _importLibrary() -> None:
    if (MODULE_DIR / "SemiSupUncertaintyLib").is_dir():
        sys.path.insert(0, str(MODULE_DIR))
        return
    import slicer  # installed extension, script copied elsewhere

    sys.path.insert(0, str(Path(slicer.modules.semisupuncertainty.path).parent))


def parseArguments(argv):
    from SemiSupUncertaintyLib import Headless

    parser = argparse.ArgumentParser(prog="slicer_review.py", description="Accept corrected labels and continue training.")
    parser.add_argument("--run-dir", required=True, help="the run that predicted")
    parser.add_argument("--prediction-dir", required=True, help="the prediction's output folder (with scores.csv)")
    parser.add_argument("--accept", nargs=2, action="append", default=[], metavar=("IMAGE", "LABELS"),
                        help="an image that was predicted and its corrected .seg.nrrd or label map (repeatable)")
    parser.add_argument("--continue-iterations", type=int, help="then train a new run from the run's model")
    parser.add_argument("--new-run-dir", help="folder of the new run (default: beside the run)")
    Headless.addWorkerOptions(parser)
    return parser.parse_args(Headless.scriptArguments(argv))


def main(argv=None) -> int:
    _importLibrary()
    from SemiSupUncertaintyLib import ExitStatus, Headless, InputError, ReviewLogic
    from semisup.protocol.run_folder import class_names_of_run

    options = parseArguments(argv)
    mrmlScene = Headless.scene()
    logic = Headless.logicFromOptions(options, mrmlScene)
    logic.runsDirectory = Path(options.run_dir).resolve().parent
    classNames = class_names_of_run(options.run_dir)
    code = 0
    try:
        nodes = {}
        for image, labels in options.accept:
            volume, seg = Headless.loadLabeledCase(mrmlScene, image, labels, classNames)
            nodes[volume.GetName()] = (volume, seg, None)
        review = ReviewLogic.fromOutputs(logic, options.run_dir, options.prediction_dir, nodes)
    except (InputError, FileNotFoundError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for case in nodes:
        try:
            change = review.accept(case)
        except InputError as exc:  # the other volumes are still accepted
            print(f"error: {exc}", file=sys.stderr)
            code = 2
            continue
        print(f"accepted {case}: Dice to the prediction {change.dice:.4f}, {change.changedMl:.3f} ml changed "
              f"(+{change.addedMl:.3f} / -{change.removedMl:.3f} ml)")
    if options.continue_iterations and code == 0:
        try:
            job = review.continueTraining(options.new_run_dir, iterations=options.continue_iterations, wait=False, onEvent=Headless.progressPrinter())
        except InputError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        try:
            job.wait()
        except KeyboardInterrupt:
            job.cancel(gracePeriod=3)
            job.wait()
        if job.status != ExitStatus.FINISHED:
            print(f"error: {job.errorMessage}", file=sys.stderr)
            return Headless.EXIT_CODES.get(job.status, 1)
        print(f"Trained: {job.runDir} (parent {options.run_dir})")
    return code


if __name__ == "__main__":
    code = main()
    from SemiSupUncertaintyLib import Headless

    Headless.finish(code)
