"""What every headless script shares: find the module, run one entry of ``Headless``, always exit.

The scripts (``slicer_train.py``, ``slicer_predict.py``, ``slicer_review.py``) put
their own folder on ``sys.path`` and call :func:`run`; this file must lie beside them
(it does in a checkout and in an installed extension, see SemiSupUncertainty/CMakeLists.txt).
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
    import slicer  # the scripts were copied elsewhere: ask the running Slicer where the module is

    return Path(slicer.modules.semisupuncertainty.path).parent


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


def run(entry: str, argv=None) -> None:
    """Run ``Headless.<entry>(argv)`` and exit with its code, whatever happens."""

    def main() -> int:
        sys.path.insert(0, str(moduleDir()))
        from SemiSupUncertaintyLib import Headless

        return getattr(Headless, entry)(argv)

    finish(guarded(main))
