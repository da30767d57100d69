"""Multi-channel inputs: MSD 4D files, nnU-Net per-channel files, RGB photographs; per-channel
normalisation; labels and outputs on the image grid; networks built with the data's channels."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import yaml

from semisup.cli import main as cli_main
from semisup.config import ConfigError, DataConfig, InferenceConfig, MethodConfig, NetworkConfig, RunConfig, TrainConfig
from semisup.data import DataError, DatasetSpec, image_to_array, normalize_intensity, read_channels, read_image
from semisup.data.io import channels_to_array
from semisup.data.synthetic import make_synthetic_dataset
from semisup.engine.checkpoint import load_checkpoint
from semisup.engine.predict import load_trained, predict_files
from semisup.engine.trainer import Trainer


def _two_channel(img: sitk.Image) -> np.ndarray:
    """(2, z, y, x): the image and an inverted contrast (an ADC-like second channel)."""
    a = sitk.GetArrayFromImage(img).astype(np.float32)
    return np.stack([a, 1000.0 - 0.5 * a])


@pytest.fixture(scope="module")
def msd4d(tmp_path_factory) -> Path:
    """The synthetic set as MSD Prostate stores it: 4D NIfTI images (channels last), 3D labels."""
    src = make_synthetic_dataset(tmp_path_factory.mktemp("src"), labeled=2, unlabeled=0, validation=0, test=1,
                                 shape=(32, 32, 16), seed=11, difficulty=0.1)
    root = tmp_path_factory.mktemp("msd4d")
    raw = json.loads(src.read_text())
    out = {"name": "two-channel", "modality": {"0": "T2", "1": "ADC"}, "labels": raw["labels"], "training": [], "test": []}
    for split in ("training", "test"):
        for entry in raw[split]:
            img = sitk.ReadImage(str(src.parent / entry["image"]))
            four = sitk.GetImageFromArray(_two_channel(img), isVector=False)  # (x, y, z, 2)
            four.SetSpacing([*img.GetSpacing(), 1.0])
            four.SetOrigin([*img.GetOrigin(), 0.0])
            name = Path(entry["image"]).name.replace(".nrrd", ".nii.gz")
            (root / "imagesTr").mkdir(exist_ok=True)
            (root / "labelsTr").mkdir(exist_ok=True)
            sitk.WriteImage(four, str(root / "imagesTr" / name))
            sitk.WriteImage(sitk.ReadImage(str(src.parent / entry["label"])), str(root / "labelsTr" / name))
            out[split].append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    (root / "dataset.json").write_text(json.dumps(out))
    return root / "dataset.json"


def _cfg(dataset: Path, **data) -> RunConfig:
    return RunConfig(
        data=DataConfig(dataset=str(dataset), patch_size=[32, 32, 16], **data),
        network=NetworkConfig(name="vnet", base_filters=4),
        method=MethodConfig(name="supervised"),
        train=TrainConfig(iterations=4, labeled_batch=1, unlabeled_batch=0, checkpoint_every=4, log_every=2),
        inference=InferenceConfig(mc_samples=1, overlap=0.25),
    )


def test_per_channel_normalisation_by_hand():
    arr = np.array([[[-200.0, 0.0, 100.0]], [[1.0, 2.0, 3.0]]], dtype=np.float32)  # (2, 1, 3)
    out = normalize_intensity(arr, DataConfig(modality=["CT", "MR"], channels=2, ct_window=[-100.0, 100.0]))
    np.testing.assert_allclose(out[0, 0], [0.0, 0.5, 1.0])  # clipped, then (v + 100) / 200
    np.testing.assert_allclose(out[1, 0], [-1.2247449, 0.0, 1.2247449], rtol=1e-6)  # z-score, population std
    rgb = normalize_intensity(np.array([[[0.0, 51.0, 255.0]]] * 3, dtype=np.float32), DataConfig(modality="RGB", channels=3))
    np.testing.assert_allclose(rgb[2, 0], [0.0, 0.2, 1.0])
    with pytest.raises(DataError, match=r"data.modality lists 2 channel\(s\) \['CT', 'MR'\] but the images have 3"):
        normalize_intensity(np.zeros((3, 1, 2), np.float32), DataConfig(modality=["CT", "MR"]))


def test_msd_4d_trains_and_predicts_from_the_cli(msd4d, tmp_path):
    spec = DatasetSpec.from_json(msd4d)
    assert spec.channel_names == ["T2", "ADC"]
    image = read_channels(spec.training[0].image)
    assert image.GetDimension() == 3 and image.GetNumberOfComponentsPerPixel() == 2
    run = tmp_path / "run"
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(_cfg(msd4d, modality="auto").to_dict()))
    assert cli_main(["train", "--config", str(config), "--run-dir", str(run), "--progress", "none"]) == 0
    saved = load_checkpoint(run / "checkpoints" / "best.pt")["config"]["data"]
    assert saved["channels"] == 2 and saved["modality"] == ["MR", "MR"]  # T2 and ADC are z-scored
    first_conv = next(p for p in load_trained(run / "checkpoints" / "best.pt").method.parameters() if p.ndim == 5)
    assert first_conv.shape[1] == 2
    test = spec.test[0]
    assert cli_main(["predict", "--run-dir", str(run), "--input", str(test.image), "--output-dir", str(tmp_path / "pred"),
                     "--progress", "none"]) == 0
    label = read_image(tmp_path / "pred" / f"{test.name}_label.nrrd")
    test_image = read_channels(test.image)
    assert label.GetDimension() == 3 and label.GetSize() == test_image.GetSize()
    np.testing.assert_allclose(label.GetOrigin(), test_image.GetOrigin(), rtol=1e-6)
    np.testing.assert_allclose(label.GetSpacing(), test_image.GetSpacing(), rtol=1e-6)
    # A single-channel image is refused by the two-channel model, naming the file.
    one = tmp_path / "one.nrrd"
    sitk.WriteImage(sitk.VectorIndexSelectionCast(image, 0), str(one))
    with pytest.raises(DataError, match=r"one.nrrd: has 1 channel\(s\) but the model takes 2"):
        predict_files(load_trained(run / "checkpoints" / "best.pt"), [one], tmp_path / "refused")


def test_nnunet_per_channel_files_train_and_predict(msd4d, tmp_path):
    """nnU-Net v2 raw layout: <case>_0000/_0001 files, channel_names, labels name -> value, no lists."""
    spec = DatasetSpec.from_json(msd4d)
    root = tmp_path / "Dataset001"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    (root / "imagesTs").mkdir()
    for case, folder in [(c, "imagesTr") for c in spec.training] + [(c, "imagesTs") for c in spec.test]:
        img = read_channels(case.image)
        for k in range(2):
            channel = sitk.VectorIndexSelectionCast(img, k)
            if k == 0:
                channel = channel * 4.0 - 1000.0  # CT-like Hounsfield range for channel 0
            sitk.WriteImage(channel, str(root / folder / f"{case.name}_{k:04d}.nii.gz"))
        if folder == "imagesTr":
            sitk.WriteImage(sitk.ReadImage(str(case.label)), str(root / "labelsTr" / f"{case.name}.nii.gz"))
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT", "1": "T2"}, "labels": {"background": 0, "organ": 1},
        "numTraining": 2, "file_ending": ".nii.gz"}))
    nn_spec = DatasetSpec.from_json(root / "dataset.json")
    assert [c.name for c in nn_spec.training] == [c.name for c in spec.training]
    assert [p.name for p in nn_spec.training[0].files] == [f"{spec.training[0].name}_{k:04d}.nii.gz" for k in range(2)]
    cfg = _cfg(root / "dataset.json", modality="auto", ct_window=[-1000.0, 1000.0])
    Trainer(cfg, tmp_path / "run").fit()
    model = load_trained(tmp_path / "run" / "checkpoints" / "best.pt")
    assert model.cfg.data.modality == ["CT", "MR"] and model.cfg.data.channels == 2
    test = nn_spec.test[0]
    rows = predict_files(model, [str(p) for p in test.files], tmp_path / "pred", mc_samples=1)
    assert [r["case"] for r in rows] == [test.name]  # the two files are one case
    assert read_image(tmp_path / "pred" / f"{test.name}_label.nrrd").GetSize() == read_image(test.image).GetSize()


def test_channel_files_on_different_grids_are_refused(tmp_path):
    a = sitk.Image([8, 8, 4], sitk.sitkFloat32)
    b = sitk.Image([8, 8, 4], sitk.sitkFloat32)
    b.SetSpacing([1.0, 1.0, 2.0])
    sitk.WriteImage(a, str(tmp_path / "c_0000.nrrd"))
    sitk.WriteImage(b, str(tmp_path / "c_0001.nrrd"))
    with pytest.raises(DataError, match=r"c_0001.nrrd: channel grid differs from .*c_0000.nrrd \(spacing 1,1,2 vs 1,1,1\)"):
        read_channels([tmp_path / "c_0000.nrrd", tmp_path / "c_0001.nrrd"])


# -- RGB photographs ------------------------------------------------------------------
def _rgb_dataset(root: Path, count: int = 5, size: int = 32, seed: int = 0) -> Path:
    """ISIC-like toy set: a brownish lesion (disc) on skin-coloured noise, PNG images and masks."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    yy, xx = np.mgrid[:size, :size]
    entries = []
    for i in range(count):
        cy, cx, r = rng.uniform(10, 22), rng.uniform(10, 22), rng.uniform(5, 9)
        mask = ((yy - cy) ** 2 + (xx - cx) ** 2 < r**2).astype(np.uint8)
        skin = np.array([220.0, 170.0, 140.0])
        lesion = np.array([110.0, 60.0, 40.0])
        rgb = skin + mask[..., None] * (lesion - skin) + rng.normal(0, 12, (size, size, 3))
        sitk.WriteImage(sitk.GetImageFromArray(np.clip(rgb, 0, 255).astype(np.uint8), isVector=True),
                        str(root / "images" / f"isic_{i}.png"))
        sitk.WriteImage(sitk.GetImageFromArray(mask), str(root / "masks" / f"isic_{i}.png"))
        entries.append({"image": f"./images/isic_{i}.png", "label": f"./masks/isic_{i}.png"})
    (root / "dataset.json").write_text(json.dumps({
        "labels": {"0": "background", "1": "lesion"}, "modality": {"0": "R", "1": "G", "2": "B"},
        "training": entries[:-1], "test": [entries[-1]]}))
    return root / "dataset.json"


def test_rgb_png_trains_and_predicts_from_the_cli(tmp_path):
    dataset = _rgb_dataset(tmp_path / "isic")
    image = read_channels(tmp_path / "isic" / "images" / "isic_4.png")
    assert image.GetDimension() == 2 and channels_to_array(image).shape == (3, 32, 32)
    cfg = RunConfig(
        data=DataConfig(dataset=str(dataset), modality="auto", spatial_dims=2, patch_size=[32, 32]),
        network=NetworkConfig(name="unet2d", base_filters=4),
        method=MethodConfig(name="supervised"),
        train=TrainConfig(iterations=4, labeled_batch=2, unlabeled_batch=0, checkpoint_every=4, log_every=2),
        inference=InferenceConfig(mc_samples=2, overlap=0.25),
    )
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(cfg.to_dict()))
    run = tmp_path / "run"
    # The CLI entry point in this process (the subprocess path is covered by test_train_e2e).
    assert cli_main(["train", "--config", str(config), "--run-dir", str(run), "--progress", "none"]) == 0
    model = load_trained(run / "checkpoints" / "best.pt")
    assert model.cfg.data.channels == 3 and model.cfg.data.modality == ["RGB", "RGB", "RGB"]
    png = tmp_path / "isic" / "images" / "isic_4.png"
    assert cli_main(["predict", "--run-dir", str(run), "--input", str(png), "--output-dir", str(tmp_path / "pred"),
                     "--progress", "none"]) == 0
    for kind in ("label", "uncertainty"):
        out = read_image(tmp_path / "pred" / f"isic_4_{kind}.nrrd")
        assert out.GetDimension() == 2 and out.GetSize() == (32, 32)
    assert set(np.unique(image_to_array(read_image(tmp_path / "pred" / "isic_4_label.nrrd")))) <= {0, 1}
    # The 2D U-Net exports cleanly too (each export checks itself against the eager network).
    from semisup.engine.export import export_model

    export_model(model, "torchscript", tmp_path / "isic.ts")
    if importlib.util.find_spec("onnx") is not None:
        export_model(model, "onnx", tmp_path / "isic.onnx")


def test_auto_modality_needs_resolution():
    with pytest.raises(ConfigError, match="resolved from dataset.json"):
        from semisup.config import channel_modalities

        channel_modalities(DataConfig(modality="auto"))
