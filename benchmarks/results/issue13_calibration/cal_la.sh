#!/bin/bash
# Calibration before/after on a trained LA2018 model: fold 0 of 5, supervised, 2000 iterations (bench_la cpu setting).
# T fitted on the fold's 8 validation cases; measured on the fold's 16 report cases (never trained on, not used in the fit).
set -e
export OMP_NUM_THREADS=1
R=runs/cv_la/fold0of5/supervised-s1337
REP=runs/cv_la/fold0of5/dataset_report.json
IMGS=$(python -c "import json;print(' '.join(c['image'] for c in json.load(open('$REP'))['validation']))")
/usr/bin/time -f "calibrate %e s" semisup calibrate --run-dir $R --progress none
/usr/bin/time -f "predict before %e s" semisup predict --run-dir $R --input $IMGS --output-dir runs/cal_la/before --save-probabilities --no-calibration --progress none
/usr/bin/time -f "predict after %e s" semisup predict --run-dir $R --input $IMGS --output-dir runs/cal_la/after --save-probabilities --progress none
semisup evaluate --predictions runs/cal_la/before --dataset $REP --split validation --worst 4 --progress none
semisup evaluate --predictions runs/cal_la/after --dataset $REP --split validation --progress none
