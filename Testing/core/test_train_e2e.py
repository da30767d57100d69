"""End to end through the real engine, CLI and files: learning, cancel, kill + resume, outputs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import yaml

from semisup.config import DataConfig, InferenceConfig, MethodConfig, NetworkConfig, RunConfig, TrainConfig, save_config
from semisup.data import DatasetSpec, image_to_array, preprocess_image, read_image
from semisup.engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from semisup.engine.trainer import Trainer
from semisup.measure.metrics import evaluate_case
from semisup.engine.predict import load_trained, predict_array
from semisup.data.synthetic import make_synthetic_dataset

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO / "SemiSupUncertainty"), "OMP_NUM_THREADS": "1"}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    return make_synthetic_dataset(root, labeled=3, unlabeled=4, validation=1, test=2, shape=(32, 32, 16), seed=3, difficulty=0.2)


def tiny_config(dataset: Path, method: str = "uamt", iterations: int = 60, base_filters: int = 4, **train) -> RunConfig:
    params = {"iterations_per_epoch": 2, "consistency_rampup": 10.0, "mc_samples": 2} if method in ("uamt", "mean_teacher") else {}
    return RunConfig(
        data=DataConfig(dataset=str(dataset), patch_size=[32, 32, 16]),
        network=NetworkConfig(name="vnet", base_filters=base_filters),
        method=MethodConfig(name=method, params=params),
        train=TrainConfig(
            iterations=iterations, lr=0.05, lr_step=10_000, val_every=20, checkpoint_every=10, log_every=5, **train
        ),
        inference=InferenceConfig(mc_samples=2, overlap=0.25),
    )


def test_dataset_description_roundtrips(dataset):
    spec = DatasetSpec.from_json(dataset)
    assert len(spec.training) == 3 and len(spec.unlabeled) == 4 and len(spec.test) == 2


def _test_dice(model, spec, cfg) -> float:
    scores = []
    for case in spec.test:
        img = read_image(case.image)
        out = predict_array(model.networks, preprocess_image(img, cfg.data), cfg, torch.device("cpu"), mc_samples=1)
        ref = image_to_array(read_image(case.label))
        scores.append(evaluate_case(out["label"], ref, spec.num_classes, img.GetSpacing(), spec.class_names)["mean"]["dice"])
    return float(np.mean(scores))


def test_uamt_learns(dataset, tmp_path):
    cfg = tiny_config(dataset, iterations=100, base_filters=8)
    spec = DatasetSpec.from_json(dataset)
    events = []
    result = Trainer(cfg, tmp_path / "run", emit=lambda event, **f: events.append({"event": event, **f})).fit()
    assert result.iteration == 100
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "done" and "validation" in kinds
    losses = [e["losses"] for e in events if e["event"] == "iteration"]
    assert "consistency" in losses[-1] and "mask_ratio" in losses[-1]

    trained = load_trained(result.best_checkpoint)
    # An untrained model of the same architecture: the reference point for "learns".
    untrained_state = {**load_checkpoint(result.best_checkpoint)}
    torch.manual_seed(0)
    from semisup.methods import build_method

    untrained_state["method"] = build_method(cfg, spec.num_classes).state_dict()
    path = save_checkpoint({k: v for k, v in untrained_state.items() if k not in ("format", "version")}, tmp_path / "untrained.pt")
    untrained = load_trained(path)
    dice_trained, dice_untrained = _test_dice(trained, spec, cfg), _test_dice(untrained, spec, cfg)
    assert dice_trained > 0.5, dice_trained
    assert dice_trained > dice_untrained + 0.25, (dice_trained, dice_untrained)


def _cli(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "semisup", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, **kw
    )


def _events(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _wait_for_checkpoint(run: Path, proc: subprocess.Popen, at_least: int, timeout: float = 120) -> int:
    log = run / "progress.jsonl"
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, proc.stderr.read()
        if log.exists():
            done = [e["iteration"] for e in _events(log.read_text()) if e["event"] == "checkpoint" and e["kind"] == "last"]
            if done and done[-1] >= at_least:
                return done[-1]
        time.sleep(0.2)
    raise AssertionError("no checkpoint in time")


def test_kill_then_resume_finishes_from_checkpoint(dataset, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    save_config(tiny_config(dataset, method="mean_teacher", iterations=400), run / "config.yaml")
    proc = _cli("train", "--run-dir", str(run), "--progress", "json")
    reached = _wait_for_checkpoint(run, proc, 20)
    proc.kill()  # SIGKILL: no chance to clean up
    proc.wait(timeout=30)
    assert (run / "checkpoints" / "last.pt").exists()
    load_checkpoint(run / "checkpoints" / "last.pt")  # intact despite the kill

    proc = _cli("train", "--run-dir", str(run), "--resume", "--progress", "json", "--set", "train.iterations=40")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    events = _events(out)
    start = next(e for e in events if e["event"] == "start")
    assert start["start_iteration"] >= reached >= 20
    assert events[-1]["event"] == "done" and events[-1]["iteration"] == 40
    # iterations continue from the checkpoint rather than from zero
    its = [e["iteration"] for e in events if e["event"] == "iteration"]
    assert its and min(its) > reached


def test_sigterm_cancels_gracefully(dataset, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    save_config(tiny_config(dataset, iterations=5000), run / "config.yaml")
    proc = _cli("train", "--run-dir", str(run), "--progress", "json")
    _wait_for_checkpoint(run, proc, 10)
    sent = time.time()
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 3
    assert time.time() - sent < 30
    last = _events(out)[-1]
    assert last["event"] == "cancelled"
    assert load_checkpoint(last["checkpoint"])["iteration"] == last["iteration"]


def test_cancel_request_file_stops_like_sigterm(dataset, tmp_path):
    """The stop request that needs no signal (Windows front ends): checkpoint at the cancel iteration, exit 3."""
    from semisup.protocol import CANCEL_FILE

    run = tmp_path / "run"
    run.mkdir()
    (run / CANCEL_FILE).write_text("stale, from an attempt killed before it stopped")
    save_config(tiny_config(dataset, iterations=5000), run / "config.yaml")
    proc = _cli("train", "--run-dir", str(run), "--progress", "json")
    _wait_for_checkpoint(run, proc, 4)  # the stale request was dropped at start-up
    (run / CANCEL_FILE).write_text("cancel")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 3
    last = _events(out)[-1]
    assert last["event"] == "cancelled" and not (run / CANCEL_FILE).exists()
    assert load_checkpoint(last["checkpoint"])["iteration"] == last["iteration"]


def test_cli_predict_writes_outputs_on_input_geometry(dataset, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    save_config(tiny_config(dataset, method="supervised", iterations=10), run / "config.yaml")
    proc = _cli("train", "--run-dir", str(run), "--progress", "none")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err

    # An oblique, anisotropic copy of a test image: outputs must land on exactly its grid.
    spec = DatasetSpec.from_json(dataset)
    img = read_image(spec.test[0].image)
    img.SetDirection((0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    img.SetOrigin((12.5, -3.0, 40.0))
    oblique = tmp_path / "oblique_case.nii.gz"
    sitk.WriteImage(img, str(oblique))

    out_dir = tmp_path / "pred"
    proc = _cli("predict", "--run-dir", str(run), "--input", str(oblique), "--output-dir", str(out_dir), "--mc-samples", "3", "--progress", "json")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    events = _events(out)
    # The swapped x/y axes differ from the training images' (LPS): predict warns (issue 16, item 9).
    # A 10-iteration model may also get the size check's warning after "predicted"; nothing else may come.
    kinds = [e["event"] for e in events]
    size_warnings = [e for e in events[3:-1] if e["event"] == "warning" and "check this segmentation" in e["message"]]
    assert kinds[:3] == ["predict_start", "warning", "predicted"] and kinds[-1] == "predict_done"
    assert len(kinds) == 4 + len(size_warnings)
    assert "oriented ALS" in events[1]["message"] and "LPS" in events[1]["message"]
    for kind in ("label", "uncertainty", "mutual_information"):
        res = sitk.ReadImage(str(out_dir / f"oblique_case_{kind}.nrrd"))
        assert res.GetSize() == img.GetSize()
        assert np.allclose(res.GetDirection(), img.GetDirection())
        assert np.allclose(res.GetOrigin(), img.GetOrigin())
        assert np.allclose(res.GetSpacing(), img.GetSpacing())
    unc = sitk.GetArrayFromImage(sitk.ReadImage(str(out_dir / "oblique_case_uncertainty.nrrd")))
    assert np.isfinite(unc).all() and unc.min() >= 0 and unc.max() <= np.log(2) + 1e-4
    rows = (out_dir / "scores.csv").read_text().splitlines()
    assert rows[0].startswith("case,") and len(rows) == 2


class Payload:
    """Any pickled object beyond plain data: loading it could run code, so it is refused."""


def test_corrupt_and_untrusted_checkpoints_are_refused(tmp_path):
    bad = tmp_path / "truncated.pt"
    bad.write_bytes(b"PK\x03\x04 not really a checkpoint")
    with pytest.raises(CheckpointError, match="truncated.pt: corrupt or truncated"):
        load_checkpoint(bad)

    evil = tmp_path / "evil.pt"
    torch.save({"format": "semisup-checkpoint/1", "obj": Payload()}, evil)
    with pytest.raises(CheckpointError, match="evil.pt: refused to load"):
        load_checkpoint(evil)

    other = tmp_path / "other.pt"
    torch.save({"state_dict": {}}, other)
    with pytest.raises(CheckpointError, match="not a semisup checkpoint"):
        load_checkpoint(other)

    proc = _cli("predict", "--checkpoint", str(bad), "--input", str(bad), "--output-dir", str(tmp_path / "o"), "--progress", "json")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert "corrupt or truncated" in _events(out)[-1]["message"]


def test_bad_config_names_the_setting(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"train": {"iterations": 10, "learning_rate": 0.1}}))
    proc = _cli("train", "--config", str(cfg), "--run-dir", str(tmp_path / "r"), "--progress", "json")
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert "learning_rate" in _events(out)[-1]["message"]
