import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
# Every progress event written during the tests (workers included: they inherit the
# environment) is checked against the schema in semisup/protocol/events.py.
os.environ.setdefault("SEMISUP_VALIDATE_EVENTS", "1")

REPO = Path(__file__).resolve().parents[1]
# The core library is importable without installation when tests run from a checkout.
sys.path.insert(0, str(REPO / "SemiSupUncertainty"))

try:
    import torch

    torch.set_num_threads(1)
except ImportError:  # pragma: no cover - torch is a hard dependency of the core tests
    pass

SHARED_DATA = (REPO.parent / "shared" / "data").resolve()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real datasets beside the checkout; skip where a user's machine lacks them."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real datasets not found at {SHARED_DATA} (only on the development machines)")
    return SHARED_DATA


def _load_script(name: str):
    import importlib.util

    folder = REPO / "benchmarks"
    if str(folder) not in sys.path:  # as `python benchmarks/<name>.py` has it, for `import harness`
        sys.path.append(str(folder))
    path = folder / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def load_script():
    """``load_script(name)`` imports ``benchmarks/<name>.py`` (the benchmarks are not a package)."""
    return _load_script
