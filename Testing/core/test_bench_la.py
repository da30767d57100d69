"""benchmarks/bench_la.py: the split and the budget scaling (no training)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from semisup.methods.base import build_params
from semisup.methods.registry import METHODS


@pytest.fixture(scope="module")
def bench(load_script):
    return load_script("bench_la")


def test_split_keeps_the_report_cases_out_of_the_unlabeled_pool(bench, tmp_path):
    cases = [{"image": f"./imagesTr/c{i:02d}.nrrd", "label": f"./labelsTr/c{i:02d}.nrrd"} for i in range(30)]
    (tmp_path / "dataset.json").write_text(json.dumps({"training": cases}))
    split = json.loads(bench.write_split(tmp_path, 8, tmp_path / "out").read_text())
    names = {k: [Path(c["image"]).name for c in split[k]] for k in ("training", "unlabeled", "validation")}
    assert names["training"] == [f"c{i:02d}.nrrd" for i in range(8)]
    assert names["validation"] == [f"c{i:02d}.nrrd" for i in range(14, 30)]
    assert names["unlabeled"] == [f"c{i:02d}.nrrd" for i in range(8, 14)]
    assert "label" not in split["unlabeled"][0]


def test_split_refuses_too_few_cases(bench, tmp_path):
    cases = [{"image": f"i{i}.nrrd", "label": f"l{i}.nrrd"} for i in range(20)]
    (tmp_path / "dataset.json").write_text(json.dumps({"training": cases}))
    with pytest.raises(SystemExit, match="need at least 32"):
        bench.write_split(tmp_path, 16, tmp_path / "out")


@pytest.mark.parametrize("iterations", [800, 2000, 6000])
def test_budget_scaling_keeps_the_fractions_of_the_run(bench, iterations):
    setting = bench.SETTINGS["cpu"]
    train, params = bench.scaled(setting, "uamt", iterations)
    assert train["iterations"] == iterations
    # Paper: lr x0.1 at 2500 of 6000 iterations, ramp over 40 epochs = the whole run.
    assert train["lr_step"] == pytest.approx(iterations * 1250 / 2000, abs=1)
    assert params["iterations_per_epoch"] * 40 == pytest.approx(iterations, abs=40)
    build_params(METHODS["uamt"].Params, params, "uamt")
    assert bench.scaled(setting, "uamt", None) == (setting["train"], setting["method_params"]["uamt"])


def test_every_method_and_variant_has_valid_params(bench):
    for setting in bench.SETTINGS.values():
        for method in ("supervised", "mean_teacher", "uamt", "ucmt", *bench.VARIANTS):
            v = bench.variant(method, bench.VARIANTS)
            raw = {**bench.scaled(setting, v.method, 1000)[1], **v.resolve_params(1000)}
            build_params(METHODS[v.method].Params, raw, method)


def test_fold_split_reports_on_unseen_cases_and_covers_all(bench, tmp_path):
    cases = [{"image": f"./imagesTr/c{i:02d}.nrrd", "label": f"./labelsTr/c{i:02d}.nrrd"} for i in range(40)]
    (tmp_path / "dataset.json").write_text(json.dumps({"training": cases}))
    reported = []
    for fold in range(5):
        train_path, report_path, info = bench.write_fold_split(tmp_path, 8, tmp_path / f"f{fold}", 5, fold)
        train, report = json.loads(train_path.read_text()), json.loads(report_path.read_text())
        names = {k: {Path(c["image"]).name for c in train[k]} for k in ("training", "unlabeled", "validation")}
        rep = {Path(c["image"]).name for c in report["validation"]}
        assert len(rep) == 8 and len(names["training"]) == 8 and len(names["validation"]) == bench.FOLD_VALIDATION
        # The report set is in no list the training sees, validation (choices) included.
        assert all(rep.isdisjoint(v) for v in names.values())
        assert len(set().union(*names.values(), rep)) == 40  # every case used once
        reported += sorted(rep)
    assert sorted(reported) == sorted(Path(c["image"]).name for c in cases)  # the folds cover the cases
