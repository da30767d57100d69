#!/bin/bash
# Calibration before/after on a trained ACDC model: the simulate-labelling model of seed 0, 'random', 12 labeled volumes
# (supervised 2D U-Net, 3 x 200 warm-started iterations). T fitted on 20 volumes of 10 patients outside the loop's
# pool and held-out set; measured on the loop's 20 held-out validation volumes.
set -e
export OMP_NUM_THREADS=1
R=runs/cal_acdc/run
D=runs/cal_acdc/dataset.json
IMGS=$(python -c "import json;print(' '.join(c['image'] for c in json.load(open('$D'))['test']))")
semisup calibrate --run-dir $R --dataset $D --progress none
semisup predict --run-dir $R --input $IMGS --output-dir runs/cal_acdc/before --save-probabilities --no-calibration --progress none
semisup predict --run-dir $R --input $IMGS --output-dir runs/cal_acdc/after --save-probabilities --progress none
semisup evaluate --predictions runs/cal_acdc/before --dataset $D --split test --worst 3 --progress none
semisup evaluate --predictions runs/cal_acdc/after --dataset $D --split test --progress none
