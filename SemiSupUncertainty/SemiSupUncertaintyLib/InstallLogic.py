"""Python packages the worker needs, installed into Slicer's Python on request (never at import).

torch comes from the PyTorch extension (``PyTorchUtils``), which picks the build that
matches the computer's CUDA driver; it is installed (or upgraded, when older than the
floor) first, so that pip never pulls a generic torch as a dependency of MONAI. The
other packages are installed with ``slicer.util.pip_install`` after one confirmation
listing them, with the installed torch pinned by a constraints file so that pip cannot
replace it. Packages Slicer ships (SimpleITK) are never installed: Slicer's own build
registers Slicer's image IO, and replacing it breaks Slicer.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable, Sequence

__all__ = ["InstallLogic", "InstallError", "TORCH_REQUIREMENT", "REQUIREMENTS", "SLICER_PROVIDED", "installTorchWithPyTorchUtils"]

#: Same bounds as the core library's pyproject.toml (a test keeps them in sync);
#: torch >= 2.3 for torch.amp.GradScaler.
TORCH_REQUIREMENT = ">=2.3"
REQUIREMENTS = [
    "monai>=1.4",
    "numpy>=1.24",
    "scikit-image>=0.22",
    "scipy>=1.10",
    "PyYAML>=6",
    "tqdm>=4.60",
    "matplotlib>=3.7",
    "psutil>=5.9",
]

#: Core-library requirements that Slicer ships and that must never be pip-installed into
#: it (SlicerTotalSegmentator skips them for the same reason: Slicer's SimpleITK is
#: built with Slicer's own IO). Checked by import only: Slicer's build may carry no metadata.
SLICER_PROVIDED = ["SimpleITK>=2.3"]


class InstallError(RuntimeError):
    pass


def _splitRequirement(requirement: str) -> tuple[str, str]:
    match = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*(.*)$", requirement)
    if not match:
        raise ValueError(f"not a requirement: {requirement!r}")
    return match.group(1), match.group(2).strip()


def _satisfied(version: str, specifier: str) -> bool:
    """``version`` meets ``specifier`` (``packaging`` ships with Slicer's Python and with pip)."""
    from packaging.specifiers import InvalidSpecifier, SpecifierSet
    from packaging.version import InvalidVersion, Version

    try:
        return not specifier or Version(version) in SpecifierSet(specifier)
    except (InvalidSpecifier, InvalidVersion):
        return False


def installedVersion(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


class InstallLogic:
    """Check and install the worker's packages.

    Parameters
    ----------
    confirm:
        ``confirm(text) -> bool`` (default: ``slicer.util.confirmOkCancelDisplay``).
    pipInstall:
        ``pipInstall(requirements: list[str])`` (default: ``slicer.util.pip_install``).
    torchInstaller:
        ``torchInstaller(torchVersionRequirement) -> module or None`` (default: the
        PyTorch extension's ``PyTorchUtilsLogic().installTorch(askConfirmation=True, ...)``).
    """

    def __init__(
        self,
        confirm: Callable[[str], bool] | None = None,
        pipInstall: Callable[[list[str]], None] | None = None,
        torchInstaller: Callable[[str], object] | None = None,
        requirements: Sequence[str] = REQUIREMENTS,
        torchRequirement: str = TORCH_REQUIREMENT,
    ) -> None:
        self.confirm = confirm or self._slicerConfirm
        self.pipInstall = pipInstall or self._slicerPipInstall
        self.torchInstaller = torchInstaller or self._pyTorchUtilsInstall
        self.requirements = list(requirements)
        self.torchRequirement = torchRequirement
        self.restartRequired = False

    # -- checking --------------------------------------------------------------
    def missingRequirements(self) -> list[str]:
        """Requirements (other than torch) not installed or too old."""
        missing = []
        for requirement in self.requirements:
            name, spec = _splitRequirement(requirement)
            version = installedVersion(name)
            if version is None or not _satisfied(version, spec):
                missing.append(requirement)
        return missing

    @staticmethod
    def missingFromSlicer() -> list[str]:
        """Packages Slicer should have shipped but that do not import (a broken Slicer install)."""
        return [r for r in SLICER_PROVIDED if importlib.util.find_spec(_splitRequirement(r)[0]) is None]

    def torchMissing(self) -> bool:
        version = installedVersion("torch")
        return version is None or not _satisfied(version, self.torchRequirement)

    def isReady(self) -> bool:
        return not self.torchMissing() and not self.missingRequirements() and not self.missingFromSlicer()

    def describeMissing(self) -> str:
        parts = []
        if self.torchMissing():
            version = installedVersion("torch")
            found = f"; {version} is installed, 'Install dependencies' upgrades it" if version else ""
            parts.append(f"torch{self.torchRequirement} (through the PyTorch extension{found})")
        parts += self.missingRequirements()
        parts += [f"{r} (part of Slicer: reinstall Slicer)" for r in self.missingFromSlicer()]
        return ", ".join(parts)

    def selfTestSkipReason(self) -> str:
        """Why the module's self-test cannot train here (empty when it can): it needs the worker's packages."""
        if self.isReady():
            return ""
        return f"the Python packages the training needs are missing ({self.describeMissing()}): click 'Install dependencies' in the module"

    # -- installing ------------------------------------------------------------
    def setupPythonRequirements(self, askConfirmation: bool = True) -> bool:
        """Install what is missing; False when the user declined. Raises :class:`InstallError` on failure."""
        broken = self.missingFromSlicer()
        if broken:
            raise InstallError(f"{', '.join(broken)} should come with Slicer but cannot be imported: reinstall Slicer (it must not be pip-installed).")
        missing = self.missingRequirements()
        torchMissing = self.torchMissing()
        if not missing and not torchMissing:
            return True
        if torchMissing:
            torchWasImported = "torch" in sys.modules
            try:
                torch = self.torchInstaller(self.torchRequirement)  # its own confirmation: it explains the CUDA build it picks
            except subprocess.CalledProcessError as exc:
                raise InstallError(_pipFailure("PyTorch", exc)) from None
            if torch is None:
                raise InstallError(
                    "PyTorch was not installed. Install the 'PyTorch' extension from the Extensions Manager, "
                    "then use its 'PyTorch Utils' module or click 'Install dependencies' again."
                )
            if self.torchMissing():
                raise InstallError(f"PyTorch{self.torchRequirement} is needed but {installedVersion('torch')} is still installed; see the Python console for the installer's messages.")
            self.restartRequired = self.restartRequired or torchWasImported  # the old torch stays loaded until a restart
            missing = self.missingRequirements()
        if missing:
            text = (
                "SemiSupUncertainty needs these Python packages in Slicer's Python:\n\n  "
                + "\n  ".join(missing)
                + "\n\nInstall them now? This can take several minutes."
            )
            if askConfirmation and not self.confirm(text):
                return False
            alreadyImported = [r for r in missing if _splitRequirement(r)[0].lower() in ("numpy", "scipy")]
            try:
                self.pipInstall(list(missing) + self._torchConstraint())
            except subprocess.CalledProcessError as exc:
                raise InstallError(_pipFailure(", ".join(missing), exc)) from None
            self.restartRequired = self.restartRequired or bool(alreadyImported)
            still = self.missingRequirements()
            if still:
                raise InstallError("these packages could not be installed: " + ", ".join(still) + " (see the Python console for pip's messages)")
        return True

    def _torchConstraint(self) -> list[str]:
        version = installedVersion("torch")
        if not version:
            return []
        path = Path(tempfile.gettempdir()) / "SemiSupUncertainty-torch-constraint.txt"
        path.write_text(f"torch=={version}\n")
        return ["-c", str(path)]

    # -- Slicer defaults -------------------------------------------------------
    @staticmethod
    def _slicerConfirm(text: str) -> bool:
        import slicer

        return slicer.util.confirmOkCancelDisplay(text, "SemiSupUncertainty: install Python packages")

    @staticmethod
    def _slicerPipInstall(requirements: list[str]) -> None:
        import slicer

        slicer.util.pip_install(requirements)

    @staticmethod
    def _pyTorchUtilsInstall(torchVersionRequirement: str):
        try:
            import PyTorchUtils
        except ImportError:
            raise InstallError(
                "The PyTorch extension is not installed: install 'PyTorch' from the Extensions Manager and restart Slicer."
            ) from None
        return installTorchWithPyTorchUtils(PyTorchUtils.PyTorchUtilsLogic(), torchVersionRequirement)


def installTorchWithPyTorchUtils(logic, torchVersionRequirement: str):
    """torch meeting the requirement through the PyTorch extension's logic: installed, or upgraded when too old.

    Follows SlicerPyTorch's PyTorchUtils/PyTorchUtils.py: ``torchInstalled()`` is only
    "imports", so a torch below the floor must be upgraded explicitly with
    ``installTorch(askConfirmation=True, torchVersionRequirement=...)`` (light-the-torch,
    CUDA build for the driver); it raises ``CalledProcessError`` when the installer fails.
    """
    version = installedVersion("torch")
    if logic.torchInstalled() and version is not None and _satisfied(version, torchVersionRequirement):
        import torch

        return torch
    return logic.installTorch(askConfirmation=True, torchVersionRequirement=torchVersionRequirement)


def _pipFailure(what: str, exc: subprocess.CalledProcessError) -> str:
    command = " ".join(str(a) for a in exc.cmd) if isinstance(exc.cmd, (list, tuple)) else str(exc.cmd)
    return (
        f"Installing {what} failed (exit code {exc.returncode} of: {command}). Check the internet connection and the "
        "Python console for pip's messages, then click 'Install dependencies' again."
    )
