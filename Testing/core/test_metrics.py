"""Metrics on hand-made masks: every expected number is counted by hand."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch

from semisup.measure.metrics import METRICS, evaluate_case, image_diagonal, summarize, write_results

SPACING = (0.7, 0.7, 2.5)  # anisotropic, like a thick-slice MR (x, y, z)


def _shifted_cubes(shift: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Two 6^3 cubes in a 12^3 grid, the reference shifted by `shift` voxels along z."""
    pred = np.zeros((12, 12, 12), dtype=np.int64)
    ref = np.zeros_like(pred)
    pred[2:8, 2:8, 2:8] = 1
    ref[2:8, 2:8, 2 + shift : 8 + shift] = 1
    return pred, ref


def test_dice_jaccard_counted_by_hand() -> None:
    pred = np.zeros((6, 6), dtype=np.int64)
    ref = np.zeros_like(pred)
    pred[0:2, 0:3] = 1  # 6 voxels
    ref[0:2, 1:4] = 1  # 6 voxels, overlap columns 1..2 -> 4 voxels
    row = evaluate_case(pred, ref, num_classes=2, spacing=1.0)
    c = row["classes"]["class_1"]
    assert c["dice"] == pytest.approx(2 * 4 / (6 + 6))  # 0.6667
    assert c["jaccard"] == pytest.approx(4 / (6 + 6 - 4))  # 0.5
    assert (c["pred_voxels"], c["ref_voxels"]) == (6, 6)


def test_hd95_and_asd_of_shifted_cubes_in_mm() -> None:
    pred, ref = _shifted_cubes(shift=2)
    row = evaluate_case(pred, ref, 2, SPACING, ["background", "cube"], case="c")
    c = row["classes"]["cube"]
    # Overlap 6 x 6 x 4 = 144 of 216 voxels each.
    assert c["dice"] == pytest.approx(2 * 144 / 432)
    assert c["jaccard"] == pytest.approx(144 / (432 - 144))
    # Every surface voxel of one cube is within shift * s_z of the other's surface (the
    # translated voxel), and the 36 voxels of the far face are exactly that far:
    # 36 / 152 surface voxels = 24 % > 5 %, so the 95th percentile is 2 * 2.5 mm = 5 mm.
    # Voxels along z would give 2, the x/y spacing 1.4: only z's 2.5 mm gives 5.
    assert c["hd95"] == pytest.approx(2 * 2.5)
    # ASD, surface pred -> ref (152 surface voxels = 216 - 4^3), by z layer of pred:
    #   z=2 bottom face, 36 voxels: ref's bottom face 2 slices up     -> 36 * 5.0 = 180
    #   z=3 ring, 20 voxels: ref's surface 1 slice up                 -> 20 * 2.5 = 50
    #   z=4..6 rings, 60 voxels: on ref's side surface                -> 0
    #   z=7 top face: its ring (20) on ref's side surface             -> 0
    #     inner 4x4: 12 voxels 1 voxel from ref's side (0.7 mm)       -> 12 * 0.7 = 8.4
    #                 4 voxels 2 voxels from ref's side (1.4 mm)      ->  4 * 1.4 = 5.6
    #   total 244 mm; ref -> pred is the mirror image, also 244 mm over 152 voxels.
    assert c["asd"] == pytest.approx((244 + 244) / (152 + 152))  # 1.6053 mm


def test_distances_of_shifted_plates_are_shift_times_spacing() -> None:
    # One-voxel plates spanning the whole x-y extent: every surface voxel is exactly
    # `shift` slices from the other plate, so HD95 = ASD = shift * s_z.
    for shift in (1, 3):
        pred = np.zeros((5, 6, 10), dtype=np.int64)
        ref = np.zeros_like(pred)
        pred[:, :, 2] = 1
        ref[:, :, 2 + shift] = 1
        c = evaluate_case(pred, ref, 2, SPACING)["classes"]["class_1"]
        assert c["hd95"] == pytest.approx(shift * 2.5)
        assert c["asd"] == pytest.approx(shift * 2.5)
        assert c["dice"] == 0.0


def test_empty_masks_give_documented_values() -> None:
    pred, ref = _shifted_cubes()
    empty = np.zeros_like(pred)
    diag = math.sqrt((12 * 0.7) ** 2 + (12 * 0.7) ** 2 + (12 * 2.5) ** 2)  # 32.27 mm
    assert image_diagonal(pred.shape, SPACING) == pytest.approx(diag)

    both = evaluate_case(empty, empty, 2, SPACING)["classes"]["class_1"]
    assert (both["dice"], both["jaccard"], both["hd95"], both["asd"]) == (1.0, 1.0, 0.0, 0.0)
    for p, r in ((empty, ref), (pred, empty)):  # missed and hallucinated structure
        one = evaluate_case(p, r, 2, SPACING)["classes"]["class_1"]
        assert (one["dice"], one["jaccard"]) == (0.0, 0.0)
        assert one["hd95"] == pytest.approx(diag) and one["asd"] == pytest.approx(diag)


def test_multiclass_mean_summary_and_tensor_input() -> None:
    pred, ref = _shifted_cubes()
    pred[10:, 10:, 10:] = 2  # class 2 predicted, absent from the reference
    row = evaluate_case(torch.as_tensor(pred), torch.as_tensor(ref), 3, SPACING, {1: "a", 2: "b"}, case="x")
    assert list(row["classes"]) == ["a", "b"]
    assert row["classes"]["b"]["dice"] == 0.0
    assert row["mean"]["dice"] == pytest.approx((2 / 3 + 0.0) / 2)

    other = evaluate_case(ref, ref, 3, SPACING, {1: "a", 2: "b"}, case="y")  # perfect, class b absent: 1
    summary = summarize([row, other])
    assert summary["n_cases"] == 2
    assert summary["classes"]["a"]["dice"]["mean"] == pytest.approx((2 / 3 + 1.0) / 2)
    assert summary["classes"]["a"]["dice"]["std"] == pytest.approx((1.0 - 2 / 3) / 2)  # ddof=0
    assert all(math.isfinite(summary["mean"][m]["mean"]) for m in METRICS)
    assert summarize([]) == {"n_cases": 0, "classes": {}, "mean": {}}


def test_bad_inputs_are_rejected() -> None:
    a = np.zeros((4, 4, 4), dtype=np.int64)
    with pytest.raises(ValueError, match="shape"):
        evaluate_case(a, a[:3], 2)
    with pytest.raises(ValueError, match="outside"):
        evaluate_case(a + 2, a, 2)
    with pytest.raises(ValueError, match="spacing"):
        evaluate_case(a, a, 2, spacing=(1.0, 1.0))
    with pytest.raises(ValueError, match="class_names"):
        evaluate_case(a, a, 3, class_names=["only_one"])


def test_write_results_csv_and_json(tmp_path) -> None:
    pred, ref = _shifted_cubes()
    rows = [
        evaluate_case(pred, ref, 2, SPACING, ["background", "cube"], case="c1"),
        evaluate_case(ref, ref, 2, SPACING, ["background", "cube"], case="c2"),
    ]
    summary = summarize(rows)
    csv_path, json_path = write_results(rows, summary, tmp_path / "eval")
    with open(csv_path, newline="") as fh:
        table = list(csv.DictReader(fh))
    assert [(r["case"], r["class"]) for r in table] == [("c1", "cube"), ("c2", "cube")]
    assert float(table[0]["hd95"]) == pytest.approx(5.0)
    doc = json.loads(json_path.read_text())
    assert [c["case"] for c in doc["cases"]] == ["c1", "c2"]
    assert doc["summary"]["classes"]["cube"]["dice"]["mean"] == pytest.approx((2 / 3 + 1) / 2)
    assert not list((tmp_path / "eval").glob("*.tmp"))  # no temporary left behind
