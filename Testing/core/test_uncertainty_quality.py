"""Uncertainty-quality metrics on hand-computed cases, and their place in `semisup evaluate`."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from semisup.data import write_image
from semisup.data.io import array_to_image
from semisup.measure.evaluate import evaluate_predictions
from semisup.measure.uncertainty_quality import (
    auroc,
    case_uncertainty_quality,
    evaluation_region,
    expected_calibration_error,
    filtered_dice_auc,
    ranking_spearman,
    reliability_bins,
    summarize_uncertainty,
    uncertainty_error_overlap,
)


def test_auroc_hand_computed():
    # positives score 0.8, 0.4; negatives 0.5, 0.1, 0.4 -> pairs won: (0.8 > all 3) = 3,
    # (0.4 > 0.1) = 1, (0.4 == 0.4) = 0.5 -> 4.5 / 6
    assert auroc(np.array([0.8, 0.4, 0.5, 0.1, 0.4]), np.array([1, 1, 0, 0, 0], bool)) == pytest.approx(0.75)


def test_perfect_error_detector_gives_auroc_1_and_ueo_1():
    error = np.zeros(100, bool)
    error[:10] = True
    u = np.where(error, 0.9, 0.1) + np.linspace(0, 0.01, 100)
    assert auroc(u, error) == pytest.approx(1.0)
    assert uncertainty_error_overlap(u, error) == pytest.approx(1.0)


def test_independent_uncertainty_gives_auroc_half():
    rng = np.random.default_rng(0)
    error = rng.random(200_000) < 0.1
    u = rng.random(200_000)
    assert auroc(u, error) == pytest.approx(0.5, abs=0.01)


def test_ueo_hand_computed():
    # u = [3, 2, 2, 1], error = [1, 0, 1, 0]; thresholds: {u>=3}: Dice 2*1/(1+2) = 2/3,
    # {u>=2}: 2*2/(3+2) = 0.8, {u>=1}: 2*2/(4+2) = 2/3 -> best 0.8 (ties 2, 2 cannot be split)
    assert uncertainty_error_overlap(np.array([3.0, 2, 2, 1]), np.array([1, 0, 1, 0], bool)) == pytest.approx(0.8)
    assert uncertainty_error_overlap(np.array([1.0, 2.0]), np.array([0, 0], bool)) is None


def test_ece_hand_computed_and_perfectly_calibrated():
    # Two voxels at confidence 0.95 (one right) and two at 0.55 (both right):
    # bin 14: |0.5 - 0.95| * 2/4, bin 8: |1 - 0.55| * 2/4 -> 0.225 + 0.225
    conf = np.array([0.95, 0.95, 0.55, 0.55])
    correct = np.array([1, 0, 1, 1], bool)
    assert expected_calibration_error(conf, correct) == pytest.approx(0.45)
    bins = reliability_bins(conf, correct)
    assert bins["count"][14] == 2 and bins["count"][8] == 2 and bins["accuracy"][0] is None
    # Calibrated by construction: a voxel of confidence c is right with probability c.
    rng = np.random.default_rng(1)
    c = rng.uniform(0.5, 1.0, 400_000)
    right = rng.random(c.size) < c
    assert expected_calibration_error(c, right) < 0.005


def test_region_dilates_by_margin_in_mm():
    pred = np.zeros((21, 3, 3), np.uint8)
    ref = np.zeros_like(pred)
    pred[10, 1, 1] = 1
    region = evaluation_region(pred, ref, spacing=(2.0, 1.0, 1.0), margin_mm=4.0)
    # 4 mm along x at 2 mm spacing = 2 voxels each side
    assert region[:, 1, 1].nonzero()[0].tolist() == [8, 9, 10, 11, 12]
    assert not evaluation_region(pred * 0, ref, (1, 1, 1), 3.0).any()


def test_filtered_dice_auc_hand_computed():
    pred = np.array([1, 1, 1, 0])
    ref = np.array([1, 1, 0, 0])
    u = np.array([0.1, 0.6, 0.9, 0.2])
    auc, dices = filtered_dice_auc(u, pred, ref, thresholds=(1.0, 0.5))
    # t=1: all kept, Dice 2*2/(3+2) = 0.8; t=0.5: keep voxels 0, 3 -> Dice 2*1/(1+1) = 1
    assert dices == pytest.approx([0.8, 1.0])
    assert auc == pytest.approx(0.9)


def test_spearman_and_reasons():
    rho, why = ranking_spearman([0.3, 0.2, 0.1, 0.05], [0.5, 0.7, 0.8, 0.9])
    assert rho == pytest.approx(1.0) and why is None
    rho, why = ranking_spearman([0.3, 0.2], [0.5, 0.7])
    assert rho is None and "at least 3" in why


def test_case_quality_states_missing_inputs_not_zeros():
    pred = np.zeros((8, 8, 8), np.uint8)
    ref = np.zeros_like(pred)
    pred[2:6, 2:6, 2:6] = 1
    ref[3:6, 2:6, 2:6] = 1
    out = case_uncertainty_quality(pred, ref, None, (1, 1, 1), missing={"uncertainty": "no x_uncertainty.nrrd"})
    assert out["auroc"] is None and out["reasons"]["auroc"] == "no x_uncertainty.nrrd"
    assert out["ece"] is None and "probabilities" in out["reasons"]["ece"]
    assert "dilated by 5 mm" in out["region"]
    summary = summarize_uncertainty([out], scores=None, dice=None, scores_reason="no scores.csv")
    assert summary["auroc"] is None and summary["reasons"]["auroc"] == "no x_uncertainty.nrrd"
    assert summary["ranking_spearman"] is None and summary["reasons"]["ranking_spearman"] == "no scores.csv"


def _write_case(folder, refs, name, pred, ref, unc=None, probs=None):
    ref_img = array_to_image(ref, _grid(ref.shape))
    write_image(ref, ref_img, refs / f"{name}.nrrd")
    write_image(pred, ref_img, folder / f"{name}_label.nrrd")
    if unc is not None:
        write_image(unc.astype(np.float32), ref_img, folder / f"{name}_uncertainty.nrrd")
    if probs is not None:
        write_image(np.moveaxis(probs, 0, -1).astype(np.float32), ref_img, folder / f"{name}_probabilities.nrrd")


def _grid(shape):
    from semisup.data import Geometry

    return Geometry(size=shape, spacing=(1.0, 1.0, 2.0), origin=(3.0, -4.0, 5.0), direction=(1, 0, 0, 0, 1, 0, 0, 0, 1))


def test_evaluate_writes_uncertainty_object(tmp_path):
    preds, refs = tmp_path / "pred", tmp_path / "ref"
    preds.mkdir(), refs.mkdir()
    rows = []
    for i, wrong in enumerate((1, 3, 5)):
        ref = np.zeros((12, 12, 6), np.uint8)
        ref[3:9, 3:9, 1:5] = 1
        pred = ref.copy()
        pred[3 : 3 + wrong, 3:9, 1:5] = 0  # `wrong` slabs missed
        error = pred != ref
        unc = np.where(error, 0.6, 0.05)  # a perfect detector, in nats (< ln 2)
        p1 = np.where(pred == 1, 0.9, 0.1)
        probs = np.stack([1 - p1, p1])
        _write_case(preds, refs, f"c{i}", pred, ref, unc, probs if i else None)
        rows.append({"case": f"c{i}", "mean_uncertainty_foreground": float(wrong)})
    with (preds / "scores.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["case", "mean_uncertainty_foreground"])
        w.writeheader(), w.writerows(rows)
    summary = evaluate_predictions(preds, labels_dir=refs, margin_mm=2.0)
    doc = json.loads((preds / "metrics.json").read_text())
    cases = {c["case"]: c["uncertainty"] for c in doc["cases"]}
    assert cases["c1"]["auroc"] == pytest.approx(1.0) and cases["c1"]["ueo"] == pytest.approx(1.0)
    assert cases["c0"]["ece"] is None and "--save-probabilities" in cases["c0"]["reasons"]["ece"]
    assert math.isfinite(cases["c1"]["ece"]) and cases["c1"]["region_margin_mm"] == 2.0
    unc = summary["uncertainty"]
    assert unc["auroc"]["n"] == 3 and unc["ece"]["n"] == 2
    many = summarize_uncertainty([{**cases["c0"], "reasons": {"ece": f"no c{i}_probabilities.nrrd"}, "ece": None} for i in range(5)])
    assert many["reasons"]["ece"] == "no c0_probabilities.nrrd; and 4 more case(s) likewise"
    # More uncertain volumes are the worse ones: perfect rank agreement.
    assert unc["ranking_spearman"] == pytest.approx(1.0)
    assert 0.0 < unc["filtered_dice_auc"]["mean"] <= 1.0
    assert sum(unc["reliability"]["count"]) > 0 and sum(unc["error_by_uncertainty"]["errors"]) > 0


def test_evaluate_names_a_map_off_the_label_grid(tmp_path):
    from semisup.data import DataError

    preds, refs = tmp_path / "pred", tmp_path / "ref"
    preds.mkdir(), refs.mkdir()
    ref = np.zeros((8, 8, 4), np.uint8)
    ref[2:5, 2:5, 1:3] = 1
    _write_case(preds, refs, "c0", ref, ref)
    other = array_to_image(np.zeros((8, 8, 4), np.float32), _grid((8, 8, 4)))
    other.SetSpacing((1.0, 1.0, 3.0))
    from semisup.data import save_image

    save_image(other, preds / "c0_uncertainty.nrrd")
    with pytest.raises(DataError, match="c0_uncertainty.nrrd.*geometry"):
        evaluate_predictions(preds, labels_dir=refs)


def test_report_gets_reliability_and_error_figure(tmp_path):
    from matplotlib.image import imread

    from semisup.measure.report import write_report

    rng = np.random.default_rng(2)
    shape = (16, 16, 8)
    ref = np.zeros(shape, np.uint8)
    ref[4:12, 4:12, 2:6] = 1
    pred = np.roll(ref, 1, axis=0)
    unc = np.where(pred != ref, 0.6, 0.05) + rng.uniform(0, 0.05, shape)
    p1 = np.clip(np.where(pred == 1, 0.85, 0.15) + rng.normal(0, 0.05, shape), 0, 1)
    case = case_uncertainty_quality(pred, ref, unc, (1, 1, 1), probabilities=np.stack([1 - p1, p1]), uncertainty_max=math.log(2))
    summary = {"uncertainty": summarize_uncertainty([case], scores=[0.1], dice=[0.8])}
    paths = write_report(
        tmp_path, metrics_summary=summary, per_case=[{"case": "c0", "uncertainty": case}],
        figure_case={"image": ref * 100.0, "label_pred": pred, "uncertainty": unc, "label_ref": ref, "name": "c0"},
        run_info={"method": "x"},
    )
    png = imread(paths["uncertainty_figure"])
    assert png.shape[0] > 200 and png[..., :3].std() > 0.05
    md = paths["markdown"].read_text()
    assert "report_uncertainty.png" in md and "uncertainty/auroc" not in md.split("## Summary")[0].split("| case |")[0]
    assert "| c0 |" in md and "auroc" in md
    # the reason for the missing rank correlation is stated, not a zero
    assert "at least 3" in md
