"""The package version and the platforms it supports, importable by every layer without the package's face."""

from __future__ import annotations

__version__ = "0.1.0"

#: Lowest Python the library supports; pyproject.toml's requires-python says the same (a test checks).
REQUIRES_PYTHON = (3, 10)

#: The Python each 3D Slicer release line ships (Slicer's SuperBuild/External_python.cmake):
#: 5.0 to 5.8 ship Python 3.9; 5.10 moved to Python 3.12 (its release notes, November 2025).
SLICER_PYTHON = {(5, 0): (3, 9), (5, 2): (3, 9), (5, 4): (3, 9), (5, 6): (3, 9), (5, 8): (3, 9), (5, 10): (3, 12)}

#: Oldest Slicer supported: the first whose Python meets REQUIRES_PYTHON.
SLICER_MINIMUM = min(v for v, py in SLICER_PYTHON.items() if py >= REQUIRES_PYTHON)


def slicer_compatibility_problem(slicer_version: tuple[int, int], python_version: tuple[int, int]) -> str:
    """Why this Slicer cannot run the extension, in plain words; empty when it can."""
    slicer_text = ".".join(map(str, slicer_version[:2]))
    python_text = ".".join(map(str, python_version[:2]))
    if tuple(python_version[:2]) < REQUIRES_PYTHON or tuple(slicer_version[:2]) < SLICER_MINIMUM:
        need = ".".join(map(str, SLICER_MINIMUM))
        return (
            f"SemiSupUncertainty needs 3D Slicer {need} or later (Python {'.'.join(map(str, REQUIRES_PYTHON))} or later); "
            f"this is Slicer {slicer_text} with Python {python_text}. Install a newer Slicer from download.slicer.org."
        )
    return ""
