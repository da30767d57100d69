"""benchmarks/gpu_la_full.py --smoke: the GPU script's whole path on the CPU in seconds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_smoke_runs_on_the_cpu(tmp_path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO / "SemiSupUncertainty"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_la_full.py"), "--smoke", "--out", str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "gpu_la_full.json").read_text())
    assert result["smoke"] is True and result["iterations_done"] == result["planned_iterations"] == 3
    assert result["report_cases"] == 2 and 0.0 <= result["dice_mean"] <= 1.0
    assert result["mc_inference_seconds_one_volume"] > 0 and result["volume_shape"] == [32, 32, 16]
    # The report cases were never a validation list of the training run.
    assert "validation" not in json.loads((tmp_path / "data" / "dataset_train.json").read_text())
