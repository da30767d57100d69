"""Accept corrected segmentations of predicted volumes and continue training from the run's model.

    Slicer --no-main-window --python-script <scripts>/slicer_review.py -- \
        --run-dir runs/liver --prediction-dir results/worker/outputs \
        --accept ct5.nrrd ct5_corrected.seg.nrrd --accept ct6.nrrd ct6_labels.nrrd \
        --continue-iterations 1000

``--prediction-dir`` is the folder holding the prediction's ``scores.csv`` (for
``slicer_predict.py --output-dir results`` it is ``results/worker/outputs``). Each
accepted pair is compared with its prediction (Dice, ml changed; printed and stored in
``review.json`` beside that folder) and stored in ``accepted/``. With
``--continue-iterations`` a new run folder (``--new-run-dir``, default beside the run)
trains from the run's checkpoint on the enlarged labeled set and names its parent in
``parent.json``; the run itself is never modified. Exit codes: 0 done, 1 failed, 2 bad
input (nothing stored for the volume named), 3 cancelled. See docs/slicer.md.
"""

import sys
import traceback
from pathlib import Path

EXIT_ERROR, EXIT_BAD_INPUT, EXIT_CANCELLED = 1, 2, 3  # semisup.protocol.exits (not importable yet)


def moduleDir() -> Path:
    """The folder holding ``SemiSupUncertaintyLib``: found from this file, else from the loaded module."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent, here.parent / "SemiSupUncertainty"):  # installed extension, checkout
        if (candidate / "SemiSupUncertaintyLib").is_dir():
            return candidate
    import slicer  # the script was copied elsewhere: ask the running Slicer where the module is

    return Path(slicer.modules.semisupuncertainty.path).parent


def main(argv=None) -> int:
    sys.path.insert(0, str(moduleDir()))
    from SemiSupUncertaintyLib import Headless

    return Headless.reviewMain(argv)


def guarded(run) -> int:
    """``run()``'s exit code; any exception becomes a code and a message on stderr, never a hang."""
    try:
        return int(run() or 0)
    except KeyboardInterrupt:
        print("error: cancelled", file=sys.stderr)
        return EXIT_CANCELLED
    except SystemExit as exc:  # argparse: 2 for bad arguments, 0 for --help
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else EXIT_BAD_INPUT)
    except BaseException as exc:
        traceback.print_exc()
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_ERROR


def finish(code: int) -> None:
    """Exit with ``code``; inside Slicer through the application, or it would keep running."""
    slicer = sys.modules.get("slicer")
    if getattr(slicer, "app", None) is not None:
        slicer.util.exit(code)
    else:
        sys.exit(code)


if __name__ == "__main__":
    finish(guarded(main))
