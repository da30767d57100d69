"""What only the Slicer module writes into a run folder; the run's state is ``semisup.protocol.run_folder``."""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["classStylesOfRun"]


def classStylesOfRun(runDir: str | Path) -> dict[str, dict]:
    """Colour and terminology per class as the module exported them (``slicer-cases.json``); empty if unknown."""
    path = Path(runDir) / "slicer-cases.json"
    try:
        styles = json.loads(path.read_text()).get("classStyles", {}) if path.is_file() else {}
    except ValueError:
        return {}
    return styles if isinstance(styles, dict) else {}
