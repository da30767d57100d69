"""``semisup export``: each format loaded by its own runtime (TorchScript without the library,
MONAI's bundle runner, onnxruntime) predicts what the library predicts on the same image."""

from __future__ import annotations

import json
import locale
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from semisup.cli import main as cli_main
from semisup.config import DataConfig, InferenceConfig, MethodConfig, NetworkConfig, RunConfig, TrainConfig
from semisup.data import DatasetSpec, image_to_array, preprocess_image, read_image
from semisup.data.synthetic import make_synthetic_dataset
from semisup.engine.predict import load_trained, predict_array, predict_files
from semisup.engine.trainer import Trainer

pytestmark = pytest.mark.slow

#: Share of voxels whose argmax may flip between runtimes (float ties at the class border).
LABEL_MISMATCH = 1e-3
PROB_TOLERANCE = 1e-4
# A child without the library: PYTHONPATH cleared and any import of semisup refused.
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    dataset = make_synthetic_dataset(root / "data", labeled=2, unlabeled=0, validation=0, test=1, shape=(32, 32, 16),
                                     seed=7, difficulty=0.1)
    cfg = RunConfig(
        data=DataConfig(dataset=str(dataset), patch_size=[32, 32, 16], augment=False, foreground_oversample=1.0),
        network=NetworkConfig(name="vnet", base_filters=4, dropout=True),
        method=MethodConfig(name="supervised"),
        train=TrainConfig(iterations=30, labeled_batch=2, unlabeled_batch=0, lr=0.1, checkpoint_every=30, log_every=10),
        # Overlap and a window smaller than the volume along x: stitching is part of what is compared.
        inference=InferenceConfig(roi_size=[16, 32, 16], overlap=0.5, mc_samples=1),
    )
    Trainer(cfg, root / "run").fit()
    # The test image as NIfTI: the format MONAI's default readers and writers share.
    case = DatasetSpec.from_json(dataset).test[0]
    images = root / "images"
    images.mkdir()
    nifti = images / f"{case.name}.nii.gz"
    sitk.WriteImage(read_image(case.image), str(nifti))
    model = load_trained(root / "run" / "checkpoints" / "best.pt")
    pre = preprocess_image(read_image(nifti), model.cfg.data)
    expected = predict_array(model.networks, pre, model.cfg, torch.device("cpu"), mc_samples=1)
    return {"root": root, "run": root / "run", "image": nifti, "pre": pre, "expected": expected, "model": model}


def _agree(label: np.ndarray, expected: np.ndarray) -> None:
    assert label.shape == expected.shape
    assert float(np.mean(label != expected)) <= LABEL_MISMATCH
    assert expected.any() and (expected == 0).any()  # both classes present: a real comparison


def _sliding(cfg: RunConfig) -> dict:
    return {"roi_size": cfg.inference.roi_size, "sw_batch_size": 2, "overlap": cfg.inference.overlap,
            "mode": cfg.inference.blend_mode}


def test_torchscript_runs_without_the_library(trained, tmp_path):
    out = tmp_path / "model.ts"
    assert cli_main(["export", "--run-dir", str(trained["run"]), "--format", "torchscript", "--output", str(out), "--progress", "none"]) == 0
    np.save(tmp_path / "input.npy", trained["pre"][None])
    script = f"""
import sys
sys.modules["semisup"] = None  # any import of the library fails here
import numpy as np, torch
from monai.inferers import sliding_window_inference
net = torch.jit.load({str(out)!r})
x = torch.from_numpy(np.load({str(tmp_path / 'input.npy')!r}))
with torch.no_grad():
    p = sliding_window_inference(x, predictor=net, **{_sliding(trained['model'].cfg)!r})
np.save({str(tmp_path / 'probs.npy')!r}, p[0].numpy())
"""
    subprocess.run([sys.executable, "-c", script], check=True, env=ENV, cwd=tmp_path, timeout=300)
    probs = np.load(tmp_path / "probs.npy")
    np.testing.assert_allclose(probs, trained["expected"]["probabilities"], atol=PROB_TOLERANCE)
    _agree(probs.argmax(0), trained["expected"]["label"])


def test_bundle_runs_with_monai_bundle_runner(trained, tmp_path):
    bundle = tmp_path / "bundle"
    assert cli_main(["export", "--run-dir", str(trained["run"]), "--format", "bundle", "--output", str(bundle), "--progress", "none"]) == 0
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    image_format = meta["network_data_format"]["inputs"]["image"]
    assert image_format["num_channels"] == 1 and image_format["spatial_shape"] == [16, 32, 16]
    assert meta["network_data_format"]["outputs"]["pred"]["channel_def"] == {"0": "background", "1": "organ"}
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(bundle / "configs" / "inference.json"),
           "--meta_file", str(bundle / "configs" / "metadata.json"), "--bundle_root", str(bundle),
           "--dataset_dir", str(trained["image"].parent), "--output_dir", str(out)]
    subprocess.run(cmd, check=True, env=ENV, cwd=tmp_path, timeout=300, capture_output=True)
    written = sorted(out.glob("*_seg.nii.gz"))
    assert len(written) == 1
    seg = sitk.ReadImage(str(written[0]))
    reference = read_image(trained["image"])
    assert seg.GetSize() == reference.GetSize()
    np.testing.assert_allclose(seg.GetSpacing(), reference.GetSpacing(), rtol=1e-5)
    _agree(image_to_array(seg), trained["expected"]["label"])
    # The library writes the same labels from the same run (files in, files out).
    predict_files(trained["model"], [trained["image"]], tmp_path / "lib", mc_samples=1)
    lib = image_to_array(read_image(tmp_path / "lib" / f"{trained['image'].name[:-7]}_label.nrrd"))
    _agree(image_to_array(seg), lib)


def test_onnx_matches_with_onnxruntime(trained, tmp_path):
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is an optional dependency (pip install onnxruntime)")
    pytest.importorskip("onnx", reason="ONNX export needs the onnx package")
    from monai.inferers import sliding_window_inference

    out = tmp_path / "model.onnx"
    assert cli_main(["export", "--run-dir", str(trained["run"]), "--format", "onnx", "--output", str(out), "--progress", "none"]) == 0
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])

    def predictor(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {"image": x.numpy()})[0])

    x = torch.from_numpy(trained["pre"][None])
    probs = sliding_window_inference(x, predictor=predictor, **_sliding(trained["model"].cfg))[0].numpy()
    np.testing.assert_allclose(probs, trained["expected"]["probabilities"], atol=PROB_TOLERANCE)
    _agree(probs.argmax(0), trained["expected"]["label"])


def test_export_refuses_a_used_bundle_folder(trained, tmp_path, capsys):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file.txt").write_text("keep me")
    code = cli_main(["export", "--run-dir", str(trained["run"]), "--format", "bundle", "--output", str(tmp_path / "taken"), "--progress", "none"])
    assert code == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert (tmp_path / "taken" / "file.txt").read_text() == "keep me"


def test_tensorboard_event_files_beside_the_progress(tmp_path):
    pytest.importorskip("tensorboard", reason="TensorBoard logging is optional (pip install tensorboard)")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    dataset = make_synthetic_dataset(tmp_path / "data", labeled=1, unlabeled=0, validation=1, test=0,
                                     shape=(32, 32, 16), seed=2, difficulty=0.1)
    cfg = RunConfig(
        data=DataConfig(dataset=str(dataset), patch_size=[32, 32, 16]),
        network=NetworkConfig(name="vnet", base_filters=4),
        method=MethodConfig(name="supervised"),
        train=TrainConfig(iterations=4, labeled_batch=1, unlabeled_batch=0, val_every=4, checkpoint_every=4,
                          log_every=2, tensorboard=True),
        inference=InferenceConfig(mc_samples=1),
    )
    events = []
    Trainer(cfg, tmp_path / "run", emit=lambda e, **f: events.append((e, f))).fit()
    acc = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    acc.Reload()
    scalars = acc.Tags()["scalars"]
    assert {"train/loss", "train/sup", "train/lr", "validation/dice", "validation/dice_organ"} <= set(scalars)
    logged = {e.step: e.value for e in acc.Scalars("train/loss")}
    expected = {f["iteration"]: f["loss"] for e, f in events if e == "iteration"}
    assert logged.keys() == expected.keys() == {2, 4}
    assert all(logged[k] == pytest.approx(expected[k], rel=1e-6) for k in expected)


def test_predict_reads_a_dicom_series_folder(trained, tmp_path):
    """A DICOM series written by SimpleITK, given to predict as a folder: same labels as the NIfTI."""
    volume = sitk.Cast(read_image(trained["image"]), sitk.sitkInt16)
    folder = tmp_path / "series"
    folder.mkdir()
    direction = volume.GetDirection()
    saved_locale = locale.setlocale(locale.LC_ALL)  # GDCM's DICOM writer sets the C locale process-wide
    for z in range(volume.GetDepth()):
        plane = volume[:, :, z]
        position = volume.TransformIndexToPhysicalPoint((0, 0, z))
        tags = {
            "0008|0060": "MR",
            "0020|000d": "1.2.826.0.1.3680043.2.1125.1",
            "0020|000e": "1.2.826.0.1.3680043.2.1125.1.1",
            "0020|0032": "\\".join(f"{v:.6f}" for v in position),
            "0020|0037": "\\".join(f"{v:.6f}" for v in (direction[0], direction[3], direction[6], direction[1], direction[4], direction[7])),
            "0020|0013": str(z + 1),
            "0008|0018": f"1.2.826.0.1.3680043.2.1125.1.1.{z + 1}",
            "0028|0030": "\\".join(f"{v:.6f}" for v in volume.GetSpacing()[1::-1]),
            "0018|0050": f"{volume.GetSpacing()[2]:.6f}",
        }
        for key, value in tags.items():
            plane.SetMetaData(key, value)
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()  # else every slice gets its own new series UID
        writer.SetFileName(str(folder / f"slice_{z:03d}.dcm"))
        writer.Execute(plane)
    locale.setlocale(locale.LC_ALL, saved_locale)
    rows = predict_files(trained["model"], [folder], tmp_path / "pred", mc_samples=1)
    assert [r["case"] for r in rows] == ["series"]
    label = read_image(tmp_path / "pred" / "series_label.nrrd")
    np.testing.assert_allclose(label.GetSpacing(), volume.GetSpacing(), rtol=1e-5)
    np.testing.assert_allclose(label.GetOrigin(), volume.GetOrigin(), atol=1e-4)
    _agree(image_to_array(label), trained["expected"]["label"])


def test_bundle_preprocessing_matches_the_library_per_channel(tmp_path):
    """A CT + MR two-channel run: the bundle's MONAI transforms give the library's network input."""
    from monai.bundle import ConfigParser

    from semisup.data import read_channels
    from semisup.engine.export import _preprocessing

    rng = np.random.default_rng(0)
    arr = np.stack([rng.uniform(-1500, 1500, (6, 10, 12)), rng.normal(300, 50, (6, 10, 12))]).astype(np.float32)
    image = sitk.GetImageFromArray(arr, isVector=False)  # 4D (x, y, z, 2): channels last, as MSD
    image.SetSpacing([0.8, 0.9, 2.0, 1.0])
    sitk.WriteImage(image, str(tmp_path / "case.nii.gz"))
    cfg = RunConfig(data=DataConfig(modality=["CT", "MR"], channels=2, ct_window=[-1000.0, 1000.0], patch_size=[16, 16, 16]))
    parser = ConfigParser({"imports": ["$import torch"], "pre": {"_target_": "Compose", "transforms": _preprocessing(cfg)}})
    out = parser.get_parsed_content("pre")({"image": str(tmp_path / "case.nii.gz")})["image"]
    expected = preprocess_image(read_channels(tmp_path / "case.nii.gz"), cfg.data)
    assert tuple(out.shape) == expected.shape == (2, 12, 10, 6)
    np.testing.assert_allclose(np.asarray(out), expected, atol=1e-5)
