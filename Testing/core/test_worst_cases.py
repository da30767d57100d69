"""``semisup evaluate --worst N``: figures of the cases of lowest Dice (issue 14, failure analysis)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from semisup.cli import main
from semisup.data import DatasetSpec
from semisup.data.synthetic import make_synthetic_dataset
from semisup.measure.report import worst_error_slice


def test_worst_error_slice_is_the_slice_with_most_wrong_voxels():
    ref = np.zeros((4, 4, 5), np.int64)
    ref[1:3, 1:3, 1:4] = 1
    pred = ref.copy()
    pred[0, 0, 3] = 1  # one wrong voxel on z = 3
    pred[:, :, 1] = 0  # four wrong voxels on z = 1
    assert worst_error_slice(pred, ref) == 1
    assert worst_error_slice(ref, ref) == 2  # no error: the middle of the foreground
    ignored = ref.copy()
    ignored[:, :, 1] = 9  # z = 1 unlabeled: its disagreements do not count
    assert worst_error_slice(pred, ignored, ignore_label=9) == 3


def _predict_by_hand(spec: DatasetSpec, folder, damage: dict[str, float]) -> None:
    """Reference labels with a share of their foreground removed, as predictions."""
    folder.mkdir()
    for case in spec.test:
        ref = sitk.ReadImage(str(case.label))
        arr = sitk.GetArrayFromImage(ref)  # (z, y, x)
        zs = np.flatnonzero(arr.any(axis=(1, 2)))
        cut = zs[: int(round(damage[case.name] * zs.size))]
        arr[cut] = 0
        out = sitk.GetImageFromArray(arr)
        out.CopyInformation(ref)
        sitk.WriteImage(out, str(folder / f"{case.name}_label.nrrd"))


def test_evaluate_writes_figures_of_the_worst_cases(tmp_path, capsys):
    dataset = make_synthetic_dataset(tmp_path / "data", labeled=1, unlabeled=0, validation=0, test=3, shape=(24, 24, 16), seed=3)
    spec = DatasetSpec.from_json(dataset)
    names = [c.name for c in spec.test]
    damage = {names[0]: 0.1, names[1]: 0.6, names[2]: 0.3}
    _predict_by_hand(spec, tmp_path / "pred", damage)
    code = main(["evaluate", "--predictions", str(tmp_path / "pred"), "--dataset", str(dataset), "--split", "test",
                 "--worst", "2", "--progress", "none"])
    err = capsys.readouterr().err
    assert code == 0, err
    summary = json.loads((tmp_path / "pred" / "metrics.json").read_text())["summary"]
    worst = summary["worst_cases"]
    assert [w["case"] for w in worst] == [names[1], names[2]]  # most damaged first
    assert worst[0]["dice"] < worst[1]["dice"]
    for w in worst:
        png = tmp_path / "pred" / "worst" / f"{w['rank']:02d}_{w['case']}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert not (tmp_path / "pred" / "worst" / f"03_{names[0]}.png").exists()
    assert f"worst 1: {names[1]}" in err


def test_worst_needs_the_dataset_images(tmp_path, capsys):
    code = main(["evaluate", "--predictions", str(tmp_path), "--labels", str(tmp_path), "--worst", "2", "--progress", "none"])
    assert code == 2 and "--worst draws the images" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["-1"])
def test_worst_refuses_negative(tmp_path, capsys, value):
    code = main(["evaluate", "--predictions", str(tmp_path), "--labels", str(tmp_path), "--worst", value, "--progress", "none"])
    assert code == 2 and "--worst must be 0 or more" in capsys.readouterr().err
