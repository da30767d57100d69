"""benchmarks/bench_acdc.py: the labeled split and the schedule scaling (no training)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from semisup.methods.base import build_params
from semisup.methods.registry import METHODS


@pytest.fixture(scope="module")
def bench(load_script):
    return load_script("bench_acdc")


def _dataset(tmp_path: Path, patients: list[str]) -> Path:
    training = [{"image": f"./imagesTr/{p}_frame0{f}.nrrd", "label": f"./labelsTr/{p}_frame0{f}.nrrd"}
                for p in patients for f in (1, 2)]
    validation = [{"image": f"./imagesTr/patient{900 + i}_frame01.nrrd", "label": f"./labelsTr/patient{900 + i}_frame01.nrrd"}
                  for i in range(2)]
    labels = {"0": "background", "1": "right ventricle", "2": "myocardium", "3": "left ventricle"}
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": labels, "training": training, "validation": validation}))
    return tmp_path


def test_split_takes_first_seven_patients_in_list_order(bench, tmp_path):
    patients = [f"patient{n:03d}" for n in (99, 38, 50, 100, 58, 21, 49, 20, 1, 2)]
    data = _dataset(tmp_path, patients)
    train, evaluate, info = bench.write_splits(data, tmp_path / "out")
    split = json.loads(train.read_text())
    assert info["labeled_patients"] == patients[:7]
    assert [Path(c["image"]).name for c in split["training"]][:2] == ["patient099_frame01.nrrd", "patient099_frame02.nrrd"]
    assert len(split["training"]) == 14 and len(split["unlabeled"]) == 6
    assert "validation" not in split  # no model selection on the reporting set
    assert len(json.loads(evaluate.read_text())["validation"]) == 2


def test_split_refuses_non_adjacent_frames(bench, tmp_path):
    data = _dataset(tmp_path, [f"patient{n:03d}" for n in range(1, 10)])
    spec = json.loads((data / "dataset.json").read_text())
    spec["training"][1], spec["training"][-1] = spec["training"][-1], spec["training"][1]
    (data / "dataset.json").write_text(json.dumps(spec))
    with pytest.raises(SystemExit):
        bench.write_splits(data, tmp_path / "out")


@pytest.mark.parametrize("iterations", [20, 400, 30000])
def test_every_method_params_are_valid_and_ramps_end_in_budget(bench, iterations):
    setting = bench.SETTINGS["cpu"]
    for method in bench.METHODS:
        raw = bench.method_params(method, setting, iterations)
        build_params(METHODS[method].Params, raw, method)  # unknown keys raise
        if "consistency_rampup" in raw:
            assert raw["consistency_rampup"] * raw["iterations_per_epoch"] <= iterations * 1.01
        if method == "dust":
            assert raw["pretrain_iterations"] + raw["stage_iterations"] < iterations
        if method == "coranet":
            assert 0 < raw["pretrain_iterations"] < iterations and raw["refresh_every"] >= 1
        if method == "ucmt":
            assert raw["rampup_epochs"] * raw["iterations_per_epoch"] <= iterations
        if method == "uadct":
            assert raw["rampup_epochs"] * raw["iterations_per_epoch"] <= iterations
            assert raw["unsup_uncertainty_start"] < iterations
    assert bench.method_params("uamt", bench.SETTINGS["paper"], 30000)["iterations_per_epoch"] == 150  # SSL4MIS


def test_variants_build_valid_params_of_their_method(bench):
    setting = bench.SETTINGS["cpu"]
    for name, variant in bench.VARIANTS.items():
        overrides = variant.resolve_params(400)
        raw = {**bench.method_params(variant.method, setting, 400), **overrides}
        params = build_params(METHODS[variant.method].Params, raw, name)
        for key, value in overrides.items():
            assert getattr(params, key) == value


def test_fold_splits_by_patient_report_on_unseen_patients(bench, tmp_path):
    patients = [f"patient{n:03d}" for n in range(1, 19)]  # 18 + 2 validation-list patients = 20
    data = _dataset(tmp_path, patients)
    reported: list[str] = []
    for fold in range(5):
        train, evaluate, info = bench.write_fold_splits(data, tmp_path / f"f{fold}", 5, fold)
        split, report = json.loads(train.read_text()), json.loads(evaluate.read_text())
        seen = {bench.patient_of(c["image"]) for k in ("training", "unlabeled", "validation") for c in split[k]}
        rep = {bench.patient_of(c["image"]) for c in report["validation"]}
        assert len(rep) == 4 and seen.isdisjoint(rep) and len(seen | rep) == 20  # by patient, nothing lost
        assert len(info["labeled_patients"]) == 7 and len(info["validation_patients"]) == bench.FOLD_VALIDATION_PATIENTS
        assert {bench.patient_of(c["image"]) for c in split["training"]} == set(info["labeled_patients"])
        reported += sorted(rep)
    assert len(reported) == len(set(reported)) == 20  # disjoint and covering
