"""Train from image and segmentation files, headless, with Slicer's Python.

    Slicer --no-main-window --python-script <scripts>/slicer_train.py -- \
        --labeled ct1.nrrd ct1.seg.nrrd --labeled ct2.nrrd ct2.seg.nrrd \
        --unlabeled ct3.nrrd ct4.nrrd --run-dir runs/liver --iterations 2000

``<scripts>`` is ``scripts/`` of a checkout, or ``<extension>/lib/Slicer-X.Y/qt-scripted-modules/scripts``
of an installed extension (docs/slicer.md). Segmentations are ``.seg.nrrd`` files
(segment names are the classes) or label maps with ``--classes``. The script always
ends with an exit code: 0 finished, 2 bad input, 3 cancelled (Ctrl+C cancels
gracefully; ``--resume`` continues), 1 anything else; the message is on stderr. Also
runs with plain Python when the ``slicer-core`` wheel is installed.
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

    return Headless.trainMain(argv)


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
