"""Segment image files with a trained run: segmentations, uncertainty maps and a ranking.

    Slicer --no-main-window --python-script <scripts>/slicer_predict.py -- \
        --run-dir runs/liver --input ct5.nrrd ct6.nrrd --output-dir results

``<scripts>`` is ``scripts/`` of a checkout, or ``<extension>/lib/Slicer-X.Y/qt-scripted-modules/scripts``
of an installed extension (docs/slicer.md). Writes ``<output>/<name>.seg.nrrd`` (one
segment per class, on the input's grid), ``<name>_uncertainty.nrrd`` and
``uncertainty_ranking.csv`` (most uncertain first: label those next). The script
always ends with an exit code: 0 finished, 2 bad input, 3 cancelled, 1 anything
else; the message is on stderr. Also runs with plain Python when the ``slicer-core`` wheel is installed.
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

    return Headless.predictMain(argv)


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
