"""semisup.data.loaders: batch shapes and dtypes, joint augmentation, seeds, 2D slices."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from semisup.config import RunConfig
from semisup.data import (
    Case,
    DatasetSpec,
    Geometry,
    PreprocessCache,
    build_train_streams,
    build_train_transform,
    load_validation_cases,
    write_image,
)
from semisup.data.loaders import SliceDataset

SHAPE = (20, 18, 12)


def _spec(root: Path, shape=SHAPE, blob=(slice(6, 14), slice(5, 12), slice(3, 9))) -> DatasetSpec:
    geom = Geometry(shape, (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    rng = np.random.default_rng(0)
    cases = []
    for i in range(6):
        label = np.zeros(shape, np.uint8)
        label[blob] = 1
        # Foreground much brighter than background: after the z-score, image > 0.5 <=> label.
        image = (100.0 * label + rng.uniform(0, 1, shape)).astype(np.float32)
        img = write_image(image, geom, root / "img" / f"c{i}.nrrd")
        lab = write_image(label, geom, root / "lab" / f"c{i}.nrrd")
        cases.append(Case(f"c{i}", img, lab))
    unlabeled = [Case(c.name, c.image) for c in cases[4:]]
    return DatasetSpec(root, {0: "background", 1: "organ"}, cases[:3], validation=cases[3:4], unlabeled=unlabeled)


def _cfg(**data) -> RunConfig:
    cfg = RunConfig()
    cfg.data.patch_size = [16, 16, 16]
    for key, value in data.items():
        setattr(cfg.data, key, value)
    cfg.train.labeled_batch = 2
    cfg.train.unlabeled_batch = 2
    return cfg


def _take(stream, n: int) -> list[dict]:
    return [next(stream) for _ in range(n)]


def test_3d_streams_shapes_dtypes_and_joint_augmentation(tmp_path):
    spec = _spec(tmp_path)
    labeled, unlabeled = build_train_streams(spec, _cfg(), tmp_path / "cache", seed=3)
    for batch in _take(labeled, 4):  # 4 batches > one epoch of 3 cases: the stream goes on
        assert batch["image"].shape == (2, 1, 16, 16, 16) and batch["image"].dtype == torch.float32
        assert batch["label"].shape == (2, 1, 16, 16, 16) and batch["label"].dtype == torch.int64
        assert set(batch["name"]) <= {"c0", "c1", "c2"}
        # z is padded 12 -> 16 with zeros; rotations/flips moved image and label together.
        assert torch.equal(batch["image"] > 0.5, batch["label"] == 1)
    ub = next(unlabeled)
    assert ub["image"].shape == (2, 1, 16, 16, 16) and "label" not in ub
    assert set(ub["name"]) <= {"c4", "c5"}


def test_same_seed_same_batches(tmp_path):
    spec = _spec(tmp_path)

    def draw(seed: int) -> list[dict]:
        labeled, unlabeled = build_train_streams(spec, _cfg(), tmp_path / "cache", seed)
        return _take(labeled, 3) + _take(unlabeled, 2)

    a, b, c = draw(7), draw(7), draw(8)
    for x, y in zip(a, b):
        assert x["name"] == y["name"] and torch.equal(x["image"], y["image"])
    assert any(not torch.equal(x["image"], z["image"]) for x, z in zip(a, c))


def test_same_seed_same_batches_with_a_worker(tmp_path):
    spec = _spec(tmp_path)

    def draw() -> list[dict]:
        labeled, _ = build_train_streams(spec, _cfg(num_workers=1), tmp_path / "cache", 11)
        return _take(labeled, 3)

    for x, y in zip(draw(), draw()):
        assert torch.equal(x["image"], y["image"]) and torch.equal(x["label"], y["label"])


def test_no_unlabeled_stream_when_batch_is_zero_or_no_cases(tmp_path):
    spec = _spec(tmp_path)
    cfg = _cfg()
    cfg.train.unlabeled_batch = 0
    assert build_train_streams(spec, cfg, tmp_path / "cache", 0)[1] is None
    spec.unlabeled = []
    assert build_train_streams(spec, _cfg(), tmp_path / "cache", 0)[1] is None


def test_foreground_oversampling_and_non_square_patch(tmp_path):
    # A 3x3x3 organ in a 40x40x12 volume: random 8^3 crops mostly miss it.
    spec = _spec(tmp_path, shape=(40, 40, 12), blob=(slice(30, 33), slice(2, 5), slice(8, 11)))
    cfg = _cfg(foreground_oversample=1.0, patch_size=[10, 8, 8])
    labeled, _ = build_train_streams(spec, cfg, tmp_path / "cache", 0)
    for batch in _take(labeled, 5):
        assert batch["image"].shape == (2, 1, 10, 8, 8)
        assert all(batch["label"][i].sum() > 0 for i in range(2))


def test_2d_slices(tmp_path):
    spec = _spec(tmp_path)
    cfg = _cfg(spatial_dims=2, patch_size=[16, 16], foreground_oversample=0.5)
    labeled, unlabeled = build_train_streams(spec, cfg, tmp_path / "cache", 0)
    cached = PreprocessCache(tmp_path / "cache", cfg.data).prepare(spec.training)
    slices = SliceDataset(cached, build_train_transform(cfg.data, True), labeled=True)
    assert len(slices) == 3 * SHAPE[2] and slices.index[SHAPE[2]] == (1, 0)
    for batch in _take(labeled, 3):
        assert batch["image"].shape == (2, 1, 16, 16) and batch["label"].dtype == torch.int64
        assert torch.equal(batch["image"] > 0.5, batch["label"] == 1)
        assert all(0 <= int(z) < SHAPE[2] for z in batch["slice"])
    assert next(unlabeled)["image"].shape == (2, 1, 16, 16)


def test_validation_cases_are_whole_volumes(tmp_path):
    spec = _spec(tmp_path)
    cases = load_validation_cases(spec, _cfg(target_spacing=[2.0, 2.0, 2.0]), tmp_path / "cache")
    assert [c["name"] for c in cases] == ["c3"]
    assert cases[0]["image"].shape == (1, 10, 9, 12) and cases[0]["image"].dtype == np.float32
    assert cases[0]["label"].shape == (1, 10, 9, 12) and cases[0]["label"].dtype == np.uint8
    assert cases[0]["spacing"] == (2.0, 2.0, 2.0)
    assert torch.as_tensor(cases[0]["image"]).shape == (1, 10, 9, 12)


def test_intensity_augmentation_changes_the_image_only_and_is_seeded():
    from monai.transforms import RandAdjustContrastd, RandScaleIntensityd, RandScaleIntensityFixedMeand

    from semisup.config import DataConfig
    from semisup.data import loaders

    off = build_train_transform(DataConfig(patch_size=[8, 8, 4]), labeled=True)
    assert not [t for t in off.transforms if isinstance(t, (RandScaleIntensityd, RandAdjustContrastd))]
    cfg = DataConfig(patch_size=[8, 8, 4], intensity_augment=True, augment=False)
    on = build_train_transform(cfg, labeled=True)
    kinds = [type(t) for t in on.transforms]
    assert kinds.count(RandScaleIntensityd) == kinds.count(RandScaleIntensityFixedMeand) == kinds.count(RandAdjustContrastd) == 1
    gamma = next(t for t in on.transforms if isinstance(t, RandAdjustContrastd))
    assert gamma.adjuster.gamma == loaders.GAMMA_RANGE and gamma.prob == loaders.GAMMA_PROB  # nnU-Net's constants
    rng = np.random.default_rng(1)
    item = {"image": rng.normal(size=(1, 8, 8, 4)).astype(np.float32), "label": (rng.uniform(size=(1, 8, 8, 4)) > 0.5).astype(np.uint8)}
    outs = []
    for seed in (3, 3, 4):
        on.set_random_state(seed)
        outs.append([on({k: v.copy() for k, v in item.items()}) for _ in range(20)])
    changed = [not np.allclose(o["image"].numpy(), item["image"]) for o in outs[0]]
    assert any(changed) and not all(changed)  # each transform fires with its probability only
    assert all(np.array_equal(o["label"].numpy(), item["label"]) for o in outs[0])  # labels untouched
    assert all(torch.equal(a["image"], b["image"]) for a, b in zip(outs[0], outs[1]))  # same seed, same draws
    assert not all(torch.equal(a["image"], b["image"]) for a, b in zip(outs[0], outs[2]))
