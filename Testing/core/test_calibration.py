"""Temperature scaling: the formulas on hand-computed cases, `semisup calibrate` on a tiny run, warm start."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from semisup.config import DataConfig, InferenceConfig, MethodConfig, NetworkConfig, RunConfig, TrainConfig
from semisup.data import DatasetSpec
from semisup.data.synthetic import make_synthetic_dataset
from semisup.engine.calibrate import calibrate_run
from semisup.engine.checkpoint import CheckpointError, load_checkpoint
from semisup.engine.predict import load_trained, predict_files
from semisup.engine.trainer import Trainer
from semisup.inference.calibration import TemperatureScaled, fit_temperature, nll, softmax_t


def test_nll_hand_computed():
    lp = np.log(np.array([[0.5, 0.5], [0.8, 0.2]]))
    # -(ln 0.5 + ln 0.8) / 2
    assert nll(lp, np.array([0, 0])) == pytest.approx(-(math.log(0.5) + math.log(0.8)) / 2)
    # T = 2 on [ln .8, ln .2]: softmax of [ln .8, ln .2] / 2 = [sqrt .8, sqrt .2] / (sqrt .8 + sqrt .2) = [2/3, 1/3]
    assert softmax_t(lp[1:], 2.0)[0] == pytest.approx([2 / 3, 1 / 3])


def test_nll_of_the_mean_over_dropout_draws():
    # draws [0.9, 0.1] and [0.5, 0.5], target 0: the prediction is their mean 0.7 -> -ln 0.7
    lp = np.log(np.array([[[0.9, 0.1]], [[0.5, 0.5]]]))
    assert nll(lp, np.array([0])) == pytest.approx(-math.log(0.7))
    # T = 2 scales each draw: [0.9, 0.1] -> [0.75, 0.25]; [0.5, 0.5] stays -> mean 0.625
    assert nll(lp, np.array([0]), 2.0) == pytest.approx(-math.log(0.625))
    assert softmax_t(lp, 2.0)[0] == pytest.approx([0.625, 0.375])


def test_stochastic_pass_draws_dropout_in_eval_mode():
    from semisup.inference.calibration import StochasticPass

    net = torch.nn.Sequential(torch.nn.Conv3d(1, 2, 1), torch.nn.Dropout3d(0.5)).eval()
    x = torch.randn(1, 1, 4, 4, 4)
    draws = StochasticPass(net)
    outs = [draws(x) for _ in range(8)]
    assert any(not torch.equal(outs[0], o) for o in outs[1:]) and not net[1].training  # restored after each draw


def test_fit_recovers_the_temperature_of_the_data():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 4, size=(40_000, 3))
    true_t = 2.5
    p = softmax_t(z, true_t)
    y = (rng.random((len(z), 1)) > np.cumsum(p, axis=1)).sum(axis=1)  # y ~ Categorical(p)
    lp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))  # overconfident log-probabilities
    assert fit_temperature(lp, y) == pytest.approx(true_t, rel=0.05)


def test_temperature_wrapper_divides_logits_and_keeps_argmax():
    net = torch.nn.Conv3d(1, 3, 1)
    x = torch.randn(2, 1, 4, 4, 4)
    scaled = TemperatureScaled(net, 4.0)
    assert torch.allclose(scaled(x), net(x) / 4.0)
    assert torch.equal(scaled(x).argmax(1), net(x).argmax(1))
    with pytest.raises(ValueError, match="positive"):
        TemperatureScaled(net, 0.0)


def _cfg(dataset: Path, iterations: int = 12, **train) -> RunConfig:
    return RunConfig(
        data=DataConfig(dataset=str(dataset), patch_size=[32, 32, 16]),
        network=NetworkConfig(name="vnet", base_filters=4),
        method=MethodConfig(name="supervised"),
        train=TrainConfig(iterations=iterations, lr=0.05, lr_step=10_000, val_every=1000, checkpoint_every=1000, log_every=5, **train),
        inference=InferenceConfig(mc_samples=2, overlap=0.25),
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("calib")
    dataset = make_synthetic_dataset(root / "data", labeled=2, unlabeled=0, validation=1, test=1, shape=(32, 32, 16), seed=5, difficulty=0.2)
    run = root / "run"
    Trainer(_cfg(dataset), run).fit()
    return dataset, run


def test_calibrate_on_validation_and_predict_applies_it(trained, tmp_path):
    dataset, run = trained
    doc = calibrate_run(run, max_voxels_per_case=20_000)
    assert doc["mc_samples"] == 2 and "mean of 2 MC-dropout draw(s)" in doc["prediction"]
    stored = json.loads((run / "calibration.json").read_text())
    assert stored["temperature"] == pytest.approx(doc["temperature"]) and stored["fitted_on"] == "validation"
    assert stored["cases"] == [c.name for c in DatasetSpec.from_json(dataset).validation]
    assert doc["nll_after"] <= doc["nll_before"] + 1e-9  # T minimises the NLL it is fitted on (T = 1 is a candidate)
    spec = DatasetSpec.from_json(dataset)
    model = load_trained(run / "checkpoints" / "best.pt")
    assert model.temperature == pytest.approx(doc["temperature"]) and model.calibration["applied"]
    rows = predict_files(model, [spec.test[0].image], tmp_path / "p", mc_samples=1, save_probabilities=True)
    scores = json.loads((tmp_path / "p" / "scores.json").read_text())
    assert scores["settings"]["calibration"]["applied"] and rows[0]["temperature"] == pytest.approx(doc["temperature"])
    raw = load_trained(run / "checkpoints" / "best.pt", calibration=False)
    rows_raw = predict_files(raw, [spec.test[0].image], tmp_path / "q", mc_samples=1)
    assert rows_raw[0]["temperature"] == "" and not json.loads((tmp_path / "q" / "scores.json").read_text())["settings"]["calibration"]["applied"]
    # A calibration fitted for another checkpoint is not applied, and says why.
    (run / "calibration.json").write_text(json.dumps({**stored, "checkpoint_iteration": 999}))
    stale = load_trained(run / "checkpoints" / "best.pt")
    assert stale.temperature is None and "iteration 999" in stale.calibration["reason"]
    (run / "calibration.json").write_text(json.dumps(stored))


def test_calibrate_on_another_datasets_validation_cases(tmp_path):
    dataset = make_synthetic_dataset(tmp_path / "data", labeled=2, unlabeled=0, validation=0, test=0, shape=(32, 32, 16), seed=6, difficulty=0.2)
    run = tmp_path / "run"
    Trainer(_cfg(dataset, iterations=4), run).fit()
    held = make_synthetic_dataset(tmp_path / "held", labeled=1, unlabeled=0, validation=2, test=0, shape=(32, 32, 16), seed=9, difficulty=0.2)
    doc = calibrate_run(run, dataset=held, max_voxels_per_case=5_000)
    assert doc["fitted_on"] == "validation" and doc["fold_runs"] == []
    assert doc["cases"] == [c.name for c in DatasetSpec.from_json(held).validation] and doc["dataset"] == str(held.resolve())
    assert not (run / "calibration").exists()  # no cross-fitting models were trained


def test_cross_fitting_without_validation(tmp_path):
    dataset = make_synthetic_dataset(tmp_path / "data", labeled=2, unlabeled=0, validation=0, test=0, shape=(32, 32, 16), seed=6, difficulty=0.2)
    run = tmp_path / "run"
    Trainer(_cfg(dataset, iterations=4), run).fit()
    doc = calibrate_run(run, folds=2, fold_iterations=3, max_voxels_per_case=5_000)
    assert doc["fitted_on"].startswith("cross-fitted") and len(doc["fold_runs"]) == 2
    assert all((Path(r) / "checkpoints" / "best.pt").exists() for r in doc["fold_runs"])
    from semisup.data import DataError

    with pytest.raises(DataError, match="only 2 labeled"):
        calibrate_run(run, folds=3)


def test_warm_start_loads_weights_only(trained, tmp_path):
    dataset, run = trained
    parent = run / "checkpoints" / "best.pt"
    # lr 0 and no weight decay: the child's weights after one step are exactly the parent's.
    cfg = _cfg(dataset, iterations=1, init_from=str(parent), momentum=0.0, weight_decay=0.0)
    cfg.train.lr = 0.0
    events = []
    Trainer(cfg, tmp_path / "child", emit=lambda e, **f: events.append((e, f))).fit()
    assert events[0][0] == "start" and events[0][1]["init_from"] == str(parent)
    a = load_checkpoint(parent)["method"]
    b = load_checkpoint(tmp_path / "child" / "checkpoints" / "last.pt")
    assert b["iteration"] == 1
    for key, value in a.items():
        if value.is_floating_point() and "running" not in key:
            assert torch.equal(value, b["method"][key]), key
    bad = _cfg(dataset, iterations=1, init_from=str(parent))
    bad.network.base_filters = 8
    with pytest.raises(CheckpointError, match="best.pt: train.init_from: its network"):
        Trainer(bad, tmp_path / "bad").fit()


def test_calibration_draws_differ_under_a_seeded_predictor(trained):
    """predict_array seeds every call with inference.seed: the draws must still differ."""
    from semisup.data import DatasetSpec, load_validation_cases
    from semisup.engine.calibrate import _held_out_voxels

    dataset, run = trained
    model = load_trained(run / "checkpoints" / "best.pt", calibration=False)
    cases = load_validation_cases(DatasetSpec.from_json(dataset), model.cfg, run / "cache")
    lp, y, draws = _held_out_voxels(model, cases, 5.0, 2000, np.random.default_rng(0), 2)
    assert draws == 2 and lp.shape[0] == 2 and not np.allclose(lp[0], lp[1])
