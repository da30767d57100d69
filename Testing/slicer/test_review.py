"""The review loop on real MRML scenes: ranked table, overlay, accept (with what changed), continue training.

The first tests build a prediction folder by hand (files exactly as `semisup predict`
writes them) so each step and each bad input is checked without a worker; the last
runs the whole cycle with the real core library in worker processes.
"""

from __future__ import annotations

import csv
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from mrml_helpers import SPACING, addSegment, kidneyMask, liverMask, obliqueVolume

from SemiSupUncertaintyLib import InputError, ReviewLogic, SemiSupUncertaintyLogic
from SemiSupUncertaintyLib.LabelChange import labelChange
from SemiSupUncertaintyLib.MRMLIO import writeVolume

VOXEL_ML = float(np.prod(SPACING)) / 1000.0


def test_label_change_hand_computed():
    pred = np.array([0, 1, 1, 1, 2, 0])
    acc = np.array([0, 1, 1, 0, 2, 2])
    change = labelChange(pred, acc, voxelVolumeMm3=2000.0, classNames=["a", "b"])
    # foreground: pred 4 voxels, acc 4, both 3 -> Dice 6/8; changed voxels 2 (index 3, 5) x 2 ml
    assert change.dice == pytest.approx(0.75) and change.changedVoxels == 2 and change.changedMl == pytest.approx(4.0)
    assert change.addedMl == pytest.approx(2.0) and change.removedMl == pytest.approx(2.0)
    assert change.classDice == pytest.approx({"a": 2 * 2 / 5, "b": 2 * 1 / 3})


def _labelFile(scene, volume, mask, path):
    import slicer

    node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__tmp__")
    node.CopyOrientation(volume)
    slicer.util.updateVolumeFromArray(node, mask.astype(np.uint8))
    writeVolume(node, path)
    scene.RemoveNode(node)
    return path


@pytest.fixture
def prediction(scene, tmp_path):
    """A parent run (dataset.json, config.yaml, checkpoint) and a prediction of CT3 (liver) and CT4 (nothing)."""
    run = tmp_path / "runs" / "parent"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "best.pt").write_bytes(b"weights")
    (run / "imagesTr").mkdir()
    (run / "dataset.json").write_text(json.dumps({
        "labels": {"0": "background", "1": "Liver", "2": "Kidney"},
        "training": [{"image": "imagesTr/CT1.nrrd", "label": "labelsTr/CT1.nrrd"}],
        "unlabeled": [{"image": "imagesUnlabeled/CT3.nrrd"}, {"image": "imagesUnlabeled/CT4.nrrd"}],
    }))
    (run / "config.yaml").write_text(yaml.safe_dump({"data": {"dataset": str(run / "dataset.json")}, "train": {"iterations": 10}}))
    out = run / "slicer-predictions" / "p1" / "outputs"
    out.mkdir(parents=True)
    logic = SemiSupUncertaintyLogic(scene, runsDirectory=tmp_path / "runs")
    nodes, rows = {}, []
    for case, mask, score in (("CT3", liverMask(), 0.3), ("CT4", np.zeros_like(liverMask()), 0.0)):
        volume = obliqueVolume(scene, case, seed=3)
        label = _labelFile(scene, volume, mask, out / f"{case}_label.nrrd")
        seg = logic.importer.segmentationFromLabelmapFile(label, ["Liver", "Kidney"], volume, f"{case} segmentation")
        unc = _labelFile(scene, volume, (mask * 0 + 1), out / f"{case}_uncertainty.nrrd")
        uncNode = logic.importer.uncertaintyVolumeFromFile(unc, f"{case} uncertainty")
        nodes[case] = (volume, seg, uncNode)
        rows.append({"case": case, "label": str(label), "mean_uncertainty_foreground": score, "foreground_voxels": int(mask.sum())})
    with (out / "scores.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return logic, run, out, nodes


def _tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file() and "slicer-predictions" not in p.parts}


def test_table_ranks_and_select_shows_the_overlay(scene, prediction):
    logic, run, out, nodes = prediction
    review = ReviewLogic.fromOutputs(logic, run, out, nodes)
    ranked = review.rows()
    assert [r.caseName for r in ranked] == ["CT4", "CT3"]  # nothing predicted: first
    assert ranked[1].predictedMl == pytest.approx(int(liverMask().sum()) * VOXEL_ML)
    table = review.table()
    vt = table.GetTable()
    titles = [vt.GetColumn(i).GetName() for i in range(vt.GetNumberOfColumns())]
    assert titles[:5] == ["Rank", "Volume", "Score", "Predicted volume (ml)", "Status"]
    assert vt.GetValue(1, 1).ToString() == "CT3" and vt.GetValue(0, 4).ToString().endswith("(nothing predicted)")
    composite = scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode")
    item = review.select("CT3", opacity=0.4)
    volume, seg, unc = nodes["CT3"]
    assert composite.GetBackgroundVolumeID() == volume.GetID() and composite.GetForegroundVolumeID() == unc.GetID()
    assert composite.GetForegroundOpacity() == pytest.approx(0.4)
    assert unc.GetDisplayNode().GetColorNodeID() and seg.GetDisplayNode().GetVisibility()
    assert item.segmentation is seg


def test_accept_records_the_change_and_continue_prepares_a_linked_child(scene, prediction, tmp_path):
    logic, run, out, nodes = prediction
    before = _tree(run)
    review = ReviewLogic.fromOutputs(logic, run, out, nodes)
    volume, seg, _ = nodes["CT3"]
    # The user adds the kidney to the prediction (the liver stays as predicted).
    segmentation = seg.GetSegmentation()
    segmentation.RemoveSegment(segmentation.GetSegmentIdBySegmentName("Kidney"))
    addSegment(seg, volume, "Kidney", kidneyMask())
    change = review.accept("CT3")
    kidney = int(kidneyMask().sum())
    liver = int(liverMask().sum())
    assert change.dice == pytest.approx(2 * liver / (2 * liver + kidney))
    assert change.addedMl == pytest.approx(kidney * VOXEL_ML) and change.removedMl == 0
    assert change.classDice["Liver"] == pytest.approx(1.0) and change.classDice["Kidney"] == 0.0
    accepted = out.parent / "accepted"
    assert (accepted / "CT3_label.nrrd").is_file() and (accepted / "CT3_image.nrrd").is_file()
    ledger = json.loads((out.parent / "review.json").read_text())["accepted"]
    assert ledger[0]["case"] == "CT3" and ledger[0]["change"]["dice"] == pytest.approx(change.dice)
    assert [r.status for r in review.rows()] == ["to review", "accepted"]
    # Accepting again keeps the first files.
    review.accept("CT3")
    assert (accepted / "CT3_v2_label.nrrd").is_file() and (accepted / "CT3_label.nrrd").is_file()

    child = review.prepareChildRun(iterations=3)
    assert child.parent == run.parent and child != run
    dataset = json.loads((child / "dataset.json").read_text())
    assert [Path(e["image"]).name for e in dataset["training"]] == ["CT1.nrrd", "CT3.nrrd"]
    assert [Path(e["image"]).name for e in dataset["unlabeled"]] == ["CT4.nrrd"]
    config = yaml.safe_load((child / "config.yaml").read_text())
    assert config["train"]["init_from"] == str((run / "checkpoints" / "best.pt").resolve())
    assert config["data"]["dataset"] == "dataset.json" and config["train"]["iterations"] == 3
    parent = json.loads((child / "parent.json").read_text())
    assert parent["parent"] == str(run.resolve()) and parent["accepted"][0]["case"] == "CT3"
    assert _tree(run) == before  # the parent run is never modified
    with pytest.raises(InputError, match="already holds a run"):
        review.prepareChildRun(child)


def test_empty_accepted_segmentation_is_refused(scene, prediction):
    logic, run, out, nodes = prediction
    review = ReviewLogic.fromOutputs(logic, run, out, nodes)
    with pytest.raises(InputError, match="volume 'CT4'.*empty"):
        review.accept("CT4")
    assert not list((out.parent / "accepted").glob("*")) and not (out.parent / "review.json").exists()
    with pytest.raises(InputError, match="no volume has been accepted"):
        review.prepareChildRun()


def test_volume_changed_since_prediction_is_refused(scene, prediction):
    logic, run, out, nodes = prediction
    review = ReviewLogic.fromOutputs(logic, run, out, nodes)
    volume = nodes["CT3"][0]
    volume.SetSpacing(1.0, 1.0, 1.0)
    with pytest.raises(InputError, match="volume 'CT3' no longer matches its prediction CT3_label.nrrd"):
        review.accept("CT3")
    assert not (out.parent / "review.json").exists()


def test_missing_class_segment_is_named(scene, prediction):
    logic, run, out, nodes = prediction
    review = ReviewLogic.fromOutputs(logic, run, out, nodes)
    seg = nodes["CT3"][1]
    seg.GetSegmentation().RemoveSegment(seg.GetSegmentation().GetSegmentIdBySegmentName("Kidney"))
    with pytest.raises(InputError, match="volume 'CT3'.*no segment named 'Kidney'"):
        review.accept("CT3")


def _rewriteScores(out: Path, sizeChecks: dict[str, str]) -> None:
    with (out / "scores.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:  # both volumes now have something predicted; CT4 stays the less uncertain
        row["foreground_voxels"] = row["foreground_voxels"] if int(row["foreground_voxels"]) else "10"
        row["size_check"] = sizeChecks[row["case"]]
    with (out / "scores.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def test_a_size_flagged_volume_is_reviewed_first(scene, prediction):
    logic, run, out, nodes = prediction
    _rewriteScores(out, {"CT3": "ok", "CT4": "ok"})
    assert [r.caseName for r in ReviewLogic.fromOutputs(logic, run, out, nodes).rows()] == ["CT3", "CT4"]  # by score
    flagged = "flagged: Liver 0.0 ml is under 1/2 of the smallest labeled one (900.0 ml)"
    _rewriteScores(out, {"CT3": "ok", "CT4": flagged})
    review = ReviewLogic.fromOutputs(logic, run, out, nodes)
    assert [r.caseName for r in review.rows()] == ["CT4", "CT3"] and review.rows()[0].sizeFlagged
    vt = review.table().GetTable()
    titles = [vt.GetColumn(i).GetName() for i in range(vt.GetNumberOfColumns())]
    assert vt.GetValue(0, titles.index("Size check")).ToString() == flagged
    assert vt.GetValue(1, titles.index("Size check")).ToString() == "ok"
