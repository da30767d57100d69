"""SemiSupUncertainty module: descriptor, a panel embedding ``SemiSupUncertaintyLib.Widget``, the
self-test and the supported-version check; the rest is in ``SemiSupUncertaintyLib`` and ``semisup``."""

import logging
import sys
from pathlib import Path

import slicer
from slicer.ScriptedLoadableModule import ScriptedLoadableModule, ScriptedLoadableModuleLogic, ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget

# `semisup` (the core library) and `SemiSupUncertaintyLib` live beside this file.
_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from semisup._version import slicer_compatibility_problem  # noqa: E402  (plain Python, any version)

# Checked before the library is imported: on an older Slicer the module loads, says why it cannot work, and stops.
UNSUPPORTED = slicer_compatibility_problem((slicer.app.majorVersion, slicer.app.minorVersion), sys.version_info[:2])
if UNSUPPORTED:
    logging.error(UNSUPPORTED)

    class _Logic:  # a base of its own: (object, ScriptedLoadableModuleLogic) has no consistent MRO
        __init__ = lambda self, *args, **kwargs: None  # noqa: E731

else:
    from SemiSupUncertaintyLib import SemiSupUncertaintyLogic as _Logic  # noqa: E402  (no qt, no torch)


class SemiSupUncertainty(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "SemiSupUncertainty"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["SemiSupUncertainty contributors"]
        self.parent.helpText = (f"<b>{UNSUPPORTED}</b><br>" if UNSUPPORTED else "") + (
            "Train an uncertainty-aware semi-supervised segmentation model (UA-MT and others) from a few labeled "
            "and many unlabeled volumes of the scene, in a background process; load predictions, uncertainty maps "
            "and a ranking of the volumes to label next. Console and headless use: see docs/slicer.md."
        )
        self.parent.acknowledgementText = (
            "Methods from Yu et al. (UA-MT, MICCAI 2019) and follow-up work; built on PyTorch and MONAI. "
            "Structure after KitwareMedical/SlicerNNUnet and lassoan/SlicerMONAIAuto3DSeg."
        )
        icons = [Path(_HERE, *p, "Icons", "SemiSupUncertainty.png") for p in (["Resources"], ["..", "Resources"])]
        for icon in (p for p in icons if p.exists()):  # installed, then checkout (SemiSupUncertaintyLib/Paths.py)
            import qt

            self.parent.icon = qt.QIcon(str(icon))
            break


class SemiSupUncertaintyWidget(ScriptedLoadableModuleWidget):
    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        if UNSUPPORTED:
            import qt

            label = qt.QLabel(UNSUPPORTED)
            label.wordWrap = True
            self.layout.addWidget(label)
            return
        from SemiSupUncertaintyLib import InstallLogic, Widget

        self.logic = SemiSupUncertaintyLogic()
        self.widget = Widget(logic=self.logic, installLogic=InstallLogic())
        self.layout.addWidget(self.widget)
        self.layout.addStretch()

    def enter(self):
        getattr(getattr(self, "widget", None), "onEnter", lambda: None)()

    def cleanup(self):
        getattr(getattr(self, "widget", None), "cleanup", lambda: None)()

    def onReload(self):
        """Developer mode's Reload: the library modules too, not only this file (as SlicerNNUnet's onReload)."""
        from SemiSupUncertaintyLib.Paths import reloadLibraries

        reloadLibraries()
        ScriptedLoadableModuleWidget.onReload(self)


class SemiSupUncertaintyLogic(_Logic, ScriptedLoadableModuleLogic):
    """The console API (``slicer.util.getModuleLogic("SemiSupUncertainty")``); see SemiSupUncertaintyLib/Logic.py."""

    def __init__(self, *args, **kwargs):
        ScriptedLoadableModuleLogic.__init__(self)
        _Logic.__init__(self, *args, **kwargs)


class SemiSupUncertaintyTest(ScriptedLoadableModuleTest):
    """Whole flow on a small synthetic scene; skipped with the reason where its packages are missing (as SlicerNNUnet's)."""

    def skipReason(self) -> str:
        from SemiSupUncertaintyLib import InstallLogic

        return UNSUPPORTED or InstallLogic().selfTestSkipReason()

    def runTest(self):  # Reload and Test: say why instead of raising SkipTest into a dialog
        slicer.mrmlScene.Clear()
        reason = self.skipReason()
        if reason:
            self.delayDisplay(f"SemiSupUncertainty self-test skipped: {reason}")
            return
        self.test_SemiSupUncertaintyWholeFlow()

    def test_SemiSupUncertaintyWholeFlow(self):  # what ctest runs (unittest: a skip is not a failure)
        import tempfile
        from SemiSupUncertaintyLib.Paths import selfTestDir

        if self.skipReason():
            self.skipTest(self.skipReason())
        sys.path.insert(0, str(selfTestDir()))
        from SemiSupUncertaintySelfTest import runSelfTest

        with tempfile.TemporaryDirectory() as workDir:
            runSelfTest(SemiSupUncertaintyLogic(runsDirectory=workDir), log=self.delayDisplay)
        self.delayDisplay("SemiSupUncertainty self-test passed")
