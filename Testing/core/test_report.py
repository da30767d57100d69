"""Tests of the run report (markdown, PNG figure, JSON) written to real files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from semisup.measure.report import flatten_metrics, middle_foreground_slice, uncertainty_ranking, write_report

SHAPE = (24, 20, 12)


def _figure_case(with_ref: bool = True) -> dict:
    rng = np.random.default_rng(0)
    x, y, z = np.meshgrid(*(np.arange(n) for n in SHAPE), indexing="ij")
    ref = (((x - 12) / 6.0) ** 2 + ((y - 9) / 5.0) ** 2 + ((z - 6) / 3.0) ** 2 <= 1).astype(np.uint8)
    pred = np.roll(ref, 1, axis=0)
    image = 100.0 + 300.0 * ref + rng.normal(0, 30, SHAPE)
    unc = np.where(pred != ref, 0.69, 0.01).astype(np.float32)
    case = {
        "image": image,
        "label_pred": pred,
        "uncertainty": unc,
        "name": "synth_007",
        "spacing": (1.0, 1.2, 2.0),
        "class_names": ["background", "organ"],
    }
    if with_ref:
        case["label_ref"] = ref
    return case


PER_CASE = [
    {"name": "synth_005", "dice": {"1": 0.8123}, "hd95": {"1": 2.5}, "uncertainty": 0.021},
    {"name": "synth_006", "dice": {"1": 0.7011}, "hd95": {"1": float("nan")}, "uncertainty": np.float32(0.094)},
    {"name": "synth_007", "dice": {"1": 0.9}, "hd95": {"1": 1.5}, "uncertainty": 0.047},
    {"name": "unlabeled_000", "uncertainty": 0.13},
]
SUMMARY = {"dice": {"mean": 0.8045, "std": 0.08}, "hd95": {"mean": 2.0}}
RUN_INFO = {"method": "ua_mt", "iterations": 300, "device": "cpu", "time_s": 75.25}


@pytest.fixture()
def report(tmp_path: Path) -> dict[str, Path]:
    return write_report(
        tmp_path / "run", metrics_summary=SUMMARY, per_case=PER_CASE, figure_case=_figure_case(), run_info=RUN_INFO
    )


def test_files_written_atomically(report: dict[str, Path]) -> None:
    assert set(report) == {"markdown", "figure", "json"}
    assert all(p.is_file() and p.stat().st_size > 0 for p in report.values())
    folder = report["markdown"].parent
    assert sorted(p.name for p in folder.iterdir()) == ["report.json", "report.md", "report.png"]


def test_png_is_a_sensible_image(report: dict[str, Path]) -> None:
    assert report["figure"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rgba = imread(report["figure"])
    h, w = rgba.shape[:2]
    assert 300 <= h <= 2000 and 800 <= w <= 3000 and w > h  # three panels side by side
    assert rgba[..., :3].std() > 0.05  # not a blank canvas


def test_markdown_contents(report: dict[str, Path]) -> None:
    md = report["markdown"].read_text()
    for text in ("ua_mt", "300", "cpu", "75.2 s (1 min 15 s)", "0.8123", "0.7011", "0.8045", "(report.png)"):
        assert text in md, text
    # Per-case table has the mean over cases with a value: dice (0.8123+0.7011+0.9)/3.
    assert f"**{(0.8123 + 0.7011 + 0.9) / 3:.4g}**" in md
    # Ranking, most uncertain first.
    ranking = md.split("Uncertainty ranking")[1].split("## Figure")[0]
    order = [ranking.index(n) for n in ("unlabeled_000", "synth_006", "synth_007", "synth_005")]
    assert order == sorted(order)
    assert "| 1 | unlabeled_000 | 0.13 |" in ranking


def test_json_has_the_same_numbers(report: dict[str, Path]) -> None:
    data = json.loads(report["json"].read_text())
    assert data["run_info"] == RUN_INFO
    assert data["metrics_summary"] == SUMMARY
    assert data["per_case"][0]["dice"] == {"1": 0.8123}
    assert data["per_case"][1]["hd95"]["1"] is None  # NaN is stored as null (strict JSON)
    assert [r["name"] for r in data["uncertainty_ranking"]] == ["unlabeled_000", "synth_006", "synth_007", "synth_005"]
    assert math.isclose(data["uncertainty_ranking"][1]["uncertainty"], 0.094, rel_tol=1e-6)
    assert data["figure"] == {"case": "synth_007", "axial_index": 6, "file": "report.png"}


def test_without_reference_and_empty_prediction(tmp_path: Path) -> None:
    case = _figure_case(with_ref=False)
    case["label_pred"] = np.zeros(SHAPE, dtype=np.uint8)
    paths = write_report(tmp_path, metrics_summary={}, per_case=[], figure_case=case, run_info={})
    md = paths["markdown"].read_text()
    assert "No per-case metrics." in md and "No case has an uncertainty value" in md
    assert json.loads(paths["json"].read_text())["figure"]["axial_index"] == SHAPE[2] // 2
    assert imread(paths["figure"]).shape[0] >= 300


def test_shape_mismatch_is_an_error(tmp_path: Path) -> None:
    case = _figure_case()
    case["uncertainty"] = case["uncertainty"][:, :, :-1]
    with pytest.raises(ValueError, match="uncertainty shape"):
        write_report(tmp_path, metrics_summary={}, per_case=[], figure_case=case, run_info={})


def test_middle_foreground_slice() -> None:
    m = np.zeros((4, 4, 20), dtype=np.uint8)
    m[1, 1, 10:15] = 1
    assert middle_foreground_slice(m) == 12
    # Non-convex along z: the midpoint 10 is empty, the nearest slice with foreground wins.
    m[:] = 0
    m[1, 1, [2, 3, 17, 18]] = 1
    assert middle_foreground_slice(m) in (3, 17)
    assert middle_foreground_slice(np.zeros((4, 4, 9))) == 4
    # Union of prediction and reference.
    r = np.zeros_like(m)
    r[2, 2, 18:20] = 1
    m[:] = 0
    m[1, 1, 4:6] = 1
    assert middle_foreground_slice(m, r) == 5  # (4 + 19) // 2 = 11 -> nearest present is 5


def test_helpers() -> None:
    assert flatten_metrics({"dice": {"1": 0.5, "2": {"a": 1}}, "x": 2}) == {"dice/1": 0.5, "dice/2/a": 1, "x": 2}
    ranked = uncertainty_ranking([{"name": "a", "uncertainty": 0.1}, {"name": "b"}, {"name": "c", "uncertainty": 0.3}])
    assert [(r["rank"], r["name"], r["uncertainty"]) for r in ranked] == [(1, "c", 0.3), (2, "a", 0.1)]


def test_rows_from_metrics_and_uncertainty_modules(tmp_path: Path) -> None:
    """Rows of evaluate_case merged with volume_scores are reported without reshaping."""
    from semisup.inference.uncertainty import volume_scores
    from semisup.measure.metrics import evaluate_case, summarize

    fig = _figure_case()
    rows, per_case = [], []
    for i, shift in enumerate((0, 1, 3)):
        pred = np.roll(fig["label_ref"], shift, axis=0)
        unc = np.where(pred != fig["label_ref"], 0.6, 0.02).astype(np.float32)
        row = evaluate_case(
            pred, fig["label_ref"], 2, spacing=fig["spacing"], class_names=["bg", "organ"], case=f"c{i}"
        )
        rows.append(row)
        per_case.append({**row, **volume_scores(unc, pred)})
    empty = {"case": "c_empty", **volume_scores(np.zeros(SHAPE), np.zeros(SHAPE, dtype=np.uint8))}
    paths = write_report(
        tmp_path, metrics_summary=summarize(rows), per_case=[*per_case, empty], figure_case=fig, run_info=RUN_INFO
    )
    md = paths["markdown"].read_text()
    header = next(line for line in md.splitlines() if line.startswith("| case |"))
    assert "organ/dice" in header and "mean/hd95" in header and "label" not in header and "spacing" not in header
    assert "| c0 | 1 |" in md  # perfect prediction: Dice 1
    ranking = json.loads(paths["json"].read_text())["uncertainty_ranking"]
    assert [r["name"] for r in ranking] == ["c2", "c1", "c0", "c_empty"]
    assert ranking[-1]["empty_prediction"] and "(empty prediction)" in md
