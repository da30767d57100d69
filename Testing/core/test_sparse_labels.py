"""Sparse labels: the dataset's ``ignore`` value is parsed, cached as IGNORE_INDEX, and left
out of the supervised loss, the foreground crops and the metrics."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from semisup.config import DataConfig, InferenceConfig, MethodConfig, NetworkConfig, RunConfig, TrainConfig
from semisup.data import DataError, DatasetSpec, check_dataset, foreground_samples, preprocess_label
from semisup.data.dataset import IGNORE_INDEX, parse_labels
from semisup.data.synthetic import make_synthetic_dataset
from semisup.engine.trainer import Trainer
from semisup.measure.evaluate import evaluate_predictions
from semisup.measure.metrics import evaluate_case
from semisup.methods.coranet import masked_soft_dice
from semisup.methods.losses import masked_dice_loss, supervised_loss


def _logits(*probs: list[float]) -> torch.Tensor:
    """(1, C, N) logits whose softmax is the given per-voxel distributions."""
    return torch.log(torch.tensor(probs, dtype=torch.float64)).T.unsqueeze(0).float()


# -- dataset.json ---------------------------------------------------------------------
def test_labels_parse_msd_and_nnunet_v2_forms():
    assert parse_labels({"0": "background", "1": "atrium", "ignore": 2}, "d") == ({0: "background", 1: "atrium"}, 2)
    assert parse_labels({"background": 0, "atrium": 1, "ignore": 4}, "d") == ({0: "background", 1: "atrium"}, 4)
    assert parse_labels({"0": "background", "1": "atrium"}, "d") == ({0: "background", 1: "atrium"}, None)
    with pytest.raises(DataError, match="'ignore' must be an integer"):
        parse_labels({"0": "background", "1": "atrium", "ignore": 1.5}, "d")


def test_ignore_must_be_above_the_classes(tmp_path):
    with pytest.raises(DataError, match=r"'ignore' is 1; it must be above every class value \(largest 1\)"):
        DatasetSpec(root=tmp_path, labels={0: "bg", 1: "a"}, training=[], ignore_label=1, source="x.json")


def _sparse_dataset(root: Path) -> Path:
    """The synthetic set with every 2nd z slice of the training labels set to ignore (2)."""
    path = make_synthetic_dataset(root, labeled=2, unlabeled=0, validation=1, test=0, shape=(32, 32, 16), seed=5,
                                  difficulty=0.1)
    raw = json.loads(path.read_text())
    for entry in raw["training"]:
        img = sitk.ReadImage(str(root / entry["label"]))
        arr = sitk.GetArrayFromImage(img)
        arr[1::2] = 2
        out = sitk.GetImageFromArray(arr)
        out.CopyInformation(img)
        sitk.WriteImage(out, str(root / entry["label"]))
    raw["labels"]["ignore"] = 2
    path.write_text(json.dumps(raw))
    return path


@pytest.fixture(scope="module")
def sparse_dataset(tmp_path_factory) -> Path:
    return _sparse_dataset(tmp_path_factory.mktemp("sparse"))


def test_spec_and_checks_accept_the_ignore_value(sparse_dataset, tmp_path):
    spec = DatasetSpec.from_json(sparse_dataset)
    assert spec.ignore_label == 2 and spec.num_classes == 2
    check_dataset(spec, 3)  # 2 is allowed as the ignore value
    spec.to_json(tmp_path / "copy.json")
    assert DatasetSpec.from_json(tmp_path / "copy.json", check_files=False).ignore_label == 2
    # Without the declaration, 2 is an out-of-range value again.
    raw = json.loads(sparse_dataset.read_text())
    del raw["labels"]["ignore"]
    (sparse_dataset.parent / "plain.json").write_text(json.dumps(raw))
    with pytest.raises(DataError, match=r"label values 2 outside 0\.\.1"):
        check_dataset(DatasetSpec.from_json(sparse_dataset.parent / "plain.json"), 3)


def test_preprocess_maps_ignore_and_crops_skip_it():
    label = sitk.GetImageFromArray(np.array([[[0, 1, 2, 2]]], dtype=np.uint8))
    arr = preprocess_label(label, DataConfig(), ignore_label=2)
    assert arr[0].ravel().tolist() == [0, 1, IGNORE_INDEX, IGNORE_INDEX]
    assert foreground_samples(arr[0])[:, 0].tolist() == [1]  # only class 1 is a crop centre


# -- losses -----------------------------------------------------------------------------
def test_masked_dice_by_hand_masked_voxels_are_not_background():
    # Voxel 1: p = (.5, .5), label 0; voxel 2: p = (.25, .75), label 1; voxel 3 masked (label 0).
    logits = _logits([0.5, 0.5], [0.25, 0.75], [0.9, 0.1])
    target = torch.tensor([[[0, 1, 0]]])
    mask = torch.tensor([[[1.0, 1.0, 0.0]]])
    # Linear Dice over voxels 1-2, background included: class 0: 2*.5/(1.5 + .25); class 1: 2*.75/(.5 + 1.75).
    expected = 1 - (1.0 / 1.75 + 1.5 / 2.25) / 2
    got = masked_dice_loss(logits, target, mask, include_background=True, squared_pred=False, smooth=0.0)
    assert got.item() == pytest.approx(expected, abs=1e-6)
    # The CoraNet loss (formerly hand-written) gives the same value on the same case.
    assert masked_soft_dice(logits, target[:, 0], mask[:, 0], smooth=0.0).item() == pytest.approx(expected, abs=1e-6)


def test_supervised_loss_skips_ignored_voxels_by_hand():
    # Two voxels, p = (.25, .75) both; labels 1 and IGNORE: only voxel 1 counts.
    logits = _logits([0.25, 0.75], [0.25, 0.75]).reshape(1, 2, 2, 1, 1)
    target = torch.tensor([1, IGNORE_INDEX]).reshape(1, 1, 2, 1, 1)
    ce = -math.log(0.75)
    # Binary: foreground Dice only, squared denominators: 2*.75 / (.75^2 + 1) (smooth 1e-5 negligible).
    dice = 1 - 1.5 / (0.5625 + 1.0)
    assert supervised_loss(logits, target).item() == pytest.approx(0.5 * (ce + dice), abs=1e-4)
    # All voxels ignored: zero, with a gradient path.
    logits.requires_grad_(True)
    zero = supervised_loss(logits, torch.full_like(target, IGNORE_INDEX))
    assert zero.item() == 0.0 and zero.requires_grad


def test_supervised_loss_unchanged_without_ignore():
    torch.manual_seed(0)
    logits, target = torch.randn(2, 3, 4, 4, 2), torch.randint(0, 3, (2, 1, 4, 4, 2))
    mask = torch.ones_like(target, dtype=torch.float32)
    reference = 0.5 * (F.cross_entropy(logits, target[:, 0]) + masked_dice_loss(logits, target, mask))
    assert supervised_loss(logits, target).item() == pytest.approx(reference.item(), abs=1e-6)


# -- metrics ----------------------------------------------------------------------------
def test_metrics_leave_ignored_voxels_out():
    ref = np.array([[1, 1, IGNORE_INDEX, IGNORE_INDEX]])
    pred = np.array([[1, 0, 1, 1]])
    row = evaluate_case(pred, ref, 2, ignore_index=IGNORE_INDEX)
    # Labeled voxels: TP 1, FN 1, FP 0 -> Dice 2/3 (the predicted ignored voxels are no FP).
    assert row["classes"]["class_1"]["dice"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="outside 0..1"):
        evaluate_case(pred, ref, 2)


# -- end to end -------------------------------------------------------------------------
def _cfg(dataset: Path, method: str) -> RunConfig:
    return RunConfig(
        data=DataConfig(dataset=str(dataset), patch_size=[32, 32, 16], foreground_oversample=0.5),
        network=NetworkConfig(name="vnet", base_filters=4),
        method=MethodConfig(name=method),
        train=TrainConfig(iterations=4, labeled_batch=1, unlabeled_batch=0, val_every=4, checkpoint_every=4,
                          log_every=2, lr=0.01),
        inference=InferenceConfig(mc_samples=1, overlap=0.25),
    )


def test_training_on_sparse_labels_and_refusal(sparse_dataset, tmp_path):
    events = []
    Trainer(_cfg(sparse_dataset, "supervised"), tmp_path / "run", emit=lambda e, **f: events.append((e, f))).fit()
    losses = [f["loss"] for e, f in events if e == "iteration"]
    assert losses and all(math.isfinite(v) for v in losses)
    with pytest.raises(Exception, match=r"'ignore': 2 \(sparse labels\), which method 'ucmt' does not support"):
        Trainer(_cfg(sparse_dataset, "ucmt"), tmp_path / "run2").fit()


def test_evaluate_skips_ignore_of_the_dataset(sparse_dataset, tmp_path):
    spec = DatasetSpec.from_json(sparse_dataset)
    for case in spec.training:
        ref = sitk.ReadImage(str(case.label))
        pred = sitk.GetArrayFromImage(ref)
        pred[pred == 2] = 1  # foreground on every ignored slice: no effect on the scores
        out = sitk.GetImageFromArray(pred)
        out.CopyInformation(ref)
        sitk.WriteImage(out, str(tmp_path / f"{case.name}_label.nrrd"))
    summary = evaluate_predictions(tmp_path, dataset=sparse_dataset, split="training")
    assert summary["mean"]["dice"]["mean"] == pytest.approx(1.0)


def test_bench_la_sparse_label_keeps_every_nth_slice(load_script, tmp_path):
    bench = load_script("bench_la")
    arr = np.ones((12, 3, 4), dtype=np.uint8)  # (z, y, x)
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(tmp_path / "full.nrrd"))
    fraction = bench.sparse_label(tmp_path / "full.nrrd", 5, tmp_path / "sparse.nrrd")
    assert fraction == pytest.approx(3 / 12)  # z = 0, 5, 10
    out = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "sparse.nrrd")))
    assert [int(out[z].max()) for z in range(12)] == [1 if z % 5 == 0 else bench.SPARSE_IGNORE_VALUE for z in range(12)]
