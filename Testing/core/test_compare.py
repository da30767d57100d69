"""semisup.measure.compare: paired per-case comparison of two evaluated runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from semisup.cli import EXIT_BAD_INPUT, EXIT_OK, main
from semisup.measure.compare import compare_metrics
from semisup.data import DataError


def _metrics(folder: Path, dice: dict[str, float], hd95: dict[str, float] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    cases = [{"case": name, "mean": {"dice": d, "jaccard": d / (2 - d), "hd95": (hd95 or {}).get(name, 1.0), "asd": 0.5}}
             for name, d in dice.items()]
    (folder / "metrics.json").write_text(json.dumps({"cases": cases, "summary": {}}))
    return folder / "metrics.json"


def test_counts_medians_and_exact_wilcoxon_on_hand_made_cases(tmp_path):
    base = _metrics(tmp_path / "a", {f"c{i}": 0.5 for i in range(5)})
    # Five positive differences 0.01..0.05: the exact two-sided signed-rank p is 2 / 2^5.
    cand = _metrics(tmp_path / "b", {f"c{i}": 0.5 + 0.01 * (i + 1) for i in range(5)})
    r = compare_metrics(base, cand, "dice")
    assert (r.cases, r.improved, r.worsened) == (5, 5, 0)
    assert r.mean_difference == pytest.approx(0.03) and r.median_difference == pytest.approx(0.03)
    assert r.p_value == pytest.approx(2 / 32)
    assert "better on 5/5 cases" in r.summary()


def test_distances_count_smaller_as_better_and_even_median(tmp_path):
    dice = {"c0": 0.8, "c1": 0.8, "c2": 0.8, "c3": 0.8}
    base = _metrics(tmp_path / "a", dice, hd95={"c0": 10.0, "c1": 10.0, "c2": 10.0, "c3": 10.0})
    cand = _metrics(tmp_path / "b", dice, hd95={"c0": 8.0, "c1": 9.0, "c2": 12.0, "c3": 6.0})
    r = compare_metrics(base.parent, cand.parent, "hd95")  # folders work too
    assert (r.improved, r.worsened) == (3, 1)
    assert r.median_difference == pytest.approx(-1.5)  # of (-4, -2, -1, +2)
    same = compare_metrics(base, base, "dice")
    assert same.p_value is None and same.improved == same.worsened == 0


def test_refuses_different_cases_missing_files_and_unknown_metrics(tmp_path):
    base = _metrics(tmp_path / "a", {"c0": 0.5, "c1": 0.6})
    other = _metrics(tmp_path / "b", {"c0": 0.5, "c9": 0.6})
    with pytest.raises(DataError, match="different cases"):
        compare_metrics(base, other)
    with pytest.raises(DataError, match="run `semisup evaluate` first"):
        compare_metrics(base, tmp_path / "nowhere")
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(DataError, match="bad.json: not a metrics.json"):
        compare_metrics(base, tmp_path / "bad.json")
    with pytest.raises(DataError, match="metric must be one of"):
        compare_metrics(base, base, "volume")


def test_cli_prints_the_summary_and_a_json_event(tmp_path, capsys):
    base = _metrics(tmp_path / "a", {"c0": 0.5, "c1": 0.6, "c2": 0.7})
    cand = _metrics(tmp_path / "b", {"c0": 0.6, "c1": 0.5, "c2": 0.9})
    assert main(["compare", "--baseline", str(base), "--candidate", str(cand), "--progress", "json"]) == EXIT_OK
    out, err = capsys.readouterr()
    event = json.loads(out.strip().splitlines()[-1])
    assert event["event"] == "comparison" and event["improved"] == 2 and event["worsened"] == 1
    assert "better on 2/3 cases" in err
    assert main(["compare", "--baseline", str(base), "--candidate", str(tmp_path / "x"), "--progress", "none"]) == EXIT_BAD_INPUT


def test_several_runs_per_side_are_averaged_per_case(tmp_path):
    # Two baseline seeds average to 0.5 on every case; the candidate seeds to 0.6, 0.4, 0.7.
    base = [_metrics(tmp_path / "a1", {"c0": 0.4, "c1": 0.6, "c2": 0.5}),
            _metrics(tmp_path / "a2", {"c0": 0.6, "c1": 0.4, "c2": 0.5})]
    cand = [_metrics(tmp_path / "b1", {"c0": 0.6, "c1": 0.4, "c2": 0.8}),
            _metrics(tmp_path / "b2", {"c0": 0.6, "c1": 0.4, "c2": 0.6}),
            _metrics(tmp_path / "b3", {"c0": 0.6, "c1": 0.4, "c2": 0.7})]
    r = compare_metrics(base, cand, "dice")
    assert (r.baseline_runs, r.candidate_runs, r.cases) == (2, 3, 3)
    assert r.baseline_mean == pytest.approx(0.5) and r.candidate_mean == pytest.approx(1.7 / 3)
    assert (r.improved, r.worsened) == (2, 1)  # differences +0.1, -0.1, +0.2
    assert r.median_difference == pytest.approx(0.1)
    assert "mean over 2 baseline and 3 candidate runs" in r.summary()
    # the runs of one side must score the same cases, and the error names both files
    odd = _metrics(tmp_path / "a3", {"c0": 0.5, "c9": 0.5})
    with pytest.raises(DataError, match="a1.*a3.*different cases"):
        compare_metrics([*base, odd], cand)
    assert main(["compare", "--baseline", *map(str, base), "--candidate", *map(str, cand), "--progress", "none"]) == EXIT_OK
