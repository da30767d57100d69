"""Reproducible prediction (issue 14 item 4), seam-free MC maps (issue 13 item 5), and the
post-processing options: seeded draws, masks shared across windows, label source,
test-time flips, largest component chosen on validation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from semisup.config import ConfigError, DataConfig, InferenceConfig, MethodConfig, NetworkConfig, RunConfig, TrainConfig
from semisup.data.synthetic import make_synthetic_dataset
from semisup.engine.checkpoint import load_checkpoint
from semisup.engine.predict import largest_component_classes
from semisup.engine.trainer import Trainer
from semisup.inference import largest_connected_component, predict_volume, window_borders
from semisup.measure.metrics import dice_per_class

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO / "SemiSupUncertainty"), "OMP_NUM_THREADS": "1"}


# ----------------------------------------------------------------------------- tiny networks


class PointwiseDropout(nn.Module):
    """1x1x1 convolutions around a channel dropout: no spatial context, so any difference
    between windows of a constant image comes from their dropout draws alone."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Conv3d(1, 8, 1)
        self.drop = nn.Dropout3d(0.5)
        self.b = nn.Conv3d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.drop(torch.relu(self.a(x))))


class SmallConv(nn.Module):
    """A 3x3x3 convolution (not flip-symmetric) with channel dropout."""

    def __init__(self, dropout: bool = True) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.a = nn.Conv3d(1, 4, 3, padding=1)
        self.drop = nn.Dropout3d(0.5) if dropout else nn.Identity()
        self.b = nn.Conv3d(4, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.drop(torch.relu(self.a(x))))


def _image(shape=(32, 32, 16), seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, 1, *shape, generator=g)


# ----------------------------------------------------------------------------- predictor


def test_window_borders_hand_computed() -> None:
    # size 32, window 16, overlap 0.25: step int(16 * 0.75) = 12, starts 0, 12 and 32 - 16 = 16
    # (MONAI moves the last window back inside), ends 16, 28, 32 -> inner borders 12, 16, 28.
    assert window_borders([32, 16], [16, 16], 0.25) == [[12, 16, 28], []]
    # overlap 0: windows 0-16 and 16-32, one border at 16.
    assert window_borders([32], [16], 0.0) == [[16]]


def test_shared_masks_remove_window_seams() -> None:
    net = PointwiseDropout()
    image = torch.ones(1, 1, 32, 32, 16)  # constant: every voxel should get the same answer
    kwargs = dict(mc_samples=4, overlap=0.0, sw_batch_size=2)
    independent = predict_volume(net, image, [16, 16, 16], seed=0, shared_masks=False, **kwargs)["entropy"]
    shared = predict_volume(net, image, [16, 16, 16], seed=0, shared_masks=True, **kwargs)["entropy"]
    # Independent draws per window: the four windows have different levels (the seams).
    assert independent.max() - independent.min() > 1e-3
    # Shared masks: the same four thinned networks everywhere, so one level.
    assert float(shared.max() - shared.min()) < 1e-6


def test_seeded_prediction_is_reproducible_and_leaves_global_rng() -> None:
    net = SmallConv()
    image = _image()
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = predict_volume(net, image, [16, 16, 16], mc_samples=3, seed=7, shared_masks=True)
    after = torch.rand(1)
    b = predict_volume(net, image, [16, 16, 16], mc_samples=3, seed=7, shared_masks=True)
    c = predict_volume(net, image, [16, 16, 16], mc_samples=3, seed=8, shared_masks=True)
    for key in ("probabilities", "entropy", "mutual_information", "label"):
        assert torch.equal(a[key], b[key]), key
    assert not torch.equal(a["entropy"], c["entropy"])  # the seed is what picks the draws
    assert torch.equal(before, after)  # the caller's random stream is untouched


def test_label_source_dropout_off_is_the_eval_pass() -> None:
    net = SmallConv()
    image = _image(seed=2)
    off = predict_volume(net, image, [16, 16, 16], mc_samples=4, seed=0, label_source="dropout_off")
    eval_pass = predict_volume(net, image, [16, 16, 16], mc_samples=1)
    assert torch.allclose(off["label_probabilities"], eval_pass["probabilities"], atol=1e-6)
    assert torch.equal(off["label"], eval_pass["probabilities"].argmax(1, keepdim=True))
    # The uncertainty maps stay those of the MC samples.
    mc = predict_volume(net, image, [16, 16, 16], mc_samples=4, seed=0)
    assert torch.equal(off["entropy"], mc["entropy"]) and torch.equal(mc["label_probabilities"], mc["probabilities"])


def test_flip_tta_averages_the_flipped_predictions() -> None:
    net = SmallConv(dropout=False)
    image = _image(seed=3)
    roi = [32, 32, 16]  # one window: the average is easy to write down
    plain = predict_volume(net, image, roi, mc_samples=1)["probabilities"]
    flipped = torch.flip(predict_volume(net, torch.flip(image, [2]), roi, mc_samples=1)["probabilities"], [2])
    tta = predict_volume(net, image, roi, mc_samples=1, flip_axes=[0])["probabilities"]
    assert not torch.allclose(plain, flipped, atol=1e-4)  # the network is not flip-symmetric
    assert torch.allclose(tta, (plain + flipped) / 2, atol=1e-6)
    with pytest.raises(ValueError, match="flip_axes"):
        predict_volume(net, image, roi, flip_axes=[3])


def test_largest_component_only_for_chosen_classes() -> None:
    label = torch.zeros(1, 1, 10, 10, 1, dtype=torch.int64)
    label[0, 0, 0:3, 0:3] = 1  # class 1: 9 voxels
    label[0, 0, 8, 8] = 1  # class 1: a 1-voxel fragment
    label[0, 0, 5:7, 0:2] = 2  # class 2: 4 voxels
    label[0, 0, 9, 0] = 2  # class 2: a 1-voxel fragment
    only2 = largest_connected_component(label, 3, classes=[2])
    assert int((only2 == 1).sum()) == 10 and int((only2 == 2).sum()) == 4
    assert torch.equal(largest_connected_component(label, 3, classes=[]), label)
    with pytest.raises(ValueError, match="foreground classes"):
        largest_connected_component(label, 3, classes=[3])


def test_dice_per_class_hand_computed() -> None:
    pred = np.array([0, 1, 1, 2, 0, 0])
    ref = np.array([0, 1, 0, 2, 2, 0])
    # class 1: |P| = 2, |R| = 1, overlap 1 -> 2 / 3; class 2: |P| = 1, |R| = 2, overlap 1 -> 2 / 3;
    # class 3: absent from both -> 1.0
    assert dice_per_class(pred, ref, 4) == pytest.approx({1: 2 / 3, 2: 2 / 3, 3: 1.0})


def test_inference_config_validation() -> None:
    for key, bad in (("label_source", "best"), ("blend_mode", "box"), ("largest_component", "sometimes"), ("flip_axes", [3])):
        with pytest.raises(ConfigError, match=f"inference.{key}"):
            RunConfig.from_dict({"inference": {key: bad}}, source="cfg.yaml")
    cfg = RunConfig.from_dict({"inference": {"largest_component": "auto"}})
    assert largest_component_classes(cfg, 4, {"largest_component_classes": [2]}) == [2]
    assert largest_component_classes(cfg, 4, None) == []  # no stored decision: nothing
    cfg.inference.largest_component = True
    assert largest_component_classes(cfg, 4, None) == [1, 2, 3]


# ----------------------------------------------------------------------------- files, end to end


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("repro")
    dataset = make_synthetic_dataset(root / "data", labeled=2, unlabeled=2, validation=1, test=2, shape=(32, 32, 16), seed=5)
    cfg = RunConfig(
        data=DataConfig(dataset=str(dataset), patch_size=[16, 16, 16], target_spacing=[2.0, 2.0, 1.5]),
        network=NetworkConfig(name="vnet", base_filters=4),
        method=MethodConfig(name="supervised"),
        train=TrainConfig(iterations=6, lr=0.05, val_every=3, checkpoint_every=3, log_every=3, seed=1),
        inference=InferenceConfig(mc_samples=3, overlap=0.25, largest_component="auto"),
    )
    Trainer(cfg, root / "run").fit()
    return root / "run" / "checkpoints" / "last.pt", dataset


def _predict(checkpoint: Path, inputs: list[str], out: Path, *extra: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "semisup", "predict", "--checkpoint", str(checkpoint), "--input", *inputs,
         "--output-dir", str(out), "--progress", "none", *extra],
        env=ENV, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr


def test_two_predict_runs_give_identical_files(trained, tmp_path) -> None:
    checkpoint, dataset = trained
    inputs = [str(dataset.parent / c["image"]) for c in json.loads(dataset.read_text())["test"]]
    _predict(checkpoint, inputs, tmp_path / "a")
    _predict(checkpoint, inputs, tmp_path / "b")
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "b").iterdir())
    assert any(n.endswith("_uncertainty.nrrd") for n in names) and "scores.csv" in names
    for name in names:  # byte for byte, NRRD maps and the ranking alike
        a, b = (tmp_path / "a" / name).read_bytes(), (tmp_path / "b" / name).read_bytes()
        if name.startswith("scores."):  # these name the output files, whose folders differ
            a, b = a.replace(bytes(tmp_path / "a"), b""), b.replace(bytes(tmp_path / "b"), b"")
        assert a == b, name
    settings = json.loads((tmp_path / "a" / "scores.json").read_text())["settings"]
    assert settings["mc_seed"] == 0 and settings["shared_masks"] is True
    # The stored validation decision is what "auto" applied.
    stored = load_checkpoint(checkpoint)["postprocessing"]
    assert settings["largest_component_classes"] == stored["largest_component_classes"]
    assert stored["validation_cases"] == 1 and set(stored["dice_with"]) == set(stored["dice_without"])
    # The model ran on a 2 mm grid; every map is written on the input's own grid.
    import SimpleITK as sitk

    image = sitk.ReadImage(inputs[0])
    for kind in ("label", "uncertainty", "mutual_information"):
        out = sitk.ReadImage(str(tmp_path / "a" / f"{Path(inputs[0]).name.split('.')[0]}_{kind}.nrrd"))
        assert out.GetSize() == image.GetSize() and out.GetSpacing() == image.GetSpacing()
        assert out.GetOrigin() == image.GetOrigin() and out.GetDirection() == image.GetDirection()
    # Another seed, other draws: the uncertainty map changes.
    _predict(checkpoint, inputs, tmp_path / "c", "--seed", "1")
    unc = next(n for n in names if n.endswith("_uncertainty.nrrd"))
    assert (tmp_path / "c" / unc).read_bytes() != (tmp_path / "a" / unc).read_bytes()


def test_seam_ratio_hand_computed() -> None:
    from semisup.measure.seams import seam_ratio

    # 1-D map 0, 0, 1, 1, 3 with a window border at 2: jumps 0, 1, 0, 2; at the border 1,
    # elsewhere (0 + 0 + 2) / 3 -> ratio 1 / (2 / 3) = 1.5.
    assert seam_ratio(np.array([0.0, 0.0, 1.0, 1.0, 3.0]), [[2]]) == pytest.approx(1.5)
    # A map with a step at a border only: infinite seams -> nan guard when nothing else varies.
    assert np.isnan(seam_ratio(np.array([0.0, 0.0, 1.0, 1.0]), [[2]]))
    # 2-D: a seam along axis 0 only; axis 1 has no borders and smooth rows.
    u = np.array([[0.0, 0.1], [0.0, 0.1], [0.5, 0.6]])
    # axis 0 jumps: rows 0->1: |0|,|0| (elsewhere), rows 1->2: 0.5, 0.5 (border at 2);
    # axis 1 jumps: 0.1 x 3 (elsewhere). border mean 0.5; elsewhere (0 + 0 + 0.3) / 5 = 0.06.
    assert seam_ratio(u, [[2], []]) == pytest.approx(0.5 / 0.06)
    with pytest.raises(ValueError, match="outside"):
        seam_ratio(u, [[3], []])
