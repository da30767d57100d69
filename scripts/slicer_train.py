"""Train from image and segmentation files, headless, with Slicer's Python.

    Slicer --no-main-window --python-script <scripts>/slicer_train.py -- \
        --labeled ct1.nrrd ct1.seg.nrrd --labeled ct2.nrrd ct2.seg.nrrd \
        --unlabeled ct3.nrrd ct4.nrrd --run-dir runs/liver --iterations 2000

``<scripts>`` is ``scripts/`` of a checkout, or ``<extension>/lib/Slicer-X.Y/qt-scripted-modules/scripts``
of an installed extension (docs/slicer.md). Segmentations are ``.seg.nrrd`` files
(segment names are the classes) or label maps with ``--classes``. The script always
ends with an exit code: 0 finished, 2 bad input, 3 cancelled (Ctrl+C cancels
gracefully; ``--resume`` continues), 1 anything else; the message is on stderr. Also
runs with plain Python when the ``slicer-core`` wheel is installed.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # headless_boot.py lies beside every script
from headless_boot import run  # noqa: E402

if __name__ == "__main__":
    run("trainMain")
