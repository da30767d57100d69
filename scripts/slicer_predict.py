"""Segment image files with a trained run: segmentations, uncertainty maps and a ranking.

    Slicer --no-main-window --python-script <scripts>/slicer_predict.py -- \
        --run-dir runs/liver --input ct5.nrrd ct6.nrrd --output-dir results

``<scripts>`` is ``scripts/`` of a checkout, or ``<extension>/lib/Slicer-X.Y/qt-scripted-modules/scripts``
of an installed extension (docs/slicer.md). Writes ``<output>/<name>.seg.nrrd`` (one
segment per class, on the input's grid), ``<name>_uncertainty.nrrd`` and
``uncertainty_ranking.csv`` (most uncertain first: label those next). The script
always ends with an exit code: 0 finished, 2 bad input, 3 cancelled, 1 anything
else; the message is on stderr. Also runs with plain Python when the ``slicer-core`` wheel is installed.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # headless_boot.py lies beside every script
from headless_boot import run  # noqa: E402

if __name__ == "__main__":
    run("predictMain")
