"""The extension's build files, module layout and import hygiene (no GUI or torch at import)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MODULE = REPO / "SemiSupUncertainty"


def test_top_level_cmake_declares_the_extension_and_its_pytorch_dependency():
    text = (REPO / "CMakeLists.txt").read_text()
    assert re.search(r"project\(SemiSupUncertainty\)", text)
    assert re.search(r"set\(EXTENSION_DEPENDS\s+PyTorch\)", text)
    for key in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_DESCRIPTION", "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS"):
        assert key in text
    assert "add_subdirectory(SemiSupUncertainty)" in text and "include(${Slicer_EXTENSION_GENERATE_CONFIG})" in text


def test_extension_urls_point_at_the_stated_home_and_at_files_that_exist():
    text = (REPO / "CMakeLists.txt").read_text()
    home = "https://github.com/SemiSupUncertainty/SlicerSemiSupUncertainty"
    assert re.search(r'set\(EXTENSION_HOMEPAGE "' + re.escape(home), text) and "intended public home" in text
    icon = re.search(r'set\(EXTENSION_ICONURL "https://raw.githubusercontent.com/SemiSupUncertainty/SlicerSemiSupUncertainty/main/(\S+)"\)', text)
    assert icon and (REPO / icon.group(1)).is_file()
    screenshots = re.search(r'set\(EXTENSION_SCREENSHOTURLS "([^"]*)"\)', text).group(1).split()
    prefix = "https://raw.githubusercontent.com/SemiSupUncertainty/SlicerSemiSupUncertainty/main/"
    for url in screenshots:  # only real, committed captures
        assert url.startswith(prefix) and (REPO / url[len(prefix):]).is_file(), url


def test_module_cmake_installs_every_file_the_module_needs():
    text = (MODULE / "CMakeLists.txt").read_text()
    listed = set(re.findall(r"SemiSupUncertaintyLib/(\w+\.py)", text))
    assert listed == {p.name for p in (MODULE / "SemiSupUncertaintyLib").glob("*.py")}  # every file, and no removed one
    assert "slicerMacroBuildScriptedModule" in text
    assert "Resources/UI/SemiSupUncertainty.ui" in text and "Resources/Icons/SemiSupUncertainty.png" in text
    assert "SemiSupUncertaintySelfTest.py" in text
    assert "semisup/*.py" in text  # the core library ships inside the extension


def test_the_module_file_stays_thin():
    assert len((MODULE / "SemiSupUncertainty.py").read_text().splitlines()) <= 120


def test_library_imports_without_qt_slicer_gui_or_torch():
    code = (
        "import sys; sys.path.insert(0, %r)\n"
        "import SemiSupUncertaintyLib as L\n"
        "from SemiSupUncertaintyLib import Logic, SceneExporter, SceneImporter, WorkerProcess, Parameters, InstallLogic, DeviceInfo, Protocols\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('qt', 'ctk', 'PySide6', 'torch', 'monai', 'slicer'))\n"
        "print(bad)\n"
    ) % str(MODULE)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_resources_are_found_in_a_checkout():
    from SemiSupUncertaintyLib.Paths import resourcePath, selfTestDir

    assert resourcePath("UI/SemiSupUncertainty.ui") == REPO / "Resources" / "UI" / "SemiSupUncertainty.ui"
    assert selfTestDir() == REPO / "Testing" / "SelfTest"


def _attributesUsedOn(source: str, owner: str) -> set[str]:
    """Names ``x`` in ``self.<owner>.x`` in ``source``."""
    import ast

    used = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) and node.value.attr == owner:
            if isinstance(node.value.value, ast.Name) and node.value.value.id == "self":
                used.add(node.attr)
    return used


def test_the_widget_only_uses_what_the_protocols_promise():
    """The widget depends on the Protocols, so another logic can be plugged in; the real ones satisfy them."""
    from SemiSupUncertaintyLib import InstallLogic, SemiSupUncertaintyLogic
    from SemiSupUncertaintyLib.Protocols import InstallLogicProtocol, JobProtocol, LogicProtocol

    def members(protocol) -> set[str]:
        return {n for n in dir(protocol) if not n.startswith("_")} | set(getattr(protocol, "__annotations__", {}))

    source = (MODULE / "SemiSupUncertaintyLib" / "Widget.py").read_text()
    assert _attributesUsedOn(source, "logic") <= members(LogicProtocol)
    assert _attributesUsedOn(source, "installLogic") <= members(InstallLogicProtocol) | {"restartRequired"}
    assert _attributesUsedOn(source, "trainJob") | _attributesUsedOn(source, "predictJob") <= members(JobProtocol)
    assert isinstance(SemiSupUncertaintyLogic(scene=object()), LogicProtocol)
    assert isinstance(InstallLogic(), InstallLogicProtocol)


def test_reload_picks_up_changed_library_files(tmp_path):
    """What the module's onReload calls: an edited library file is used after the reload, without a restart."""
    import shutil
    import textwrap

    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(MODULE / "SemiSupUncertaintyLib", tmp_path / "SemiSupUncertaintyLib", ignore=ignore)
    shutil.copytree(MODULE / "semisup", tmp_path / "semisup", ignore=ignore)
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(tmp_path)!r})
        import SemiSupUncertaintyLib
        from SemiSupUncertaintyLib import Paths
        from semisup.protocol import tracker
        old = (sys.modules["SemiSupUncertaintyLib.SceneImporter"].CLASS_COLORS[0], tracker.format_duration(5))
        lib = {str(tmp_path / "SemiSupUncertaintyLib")!r}
        core = {str(tmp_path / "semisup" / "protocol" / "tracker.py")!r}
        path = lib + "/SceneImporter.py"
        for file, old_text, new_text in ((path, "(0.90, 0.62, 0.00),", "(0.11, 0.22, 0.33),"), (core, 'return f"{{seconds}} s"', 'return f"{{seconds}} seconds"')):
            text = open(file).read()
            open(file, "w").write(text.replace(old_text, new_text, 1))
        reloaded = Paths.reloadLibraries()
        S = sys.modules["SemiSupUncertaintyLib.SceneImporter"]
        from semisup.protocol import tracker as T
        print(old, (S.CLASS_COLORS[0], T.format_duration(5)), "SemiSupUncertaintyLib.Widget" not in reloaded, S.SceneImporter is sys.modules["SemiSupUncertaintyLib"].SceneImporter)
    """)
    out = subprocess.run([sys.executable, "-B", "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "((0.9, 0.62, 0.0), '5 s') ((0.11, 0.22, 0.33), '5 seconds') True True"
    assert "reloadLibraries()" in (MODULE / "SemiSupUncertainty.py").read_text()


def test_on_an_older_slicer_the_module_loads_and_says_why(tmp_path):
    """The module file under Slicer 5.8 (Python 3.9 reported): it loads, names the problem, and imports no library.

    Slicer's application and its ScriptedLoadableModule base classes (Qt) are stood in for.
    """
    import textwrap

    code = textwrap.dedent(f"""
        import runpy, sys, types
        import slicer
        slicer.app = types.SimpleNamespace(majorVersion=5, minorVersion=8)
        base = types.ModuleType("slicer.ScriptedLoadableModule")
        class Module:
            def __init__(self, parent):
                self.parent = parent
        class Logic:
            def __init__(self):
                pass
        base.ScriptedLoadableModule, base.ScriptedLoadableModuleLogic = Module, Logic
        base.ScriptedLoadableModuleTest = base.ScriptedLoadableModuleWidget = object
        sys.modules["slicer.ScriptedLoadableModule"] = base
        sys.modules["qt"] = types.SimpleNamespace(QIcon=str)
        sys.version_info = (3, 9, 10)  # what Slicer 5.8 runs
        module = runpy.run_path({str(MODULE / "SemiSupUncertainty.py")!r})
        parent = types.SimpleNamespace()
        module["SemiSupUncertainty"](parent)
        module["SemiSupUncertaintyLogic"]()
        print(parent.helpText.split("<br>")[0])
        print(sorted(m for m in sys.modules if m.startswith("SemiSupUncertaintyLib")))
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    first, imported = done.stdout.strip().splitlines()
    assert first.startswith("<b>SemiSupUncertainty needs 3D Slicer 5.10 or later") and "this is Slicer 5.8 with Python 3.9" in first
    assert imported == "[]"
    assert "needs 3D Slicer 5.10 or later" in done.stderr  # logged too
