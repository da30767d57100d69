"""The command line's help and the demo pipeline, run for real (few iterations)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from semisup.commands.demo import run_demo

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("verb", ["train", "predict", "evaluate", "demo"])
def test_every_verb_has_help(verb):
    out = subprocess.run(
        [sys.executable, "-m", "semisup", verb, "--help"],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(REPO / "SemiSupUncertainty"), "PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 0, out.stderr
    assert f"usage: semisup {verb}" in out.stdout


@pytest.mark.slow
def test_demo_writes_predictions_uncertainty_and_report(tmp_path):
    paths = run_demo(tmp_path / "demo", iterations=4)
    report = paths["markdown"].read_text()
    assert "organ/dice" in report and "report.png" in report
    assert paths["figure"].stat().st_size > 10_000
    pred = tmp_path / "demo" / "predictions"
    scores = json.loads((pred / "scores.json").read_text())
    assert len(scores["cases"]) == 2 and "uncertainty" in scores["maps"]
    for case in scores["cases"]:
        for kind in ("label", "uncertainty", "mutual_information"):
            assert Path(case[kind]).exists()
    metrics = json.loads((pred / "metrics.json").read_text())
    assert metrics["summary"]["n_cases"] == 2
