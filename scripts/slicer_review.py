"""Accept corrected segmentations of predicted volumes and continue training from the run's model.

    Slicer --no-main-window --python-script <scripts>/slicer_review.py -- \
        --run-dir runs/liver --prediction-dir results/worker/outputs \
        --accept ct5.nrrd ct5_corrected.seg.nrrd --accept ct6.nrrd ct6_labels.nrrd \
        --continue-iterations 1000

``--prediction-dir`` is the folder holding the prediction's ``scores.csv`` (for
``slicer_predict.py --output-dir results`` it is ``results/worker/outputs``). Each
accepted pair is compared with its prediction (Dice, ml changed; printed and stored in
``review.json`` beside that folder) and stored in ``accepted/``. With
``--continue-iterations`` a new run folder (``--new-run-dir``, default beside the run)
trains from the run's checkpoint on the enlarged labeled set and names its parent in
``parent.json``; the run itself is never modified. Exit codes: 0 done, 1 failed, 2 bad
input (nothing stored for the volume named), 3 cancelled. See docs/slicer.md.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # headless_boot.py lies beside every script
from headless_boot import run  # noqa: E402

if __name__ == "__main__":
    run("reviewMain")
