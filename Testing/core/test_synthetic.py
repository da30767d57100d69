"""Tests of the synthetic dataset generator (real NRRD files on disk, read back with SimpleITK)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage
from skimage.filters import threshold_otsu

from semisup.data.dataset import DatasetSpec
from semisup.data.io import image_to_array, read_image
from semisup.data.synthetic import make_synthetic_case, make_synthetic_dataset

SHAPE = (32, 32, 24)
SPACING = (0.8, 0.8, 1.6)


def _read(path: Path) -> tuple[np.ndarray, sitk.Image]:
    img = read_image(path)
    return image_to_array(img), img


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    return make_synthetic_dataset(
        out, labeled=2, unlabeled=1, validation=1, test=1, shape=SHAPE, spacing=SPACING, seed=3
    )


def test_files_and_json(dataset: Path) -> None:
    root = dataset.parent
    meta = json.loads(dataset.read_text())
    assert dataset.name == "dataset.json"
    assert meta["labels"] == {"0": "background", "1": "organ"}
    assert meta["modality"] == {"0": "MR"}
    assert {k: len(meta[k]) for k in ("training", "validation", "unlabeled", "test")} == {
        "training": 2,
        "validation": 1,
        "unlabeled": 1,
        "test": 1,
    }
    for split, img_dir, lab_dir in (
        ("training", "imagesTr", "labelsTr"),
        ("validation", "imagesTr", "labelsTr"),
        ("test", "imagesTs", "labelsTs"),
    ):
        for e in meta[split]:
            assert e["image"].startswith(img_dir + "/") and e["label"].startswith(lab_dir + "/")
            assert (root / e["image"]).is_file() and (root / e["label"]).is_file()
    assert set(meta["unlabeled"][0]) == {"image"}
    assert meta["unlabeled"][0]["image"].startswith("imagesUnlabeled/")
    names = [e["image"].split("/")[1] for k in ("training", "validation", "unlabeled", "test") for e in meta[k]]
    assert len(set(names)) == 5  # every case has its own file name
    assert not [p for p in root.rglob(".*")]  # no temporary file left behind
    # The project's reader accepts it as is.
    spec = DatasetSpec.from_json(dataset)
    assert spec.num_classes == 2 and len(spec.training) == 2 and spec.unlabeled[0].label is None


def test_geometry_and_labels(dataset: Path) -> None:
    root = dataset.parent
    meta = json.loads(dataset.read_text())
    origins = set()
    for e in meta["training"] + meta["validation"] + meta["test"]:
        image, img = _read(root / e["image"])
        label, lab = _read(root / e["label"])
        assert image.shape == label.shape == SHAPE
        assert img.GetSize() == SHAPE  # SimpleITK size is (x, y, z)
        assert np.allclose(img.GetSpacing(), SPACING)
        assert np.allclose(lab.GetSpacing(), SPACING) and np.allclose(lab.GetOrigin(), img.GetOrigin())
        assert np.allclose(img.GetDirection(), np.eye(3).ravel())
        assert np.abs(img.GetOrigin()).min() > 0.0  # non-trivial origin
        origins.add(img.GetOrigin())
        assert set(np.unique(label)) == {0, 1}
        assert (label == 1).sum() > 50  # organ present and not a speck
        # Organ inside the field of view: no foreground on the x/y borders.
        assert not label[[0, -1], :, :].any() and not label[:, [0, -1], :].any()
        assert image.min() >= 0 and image.max() > 500  # Rician magnitude, MR-like range
    assert len(origins) > 1  # origin varies per case


def test_deterministic_and_seed_dependent(tmp_path: Path) -> None:
    kw = dict(labeled=1, unlabeled=0, validation=0, test=0, shape=(24, 24, 16))
    a = make_synthetic_dataset(tmp_path / "a", seed=5, **kw)
    b = make_synthetic_dataset(tmp_path / "b", seed=5, **kw)
    c = make_synthetic_dataset(tmp_path / "c", seed=6, **kw)
    rel = json.loads(a.read_text())["training"][0]
    ia, ga = _read(a.parent / rel["image"])
    ib, gb = _read(b.parent / rel["image"])
    ic, gc = _read(c.parent / rel["image"])
    la, lb, lc = (_read(p.parent / rel["label"])[0] for p in (a, b, c))
    assert np.array_equal(ia, ib) and np.array_equal(la, lb) and ga.GetOrigin() == gb.GetOrigin()
    assert not np.array_equal(la, lc) and not np.array_equal(ia, ic)


def test_three_and_four_classes() -> None:
    for num_classes in (3, 4):
        case = make_synthetic_case(1, shape=SHAPE, spacing=SPACING, num_classes=num_classes)
        counts = np.bincount(case.label.ravel(), minlength=num_classes)
        assert case.label.max() == num_classes - 1 and (counts > 0).all()
        if num_classes == 3:
            # The wall touches the organ: dilating the organ by one voxel reaches it.
            ring = ndimage.binary_dilation(case.label == 1) & (case.label != 1)
            assert (case.label[ring] == 2).mean() > 0.5


def test_otsu_threshold_is_not_enough(dataset: Path) -> None:
    """A global Otsu threshold must score clearly below what a network reaches (~0.9)."""
    root = dataset.parent
    meta = json.loads(dataset.read_text())
    dices = []
    for e in meta["training"] + meta["validation"] + meta["test"]:
        image, _ = _read(root / e["image"])
        label, _ = _read(root / e["label"])
        seg = image > threshold_otsu(image)
        ref = label == 1
        dices.append(2.0 * (seg & ref).sum() / (seg.sum() + ref.sum()))
    assert max(dices) < 0.9


def test_difficulty_controls_noise() -> None:
    easy = make_synthetic_case(2, shape=SHAPE, spacing=SPACING, difficulty=0.0)
    hard = make_synthetic_case(2, shape=SHAPE, spacing=SPACING, difficulty=1.0)
    assert np.array_equal(easy.label, hard.label)  # same anatomy, different image

    def cnr(c) -> float:
        # Contrast-to-noise ratio of organ vs. air-free tissue far from the organ.
        organ = ndimage.binary_erosion(c.label == 1, iterations=1)
        grow = lambda n: ndimage.binary_dilation(c.label == 1, iterations=n)  # noqa: E731
        near = grow(4) & ~grow(2)
        return (c.image[organ].mean() - c.image[near].mean()) / c.image[near].std()

    assert cnr(easy) > 1.5 * cnr(hard)


def test_default_dataset_layout(tmp_path: Path) -> None:
    # Speed is a benchmark matter (docs/benchmarks.md), never a timed assertion.
    path = make_synthetic_dataset(tmp_path)
    meta = json.loads(path.read_text())
    assert len(meta["training"]) == 4 and len(meta["unlabeled"]) == 8
    assert _read(path.parent / meta["training"][0]["image"])[0].shape == (48, 48, 32)


@pytest.mark.parametrize(
    "kwargs",
    [{"num_classes": 1}, {"num_classes": 5}, {"shape": (8, 32, 32)}, {"difficulty": 1.5}, {"spacing": (1, 0, 1)}],
)
def test_bad_arguments(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        make_synthetic_case(0, **kwargs)


def test_bad_split_sizes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="labeled"):
        make_synthetic_dataset(tmp_path, labeled=0)
