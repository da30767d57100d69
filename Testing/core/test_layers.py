"""The package's layers (docs/DEVELOPING.md): every import points down, never up.

Each module's imports, including those inside functions, are read from its source;
an import of a higher layer, or of the package's face (``semisup/__init__``), fails.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "SemiSupUncertainty" / "semisup"

#: Bottom to top. A module may import its own layer's part and any lower rank.
LAYERS: dict[str, int] = {
    "_version": 0,
    "config": 0,
    "protocol": 0,
    "data": 1,
    "networks": 1,
    "measure": 2,
    "inference": 2,
    "methods": 3,
    "engine": 4,
    "commands": 5,
    "cli": 6,
    "__main__": 7,
    "__init__": 7,
}


def _part(module: str) -> str:
    """``semisup.engine.trainer`` -> ``engine``; ``semisup`` -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _module_name(path: Path, root: Path = PACKAGE) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path, root: Path = PACKAGE) -> list[tuple[int, str]]:
    """(line, absolute module) for every ``semisup`` import in ``path``."""
    name = _module_name(path, root)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "semisup"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            if target.split(".")[0] != "semisup":
                continue
            if target == "semisup":  # `from . import x` names submodules or the face's attributes
                for alias in node.names:
                    sub = f"semisup.{alias.name}"
                    found.append((node.lineno, sub if _part(sub) in LAYERS else "semisup"))
            else:
                found.append((node.lineno, target))
    return found


MODULES = sorted(p for p in PACKAGE.rglob("*.py"))


def test_every_part_has_a_layer():
    parts = {_part(_module_name(p)) for p in MODULES}
    assert parts <= set(LAYERS), f"new top-level parts need a layer in LAYERS and docs/DEVELOPING.md: {parts - set(LAYERS)}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down(path: Path):
    own = _part(_module_name(path))
    upward = [
        f"line {line}: {target}"
        for line, target in _imports(path)
        if _part(target) != own and LAYERS[_part(target)] >= LAYERS[own] or (target == "semisup" and own != "__init__")
    ]
    assert not upward, f"{path.relative_to(PACKAGE)} ({own}, layer {LAYERS[own]}) imports upward: {upward}"


def test_the_checker_sees_an_upward_import_inside_a_function(tmp_path):
    root = tmp_path / "semisup"
    (root / "data").mkdir(parents=True)
    module = root / "data" / "x.py"
    module.write_text("from . import io\nfrom .._version import __version__\n\n\ndef f():\n    from ..engine import predict\n")
    found = _imports(module, root)
    assert found == [(1, "semisup.data"), (2, "semisup._version"), (6, "semisup.engine")]
    assert [t for _, t in found if LAYERS[_part(t)] > LAYERS["data"]] == ["semisup.engine"]
