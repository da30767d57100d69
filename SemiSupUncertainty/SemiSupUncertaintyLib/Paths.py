"""Where the module, its resources and the core library live, installed or in a checkout.

Installed extension (what the module's CMakeLists.txt produces)::

    <lib>/qt-scripted-modules/SemiSupUncertainty.py
    <lib>/qt-scripted-modules/SemiSupUncertaintyLib/...
    <lib>/qt-scripted-modules/semisup/...                   core library
    <lib>/qt-scripted-modules/Resources/UI/SemiSupUncertainty.ui
    <lib>/qt-scripted-modules/Resources/Icons/SemiSupUncertainty.png

Source checkout (module added to Slicer's additional module paths directly)::

    <repo>/SemiSupUncertainty/SemiSupUncertainty.py
    <repo>/SemiSupUncertainty/semisup/...
    <repo>/Resources/UI/SemiSupUncertainty.ui
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

__all__ = ["MODULE_NAME", "moduleDir", "coreLibraryParent", "resourcePath", "selfTestDir", "ensureCoreLibraryOnPath", "reloadLibraries"]

MODULE_NAME = "SemiSupUncertainty"


def moduleDir() -> Path:
    """The folder holding ``SemiSupUncertainty.py`` and ``SemiSupUncertaintyLib/``."""
    return Path(__file__).resolve().parents[1]


def coreLibraryParent() -> Path:
    """The folder that contains the ``semisup`` package (goes on ``sys.path``/``PYTHONPATH``)."""
    return moduleDir()


def _candidates(relative: str) -> list[Path]:
    return [moduleDir() / "Resources" / relative, moduleDir().parent / "Resources" / relative]


def resourcePath(relative: str) -> Path:
    """Path of a resource such as ``"UI/SemiSupUncertainty.ui"``: installed layout first, then checkout."""
    candidates = _candidates(relative)
    for path in candidates:
        if path.exists():
            return path
    raise FileNotFoundError(f"resource {relative!r} not found; looked in: " + ", ".join(str(p) for p in candidates))


def selfTestDir() -> Path:
    """Folder of ``SemiSupUncertaintySelfTest.py``: installed beside the module, or ``<repo>/Testing/SelfTest``."""
    for path in (moduleDir() / "Testing" / "SelfTest", moduleDir().parent / "Testing" / "SelfTest"):
        if (path / "SemiSupUncertaintySelfTest.py").exists():
            return path
    raise FileNotFoundError("SemiSupUncertaintySelfTest.py is neither installed beside the module nor in a checkout")


def ensureCoreLibraryOnPath() -> None:
    """Make ``import semisup`` work in this interpreter (Slicer's own Python)."""
    parent = str(coreLibraryParent())
    if parent not in sys.path:
        sys.path.insert(0, parent)


def reloadLibraries(packages: tuple[str, ...] = ("SemiSupUncertaintyLib", "semisup")) -> list[str]:
    """Forget every loaded module of ``packages`` and import them again from disk; returns what was reloaded.

    Slicer's Reload (ScriptedLoadableModuleWidget.onReload, Base/Python/slicer/ScriptedLoadableModule.py)
    reloads the module file only; its ``SemiSupUncertaintyLib`` and ``semisup`` imports would
    still be the old ones. Dropping them all from ``sys.modules`` (rather than
    ``importlib.reload`` one by one) re-imports them in dependency order, so no module
    keeps a reference to an old class.
    """
    dropped = sorted(name for name in sys.modules if name.split(".")[0] in packages)
    for name in dropped:
        del sys.modules[name]
    importlib.invalidate_caches()
    for package in packages:
        if any(name.split(".")[0] == package for name in dropped):
            importlib.import_module(package)
    return dropped
