"""Dependency checks against the real installed packages; the install flow with the Slicer calls swapped."""

from __future__ import annotations

import re
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = None

import pytest

import subprocess

from SemiSupUncertaintyLib.InstallLogic import REQUIREMENTS, SLICER_PROVIDED, TORCH_REQUIREMENT, InstallError, InstallLogic, installTorchWithPyTorchUtils, installedVersion

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(tomllib is None, reason="tomllib needs Python 3.11")
def test_requirements_match_the_core_library_pyproject():
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    torch = [d for d in deps if re.match(r"torch\b", d)]
    assert torch == [f"torch{TORCH_REQUIREMENT}"]
    assert sorted(d for d in deps if d not in torch) == sorted(REQUIREMENTS + SLICER_PROVIDED)
    assert not any(r.lower().startswith("simpleitk") for r in REQUIREMENTS)  # Slicer's own SimpleITK is used


def test_supported_versions_agree_everywhere():
    """pyproject's requires-python, the Slicer floor and the module's load-time check say the same."""
    from semisup._version import REQUIRES_PYTHON, SLICER_MINIMUM, SLICER_PYTHON, slicer_compatibility_problem

    floor = re.search(r'requires-python = ">=(\d+)\.(\d+)"', (REPO / "pyproject.toml").read_text())
    assert tuple(map(int, floor.groups())) == REQUIRES_PYTHON == (3, 10)
    assert SLICER_MINIMUM == (5, 10) and SLICER_PYTHON[SLICER_MINIMUM] >= REQUIRES_PYTHON > SLICER_PYTHON[(5, 8)]
    assert slicer_compatibility_problem((5, 10), (3, 12)) == ""
    problem = slicer_compatibility_problem((5, 8), (3, 9))
    assert "needs 3D Slicer 5.10 or later" in problem and "Slicer 5.8 with Python 3.9" in problem
    assert slicer_compatibility_problem((5, 10), (3, 9))  # a custom build with an old Python
    module = (REPO / "SemiSupUncertainty" / "SemiSupUncertainty.py").read_text()
    assert "slicer_compatibility_problem(" in module  # checked when the module loads
    assert module.index("slicer_compatibility_problem(") < module.index("from SemiSupUncertaintyLib")  # before the library imports
    docs = (REPO / "docs" / "slicer.md").read_text()
    assert "Slicer 5.10" in docs and "Python 3.12" in docs


def test_installed_packages_are_recognised():
    logic = InstallLogic()
    assert logic.missingRequirements() == []  # this test environment has the core library's dependencies
    assert not logic.torchMissing() and logic.isReady()


def test_missing_and_too_old_packages_are_listed():
    logic = InstallLogic(requirements=["numpy>=1.0", "numpy>=999", "surely-not-installed-package>=1"], torchRequirement=">=999")
    assert logic.missingRequirements() == ["numpy>=999", "surely-not-installed-package>=1"]
    assert logic.torchMissing()
    assert logic.describeMissing() == (
        f"torch>=999 (through the PyTorch extension; {installedVersion('torch')} is installed, 'Install dependencies' upgrades it), "
        "numpy>=999, surely-not-installed-package>=1"
    )


class Recorder:
    """Stands in for the Slicer application layer (dialogs, pip, the PyTorch extension)."""

    def __init__(self, answer: bool = True, torchResult: object = "torch", afterTorch=None) -> None:
        self.answer, self.torchResult, self.afterTorch = answer, torchResult, afterTorch
        self.calls: list[tuple] = []

    def confirm(self, text: str) -> bool:
        self.calls.append(("confirm", text))
        return self.answer

    def pip(self, requirements: list[str]) -> None:
        self.calls.append(("pip", requirements))

    def torch(self, requirement: str):
        self.calls.append(("torch", requirement))
        if self.afterTorch:
            self.afterTorch()
        return self.torchResult


def test_torch_first_then_one_confirmation_listing_the_others_with_torch_pinned():
    app = Recorder(afterTorch=lambda: setattr(logic, "torchRequirement", ">=1"))  # as if torch had been upgraded
    logic = InstallLogic(app.confirm, app.pip, app.torch, requirements=["surely-not-installed-package>=1", "numpy>=1.0"], torchRequirement=">=999")
    with pytest.raises(InstallError, match="could not be installed: surely-not-installed-package"):
        logic.setupPythonRequirements()  # the recorder installs nothing
    kinds = [c[0] for c in app.calls]
    assert kinds == ["torch", "confirm", "pip"]
    assert app.calls[0][1] == ">=999"
    assert "surely-not-installed-package>=1" in app.calls[1][1] and "numpy" not in app.calls[1][1]
    pipArgs = app.calls[2][1]
    assert pipArgs[0] == "surely-not-installed-package>=1" and pipArgs[1] == "-c"
    assert Path(pipArgs[2]).read_text().startswith("torch==")  # pip cannot swap the CUDA build of torch


def test_declining_installs_nothing():
    app = Recorder(answer=False)
    logic = InstallLogic(app.confirm, app.pip, app.torch, requirements=["surely-not-installed-package>=1"])
    assert logic.setupPythonRequirements() is False
    assert [c[0] for c in app.calls] == ["confirm"]


def test_torch_not_installed_stops_with_advice():
    app = Recorder(torchResult=None)
    logic = InstallLogic(app.confirm, app.pip, app.torch, requirements=[], torchRequirement=">=999")
    with pytest.raises(InstallError, match="PyTorch was not installed"):
        logic.setupPythonRequirements()


def test_nothing_to_do_asks_nothing():
    app = Recorder()
    assert InstallLogic(app.confirm, app.pip, app.torch).setupPythonRequirements() is True
    assert app.calls == []


def test_torch_not_upgraded_is_said_plainly():
    app = Recorder()
    logic = InstallLogic(app.confirm, app.pip, app.torch, requirements=[], torchRequirement=">=999")
    with pytest.raises(InstallError, match=r"PyTorch>=999 is needed but .* is still installed"):
        logic.setupPythonRequirements()


def failingPip(requirements: list[str]) -> None:
    """A real pip that fails (offline, a package that does not exist): CalledProcessError, as slicer.util.pip_install raises."""
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "--disable-pip-version-check", "-q", *requirements], check=True, capture_output=True)


def test_a_failing_pip_is_an_install_error_in_plain_words():
    app = Recorder()
    logic = InstallLogic(app.confirm, failingPip, app.torch, requirements=["surely-not-installed-package>=1"])
    with pytest.raises(InstallError, match=r"Installing surely-not-installed-package>=1 failed \(exit code 1 of: .*pip install.*'Install dependencies' again"):
        logic.setupPythonRequirements()


def test_a_failing_pytorch_installer_is_an_install_error_in_plain_words():
    def torchInstaller(requirement):
        failingPip([f"torch-surely-not-a-package{requirement}"])

    logic = InstallLogic(Recorder().confirm, failingPip, torchInstaller, requirements=[], torchRequirement=">=999")
    with pytest.raises(InstallError, match="Installing PyTorch failed"):
        logic.setupPythonRequirements()


class PyTorchUtilsLogicRecorder:
    """The two calls of SlicerPyTorch's PyTorchUtilsLogic that the install uses (the extension needs Slicer's application)."""

    def __init__(self) -> None:
        self.installs: list[str] = []

    def torchInstalled(self) -> bool:
        return True

    def installTorch(self, askConfirmation: bool, torchVersionRequirement: str):
        assert askConfirmation
        self.installs.append(torchVersionRequirement)
        return "upgraded torch"


def test_torch_older_than_the_floor_is_upgraded_not_accepted():
    utils = PyTorchUtilsLogicRecorder()
    assert installTorchWithPyTorchUtils(utils, ">=999") == "upgraded torch" and utils.installs == [">=999"]
    import torch

    assert installTorchWithPyTorchUtils(utils, TORCH_REQUIREMENT) is torch and utils.installs == [">=999"]


def test_the_self_test_skips_with_the_reason_where_packages_are_missing():
    assert InstallLogic().selfTestSkipReason() == ""  # this environment can train
    reason = InstallLogic(torchRequirement=">=999").selfTestSkipReason()
    assert reason.startswith("the Python packages the training needs are missing (torch>=999") and "Install dependencies" in reason
    module = (REPO / "SemiSupUncertainty" / "SemiSupUncertainty.py").read_text()
    assert "self.skipTest(" in module and "selfTestSkipReason()" in module
