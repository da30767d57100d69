"""A dataset's fingerprint: what ``semisup plan`` needs to know about the data and the machine.

Geometry (spacing, size) comes from every image's header; intensities and class
sizes from the voxels of up to ``max_cases`` labeled cases, evenly spread over the
list (reading every volume of a large dataset would take minutes for a statistic
that a few dozen cases pin down). Intensities are summarised inside the foreground
(every non-background label), as nnU-Net does for its normalisation, and over the
whole volume.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .dataset import DatasetSpec
from .io import channels_to_array, image_to_array, read_channels, read_channels_geometry, read_image

__all__ = ["Fingerprint", "dataset_fingerprint", "device_memory_gib"]

log = logging.getLogger(__name__)

#: Labeled cases whose voxels are read by default (evenly spread over the list).
DEFAULT_MAX_CASES = 20
#: Foreground intensity percentiles kept (nnU-Net clips CT to its 0.5 and 99.5 percentiles).
PERCENTILES = (0.5, 50.0, 99.5)


@dataclass
class Fingerprint:
    """Summary of a dataset and of the machine that will train on it."""

    dataset: str
    labeled: int
    unlabeled: int
    validation: int
    test: int
    classes: list[str]
    modality: str
    spacing_median: list[float]
    spacing_min: list[float]
    spacing_max: list[float]
    size_median: list[int]
    size_min: list[int]
    size_max: list[int]
    #: max / min of the median spacing (nnU-Net calls a dataset anisotropic above 3).
    anisotropy: float
    intensity_foreground: dict[str, float]
    intensity_image: dict[str, float]
    #: per foreground class: median voxels, median volume (ml), share of the labeled (not ignored) voxels.
    class_sizes: dict[str, dict[str, float]]
    cases_read: int
    device: str
    device_memory_gib: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def device_memory_gib(device: str = "auto") -> tuple[str, float]:
    """The device training would use and its memory in GiB (GPU memory, or RAM on the CPU)."""
    import torch

    if device != "cpu" and torch.cuda.is_available():
        index = torch.device(device).index or 0 if device.startswith("cuda") else 0
        props = torch.cuda.get_device_properties(index)
        return f"cuda:{index} {props.name}", props.total_memory / 2**30
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):  # not on every platform
        ram = float("nan")
    return "cpu", float(ram)


def _spread(items: Sequence[Any], count: int) -> list[Any]:
    if count <= 0 or len(items) <= count:
        return list(items)
    idx = np.unique(np.linspace(0, len(items) - 1, count).round().astype(int))
    return [items[i] for i in idx]


def _stats(values: np.ndarray) -> dict[str, float]:
    if values.size == 0:
        return {}
    out = {"mean": float(values.mean()), "std": float(values.std())}
    for q, v in zip(PERCENTILES, np.percentile(values, PERCENTILES)):
        out[f"p{q:g}"] = float(v)
    out["min"], out["max"] = float(values.min()), float(values.max())
    return out


def _modality(raw_modality: Any, fg_stats: dict[str, float]) -> str:
    """``"CT"`` when dataset.json says so or intensities look like Hounsfield units, else ``"MR"``."""
    text = " ".join(str(v) for v in raw_modality.values()) if isinstance(raw_modality, dict) else str(raw_modality or "")
    if "CT" in text.upper().replace("CINE", ""):
        return "CT"
    # Air at about -1000 HU: only CT has strongly negative intensities.
    if fg_stats and fg_stats.get("min", 0.0) < -500.0:
        return "CT"
    return "MR"


def dataset_fingerprint(dataset: str | os.PathLike, max_cases: int = DEFAULT_MAX_CASES, device: str = "auto") -> Fingerprint:
    """Fingerprint of the MSD-style ``dataset.json`` at ``dataset``.

    Parameters
    ----------
    dataset:
        Path of ``dataset.json``.
    max_cases:
        Labeled cases whose voxels are read for intensities and class sizes (evenly
        spread); geometry always comes from every case.
    device:
        ``"auto"``, ``"cpu"`` or ``"cuda[:i]"``: whose memory is reported.
    """
    path = Path(dataset)
    spec = DatasetSpec.from_json(path)
    import json

    raw_modality = json.loads(path.read_text()).get("modality")
    cases = spec.training + spec.validation + spec.unlabeled + spec.test
    geoms = [read_channels_geometry(c.files)[0] for c in cases]
    spacing = np.array([g.spacing for g in geoms], dtype=np.float64)
    size = np.array([g.size for g in geoms], dtype=np.int64)
    median_spacing = np.median(spacing, axis=0)

    labeled = [c for c in spec.training + spec.validation if c.label is not None]
    fg_values, img_values = [], []
    sizes: dict[int, list[tuple[int, float, float]]] = {c: [] for c in range(1, spec.num_classes)}
    rng = np.random.default_rng(0)
    for case in _spread(labeled, max_cases):
        img = read_channels(case.files)
        # Multi-component (RGB/vector) images: the first channel stands for the intensities.
        arr = channels_to_array(img)[0].astype(np.float32)
        lab = image_to_array(read_image(case.label))
        voxel_ml = float(np.prod(img.GetSpacing())) / 1000.0
        # Voxels of the dataset's 'ignore' value (sparse labels) are neither foreground nor counted in shares.
        known = lab != spec.ignore_label if spec.ignore_label is not None else np.ones(lab.shape, bool)
        fg = arr[(lab > 0) & known]
        # A sample per case keeps the pooled percentiles cheap and every case's weight alike.
        fg_values.append(rng.choice(fg, min(fg.size, 10_000), replace=False) if fg.size else fg)
        flat = arr.ravel()
        img_values.append(rng.choice(flat, min(flat.size, 10_000), replace=False))
        for c in sizes:
            n = int((lab == c).sum())
            sizes[c].append((n, n * voxel_ml, n / max(int(known.sum()), 1)))
    fg_stats = _stats(np.concatenate(fg_values)) if fg_values else {}
    class_sizes = {
        spec.class_names[c]: {
            "median_voxels": float(np.median([s[0] for s in v])),
            "median_ml": float(np.median([s[1] for s in v])),
            "median_fraction": float(np.median([s[2] for s in v])),
        }
        for c, v in sizes.items()
        if v
    }
    dev, memory = device_memory_gib(device)
    return Fingerprint(
        dataset=str(path),
        labeled=len(spec.training),
        unlabeled=len(spec.unlabeled),
        validation=len(spec.validation),
        test=len(spec.test),
        classes=list(spec.class_names),
        modality=_modality(raw_modality, fg_stats),
        spacing_median=[float(v) for v in median_spacing],
        spacing_min=[float(v) for v in spacing.min(axis=0)],
        spacing_max=[float(v) for v in spacing.max(axis=0)],
        size_median=[int(v) for v in np.median(size, axis=0).round()],
        size_min=[int(v) for v in size.min(axis=0)],
        size_max=[int(v) for v in size.max(axis=0)],
        anisotropy=float(median_spacing.max() / median_spacing.min()),
        intensity_foreground=fg_stats,
        intensity_image=_stats(np.concatenate(img_values)) if img_values else {},
        class_sizes=class_sizes,
        cases_read=min(len(labeled), max_cases) if max_cases > 0 else len(labeled),
        device=dev,
        device_memory_gib=round(memory, 2),
    )
