"""Labeled and unlabeled training streams, and validation volumes.

Each stream is an endless iterator of batches from a torch ``DataLoader`` over a
map-style dataset of cached cases (:mod:`semisup.data.cache`):

- 3D (``data.spatial_dims: 3``): one random ``data.patch_size`` crop per volume
  (MONAI ``RandSpatialCropd``; with ``data.foreground_oversample`` > 0, labeled
  crops are centred on foreground with that probability, see
  :class:`RandForegroundCropd`), zero-padded to the patch where the volume is smaller.
- 2D (``data.spatial_dims: 2``): one item per z slice of every volume, cropped and
  padded the same way to ``patch_size`` (x, y). SSL4MIS instead resizes every ACDC
  slice to 256 x 256 (changing its aspect ratio); pad + crop keeps the native grid,
  so prediction can run a sliding window on the unresized slices and no label is
  interpolated.
- Augmentation (``data.augment``), after UA-MT's ``RandomRotFlip``: a 90-degree
  rotation in the axial (x, y) plane (k = 0..3 uniform) and independent flips along
  x and y (MONAI ``RandRotate90d``, ``RandFlipd``), i.e. each of the 8 symmetries of
  the square with probability 1/8. (UA-MT's code always flips along exactly one
  axis, so it only ever produces the 4 mirror images, never the identity.)
- Intensity augmentation (``data.intensity_augment``, off by default): nnU-Net's
  default brightness (x U(0.75, 1.25), p 0.15), contrast (about the mean,
  x U(0.75, 1.25), p 0.15) and gamma (U(0.7, 1.5) on the range-normalised image,
  p 0.3) jitter of the image (MONAI ``RandScaleIntensityd``,
  ``RandScaleIntensityFixedMeand``, ``RandAdjustContrastd``), after the spatial ones.

Batches: ``"image"`` float32 ``(B, 1, *patch)``, ``"label"`` int64 ``(B, 1, *patch)``
(labeled stream), ``"name"`` list of case names, and ``"slice"`` (z index, 2D only).

Reproducibility: the sampler reshuffles every epoch from a seeded ``torch.Generator``;
the transforms' random states are seeded in the main process and re-seeded per
worker by MONAI's ``worker_init_fn`` from the loader's generator, so the same seed
and ``num_workers`` give the same batches.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Hashable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data.utils import worker_init_fn
from monai.transforms import (
    CenterSpatialCropd,
    Compose,
    EnsureTyped,
    MapTransform,
    Randomizable,
    RandAdjustContrastd,
    RandFlipd,
    RandRotate90d,
    RandScaleIntensityd,
    RandScaleIntensityFixedMeand,
    RandSpatialCropd,
    SpatialPadd,
)
from torch.utils.data import DataLoader, Dataset, RandomSampler

from ..config import DataConfig, RunConfig
from .cache import CachedCase, PreprocessCache, foreground_samples
from .dataset import DatasetSpec

__all__ = [
    "build_train_streams",
    "load_validation_cases",
    "build_train_transform",
    "RandForegroundCropd",
    "VolumeDataset",
    "SliceDataset",
]

log = logging.getLogger(__name__)


class RandForegroundCropd(Randomizable, MapTransform):
    """Crop ``roi_size`` centred on a foreground voxel with probability ``prob``, else at
    a uniformly random position (nnU-Net's foreground oversampling).

    Our own transform because MONAI's ``RandCropByPosNegLabeld`` draws its negative
    centres from an index list of every background voxel (8 bytes per voxel, built
    from the whole label on each call); here the foreground positions come from a
    small cached table (``fg_key``, see :func:`foreground_samples`) or, for a 2D
    slice, from the slice's label, and only the crop is read from the mapped volume.
    The class is drawn uniformly among those present, then a voxel of that class.
    Where the volume is smaller than ``roi_size`` the crop is the whole axis (pad
    afterwards).
    """

    def __init__(
        self,
        keys: KeysCollection,
        roi_size: Sequence[int],
        prob: float,
        label_key: str = "label",
        fg_key: str = "foreground",
    ) -> None:
        MapTransform.__init__(self, keys)
        self.roi_size = tuple(int(r) for r in roi_size)
        self.prob = float(prob)
        self.label_key = label_key
        self.fg_key = fg_key
        self._start: tuple[int, ...] = ()

    def randomize(self, shape: Sequence[int], foreground: np.ndarray | None) -> None:
        room = [max(s - r, 0) for s, r in zip(shape, self.roi_size)]
        use_fg = self.R.rand() < self.prob
        if use_fg and foreground is not None and len(foreground):
            classes = np.unique(foreground[:, 0])
            rows = foreground[foreground[:, 0] == classes[self.R.randint(len(classes))]]
            centre = rows[self.R.randint(len(rows)), 1:]
            self._start = tuple(int(np.clip(c - r // 2, 0, m)) for c, r, m in zip(centre, self.roi_size, room))
        else:
            self._start = tuple(int(self.R.randint(m + 1)) for m in room)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        foreground = d.pop(self.fg_key, None)
        if foreground is None and self.label_key in d:
            foreground = foreground_samples(np.asarray(d[self.label_key])[0])
        first = d[self.first_key(d)]
        self.randomize(first.shape[1:], foreground)
        window = (slice(None),) + tuple(slice(s, s + r) for s, r in zip(self._start, self.roi_size))
        for key in self.key_iterator(d):
            d[key] = d[key][window]
        return d


# nnU-Net v2 default augmentation (Isensee et al., Nature Methods 2021, supplement):
#: multiplicative brightness: image x U(1 - 0.25, 1 + 0.25) with probability 0.15.
BRIGHTNESS_FACTOR, BRIGHTNESS_PROB = 0.25, 0.15
#: contrast: (image - mean) x U(0.75, 1.25) + mean, clipped to the patch's range, probability 0.15.
CONTRAST_FACTOR, CONTRAST_PROB = 0.25, 0.15
#: gamma on the range-normalised image, gamma ~ U(0.7, 1.5), mean and std kept, probability 0.3.
GAMMA_RANGE, GAMMA_PROB = (0.7, 1.5), 0.3


def build_train_transform(cfg: DataConfig, labeled: bool) -> Compose:
    """Crop -> pad -> (rotate, flip) -> tensors, for one item ``{"image", "label"?}``."""
    keys = ["image", "label"] if labeled else ["image"]
    patch = tuple(int(p) for p in cfg.patch_size)
    # A 90-degree rotation swaps x and y: crop a square, rotate, then cut the patch.
    square = cfg.augment and patch[0] != patch[1]
    crop = (max(patch[:2]),) * 2 + patch[2:] if square else patch
    transforms: list[Any] = []
    if labeled and cfg.foreground_oversample > 0:
        transforms.append(RandForegroundCropd(keys, crop, cfg.foreground_oversample))
    else:
        transforms.append(RandSpatialCropd(keys, roi_size=crop, random_size=False))
    # Pad after cropping: the mapped volume is never copied whole. Zero, as UA-MT pads
    # after its z-score (and 0 is background for labels).
    transforms.append(SpatialPadd(keys, spatial_size=crop, mode="constant"))
    if cfg.augment:
        transforms += [
            # UA-MT RandomRotFlip: k uniform in 0..3 (MONAI draws k in 1..max_k when applied).
            RandRotate90d(keys, prob=0.75, max_k=3, spatial_axes=(0, 1)),
            RandFlipd(keys, prob=0.5, spatial_axis=0),
            RandFlipd(keys, prob=0.5, spatial_axis=1),
        ]
    if square:
        transforms.append(CenterSpatialCropd(keys, roi_size=patch))
    if cfg.intensity_augment:
        transforms += [
            RandScaleIntensityd("image", factors=BRIGHTNESS_FACTOR, prob=BRIGHTNESS_PROB),
            RandScaleIntensityFixedMeand("image", factors=CONTRAST_FACTOR, prob=CONTRAST_PROB, preserve_range=True),
            RandAdjustContrastd("image", gamma=GAMMA_RANGE, prob=GAMMA_PROB, retain_stats=True),
        ]
    transforms.append(EnsureTyped("image", data_type="tensor", dtype=torch.float32, track_meta=False))
    if labeled:
        transforms.append(EnsureTyped("label", data_type="tensor", dtype=torch.int64, track_meta=False))
    return Compose(transforms)


class VolumeDataset(Dataset):
    """One transformed item per cached volume (3D training)."""

    def __init__(self, cases: list[CachedCase], transform: Compose, labeled: bool) -> None:
        self.cases = cases
        self.transform = transform
        self.labeled = labeled
        self.use_foreground = labeled and any(isinstance(t, RandForegroundCropd) for t in transform.transforms)

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, index: int) -> dict[str, Any]:
        case = self.cases[index]
        item: dict[str, Any] = {"image": case.image()}
        if self.labeled:
            item["label"] = case.label()
        if self.use_foreground:
            item["foreground"] = case.foreground()
        out = self.transform(item)
        out["name"] = case.name
        return out


class SliceDataset(Dataset):
    """One transformed item per z slice of every cached volume (2D training); a 2D
    image is one slice."""

    def __init__(self, cases: list[CachedCase], transform: Compose, labeled: bool) -> None:
        self.cases = cases
        self.transform = transform
        self.labeled = labeled
        self.index = [(i, z) for i, c in enumerate(cases) for z in range(c.shape[2] if len(c.shape) == 3 else 1)]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, index: int) -> dict[str, Any]:
        i, z = self.index[index]
        case = self.cases[i]

        def take(arr: np.ndarray) -> np.ndarray:
            # Fortran-ordered cache: one slice is one contiguous block of the file.
            return np.ascontiguousarray(arr[..., z]) if arr.ndim == 4 else np.asarray(arr)

        item: dict[str, Any] = {"image": take(case.image())}
        if self.labeled:
            item["label"] = take(case.label())
        out = self.transform(item)
        out["name"] = case.name
        out["slice"] = z
        return out


def _stream(dataset: Dataset, batch_size: int, num_workers: int, seed: int) -> Iterator[dict[str, Any]]:
    """Endless batches; every epoch a new permutation, always full batches."""
    dataset.transform.set_random_state(seed % (2**32))  # workers re-seed in worker_init_fn
    generator = torch.Generator()
    generator.manual_seed(seed)
    n = len(dataset)
    # A whole number of batches per epoch, at least one (also when n < batch_size):
    # RandomSampler chains permutations when num_samples > n.
    sampler = RandomSampler(dataset, num_samples=batch_size * math.ceil(n / batch_size), generator=generator)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available(),
        worker_init_fn=worker_init_fn if num_workers > 0 else None,
        generator=generator,
        persistent_workers=num_workers > 0,  # small labeled sets: no respawn every few batches
        drop_last=True,
    )

    def endless() -> Iterator[dict[str, Any]]:
        while True:
            yield from loader

    return endless()


def _dataset(cases: list[CachedCase], cfg: DataConfig, labeled: bool) -> Dataset:
    cls = SliceDataset if cfg.spatial_dims == 2 else VolumeDataset
    return cls(cases, build_train_transform(cfg, labeled), labeled)


def build_train_streams(
    spec: DatasetSpec, cfg: RunConfig, cache_dir: str | Path, seed: int
) -> tuple[Iterator[dict[str, Any]], Iterator[dict[str, Any]] | None]:
    """Endless labeled and unlabeled batch iterators for training.

    Cases are preprocessed into ``cache_dir`` first (in this process). The labeled
    stream draws from ``spec.training`` in batches of ``cfg.train.labeled_batch``;
    the unlabeled one from ``spec.unlabeled`` in batches of
    ``cfg.train.unlabeled_batch``, or is ``None`` when that is 0 or there are no
    unlabeled cases. Same ``seed`` (and ``num_workers``), same batches.
    """
    d, t = cfg.data, cfg.train
    cache = PreprocessCache(cache_dir, d, ignore_label=spec.ignore_label)
    labeled_cases = cache.prepare(spec.training, with_label=True)
    use_unlabeled = t.unlabeled_batch > 0 and bool(spec.unlabeled)
    unlabeled_cases = cache.prepare(spec.unlabeled, with_label=False) if use_unlabeled else []
    seed_labeled, seed_unlabeled = (
        int(s.generate_state(1)[0]) for s in np.random.SeedSequence(int(seed) % (2**63)).spawn(2)
    )
    labeled_set = _dataset(labeled_cases, d, True)
    labeled = _stream(labeled_set, t.labeled_batch, d.num_workers, seed_labeled)
    log.info("labeled stream: %d case(s), %d item(s), batch %d", len(labeled_cases), len(labeled_set), t.labeled_batch)
    if not use_unlabeled:
        return labeled, None
    unlabeled_set = _dataset(unlabeled_cases, d, False)
    unlabeled = _stream(unlabeled_set, t.unlabeled_batch, d.num_workers, seed_unlabeled)
    log.info(
        "unlabeled stream: %d case(s), %d item(s), batch %d", len(unlabeled_cases), len(unlabeled_set), t.unlabeled_batch
    )
    return labeled, unlabeled


def load_validation_cases(spec: DatasetSpec, cfg: RunConfig, cache_dir: str | Path) -> list[dict[str, Any]]:
    """Whole preprocessed validation volumes, in ``spec.validation`` order.

    Returns
    -------
    list of dict
        ``"image"`` float32 ``(1, *spatial)`` and ``"label"`` uint8 ``(1, *spatial)``
        numpy arrays memory-mapped from the cache (copy-on-write, so
        ``torch.as_tensor`` works; convert one case at a time to keep RAM bounded),
        ``"name"``, ``"spacing"`` (mm, of the preprocessed grid).
    """
    cache = PreprocessCache(cache_dir, cfg.data, ignore_label=spec.ignore_label)
    return [
        {"image": c.image(), "label": c.label(), "name": c.name, "spacing": c.spacing}
        for c in cache.prepare(spec.validation, with_label=True)
    ]
