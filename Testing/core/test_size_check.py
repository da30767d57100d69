"""The size check: labeled volume ranges recorded by training, predicted volumes flagged by predict."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from semisup.config import DataConfig, InferenceConfig, MethodConfig, NetworkConfig, RunConfig, TrainConfig
from semisup.data import DatasetSpec
from semisup.data.label_sizes import SIZE_CHECK_FACTOR, labeled_volume_range, size_check
from semisup.data.synthetic import make_synthetic_dataset
from semisup.engine.checkpoint import load_checkpoint
from semisup.engine.predict import load_trained, predict_files
from semisup.engine.trainer import Trainer


def _write(path: Path, array: np.ndarray, spacing=(2.0, 1.0, 1.0)) -> str:
    img = sitk.GetImageFromArray(array)
    img.SetSpacing(spacing)
    sitk.WriteImage(img, str(path))
    return path.name


def _labels(n1: int, n2: int) -> np.ndarray:
    lab = np.zeros((10, 20, 20), np.uint8).ravel()  # (z, y, x) for SimpleITK
    lab[:n1] = 1
    lab[n1 : n1 + n2] = 2
    return lab.reshape(10, 20, 20)


def _dataset(root: Path, ignore: bool = False) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    image = np.zeros((10, 20, 20), np.float32)
    entries = []
    for name, (n1, n2) in {"a": (1000, 0), "b": (500, 250), "v": (2000, 100)}.items():
        entries.append({"image": _write(root / f"{name}.nrrd", image), "label": _write(root / f"{name}_seg.nrrd", _labels(n1, n2))})
    labels = {"0": "background", "1": "atrium", "2": "scar"}
    if ignore:
        labels["ignore"] = 3
    doc = {"labels": labels, "training": entries[:2], "validation": entries[2:]}
    (root / "dataset.json").write_text(json.dumps(doc))
    return root / "dataset.json"


def test_labeled_volume_range_hand_computed(tmp_path: Path) -> None:
    spec = DatasetSpec.from_json(_dataset(tmp_path / "d"))
    # Voxel 2 x 1 x 1 mm = 0.002 ml; atrium 1000, 500, 2000 voxels; scar 0, 250, 100 (validation counts too).
    ranges = labeled_volume_range(spec)
    assert ranges == {"atrium": pytest.approx([1.0, 4.0]), "scar": pytest.approx([0.0, 0.5])}
    # Sparse labels: a partly drawn structure's size says nothing, so nothing is recorded.
    assert labeled_volume_range(DatasetSpec.from_json(_dataset(tmp_path / "s", ignore=True))) == {}


def test_size_check_hand_computed() -> None:
    names = ["background", "atrium", "scar"]
    ranges = {"atrium": [10.0, 40.0]}  # scar unrecorded: never flagged
    spacing = (1.0, 1.0, 1.0)  # 1000 voxels = 1 ml

    def check(n_atrium: int, n_scar: int = 0):
        lab = np.zeros(200_000, np.uint8)
        lab[:n_atrium] = 1
        lab[n_atrium : n_atrium + n_scar] = 2
        return size_check(lab, spacing, names, ranges)

    volumes, notes = check(4000, 7000)  # 4 ml < 10 / 2
    assert volumes == pytest.approx({"atrium": 4.0, "scar": 7.0})
    assert len(notes) == 1 and "atrium 4.0 ml" in notes[0] and "smallest labeled one (10.0 ml)" in notes[0]
    assert check(5000)[1] == [] and check(6000)[1] == []  # at 10 / 2 and above: fine
    assert check(80000)[1] == [] and "over 2x the largest labeled one (40.0 ml)" in check(81000)[1][0]
    assert check(0)[1] and "atrium 0.0 ml" in check(0)[1][0]  # nothing predicted
    assert size_check(np.zeros(8, np.uint8), spacing, names, {"atrium": [0.0, 4.0]})[1] == []  # a class some labels lack
    with pytest.raises(ValueError, match="factor"):
        size_check(np.zeros(8, np.uint8), spacing, names, ranges, factor=0.5)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("sizes")
    dataset = make_synthetic_dataset(root / "data", labeled=2, unlabeled=1, validation=1, test=2, shape=(32, 32, 16), seed=5)
    cfg = RunConfig(
        data=DataConfig(dataset=str(dataset), patch_size=[16, 16, 16], target_spacing=[2.0, 2.0, 1.5]),
        network=NetworkConfig(name="vnet", base_filters=4),
        method=MethodConfig(name="supervised"),
        train=TrainConfig(iterations=4, lr=0.05, val_every=4, checkpoint_every=4, log_every=4, seed=1),
        inference=InferenceConfig(mc_samples=2, overlap=0.25),
    )
    Trainer(cfg, root / "run").fit()
    return root / "run" / "checkpoints" / "last.pt", dataset


def _rows(folder: Path) -> list[dict[str, str]]:
    with (folder / "scores.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_training_records_the_ranges_and_predict_flags_by_them(trained, tmp_path: Path) -> None:
    checkpoint, dataset = trained
    spec = DatasetSpec.from_json(dataset)
    assert load_checkpoint(checkpoint)["label_volume_ranges"] == labeled_volume_range(spec) != {}
    inputs = [c.image for c in spec.test]
    model = load_trained(checkpoint)
    events: list[tuple[str, dict]] = []
    predict_files(model, inputs, tmp_path / "real", emit=lambda kind, **kw: events.append((kind, kw)))
    for row in _rows(tmp_path / "real"):  # the written label, checked again here, gives the same verdict
        label = sitk.ReadImage(row["label"])
        volumes, notes = size_check(sitk.GetArrayFromImage(label), label.GetSpacing(), model.class_names, model.label_volume_ranges)
        assert row["size_check"] == ("ok" if not notes else f"flagged: {'; '.join(notes)}")
        assert float(row["predicted_ml"]) == pytest.approx(sum(volumes.values()))
        assert float(row["size_flagged"]) == float(bool(notes))
    # Ranges no prediction can meet: every case is flagged, named in a warning, and the settings say by what.
    model.label_volume_ranges = {name: [1e6, 2e6] for name in model.class_names[1:]}
    events.clear()
    predict_files(model, inputs, tmp_path / "odd", emit=lambda kind, **kw: events.append((kind, kw)))
    rows = _rows(tmp_path / "odd")
    assert all(r["size_check"].startswith("flagged: ") and r["size_flagged"] == "1.0" for r in rows)
    warned = [kw["case"] for kind, kw in events if kind == "warning" and "check this segmentation" in kw["message"]]
    assert sorted(warned) == sorted(r["case"] for r in rows)
    settings = json.loads((tmp_path / "odd" / "scores.json").read_text())["settings"]["size_check"]
    assert settings == {"factor": SIZE_CHECK_FACTOR, "labeled_ml": model.label_volume_ranges}
    # A checkpoint without ranges (older, or sparse labels): said so, and no 0 that would read as "fine".
    model.label_volume_ranges = {}
    predict_files(model, inputs, tmp_path / "none")
    rows = _rows(tmp_path / "none")
    assert all(r["size_check"].startswith("not checked") and "size_flagged" not in r for r in rows)


def test_size_check_report_counts_a_sweep(load_script, tmp_path: Path) -> None:
    """benchmarks/size_check_report.py: failures and false alarms, ranges from the fold's training labels."""
    report = load_script("size_check_report")
    runs = tmp_path / "runs"
    fold = runs / "fold0of5"
    _dataset(fold)  # atrium labeled 1-4 ml (voxels of 0.002 ml): flagged under 0.5 ml or over 8 ml
    (fold / "supervised-s1337" / "predictions").mkdir(parents=True)
    per_case = {"tiny": 0.2, "fine": 0.9, "tiny_good": 0.8, "fine_bad": 0.3}
    sizes = {"tiny": 100, "fine": 1000, "tiny_good": 200, "fine_bad": 1500}  # atrium voxels: 0.2, 2, 0.4, 3 ml
    for case, n in sizes.items():
        _write(fold / "supervised-s1337" / "predictions" / f"{case}_label.nrrd", _labels(n, 0))
    results = {"cpu/supervised/fold0": {"method": "supervised", "seed": 1337, "split": {"folds": 5, "fold": 0},
                                        "per_case_dice": per_case}}
    summary = report.check_sweep(results, runs, ["supervised"], 1337, 0.5, SIZE_CHECK_FACTOR)["supervised"]
    assert {k: summary[k] for k in ("predictions", "failures", "failures_flagged", "good", "good_flagged")} == {
        "predictions": 4, "failures": 2, "failures_flagged": 1, "good": 2, "good_flagged": 1}
    listed = {c["case"]: c for c in summary["cases"]}
    assert sorted(listed) == ["fine_bad", "tiny", "tiny_good"] and listed["fine_bad"]["flags"] == []
    assert listed["tiny"]["predicted_ml"] == pytest.approx({"atrium": 0.2, "scar": 0.0})
    # scar was labeled 0-0.5 ml: 0 ml is fine, only the atrium can be flagged here.
    assert all(len(c["flags"]) <= 1 for c in summary["cases"])
    assert "| supervised | 4 | 1 of 2 | 1 of 2 |" in report.table({"supervised": summary})
    # --folds: a fold not asked for is neither read nor counted (its predictions need not exist).
    results["cpu/supervised/fold1"] = {"method": "supervised", "seed": 1337, "split": {"folds": 5, "fold": 1},
                                       "per_case_dice": {"gone": 0.1}}
    only = report.check_sweep(results, runs, ["supervised"], 1337, 0.5, SIZE_CHECK_FACTOR, folds=[0])["supervised"]
    assert only["predictions"] == 4
    with pytest.raises(FileNotFoundError, match="fold1of5"):
        report.check_sweep(results, runs, ["supervised"], 1337, 0.5, SIZE_CHECK_FACTOR)
