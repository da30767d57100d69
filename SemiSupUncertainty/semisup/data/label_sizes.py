"""The size check: is a predicted structure as large as the labeled ones were?

A segmentation that failed silently is often far smaller (a dark atrium the network
barely found) or far larger (a leak) than any structure the user labeled; its Dice
cannot be seen without a ground truth, but its volume can. Training records, per
foreground class, the smallest and the largest volume (ml) of the labeled cases;
prediction flags a class whose volume is below the smallest divided by
:data:`SIZE_CHECK_FACTOR` or above the largest times it.

The factor is a round number, not fitted: measured on the LA2018 cross-validation
predictions (docs/benchmarks.md, "Size check") the plain range (factor 1) flagged up
to 18 of 77 good predictions, mostly slightly smaller atria.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from .dataset import DatasetSpec
from .io import image_to_array, read_image

__all__ = ["SIZE_CHECK_FACTOR", "labeled_volume_range", "size_check"]

#: A predicted class volume below (smallest labeled) / factor or above (largest labeled) x factor is flagged.
SIZE_CHECK_FACTOR: float = 2.0


def labeled_volume_range(spec: DatasetSpec) -> dict[str, list[float]]:
    """Smallest and largest volume (ml) of each foreground class over the labeled cases.

    Training and validation cases count (both are labels the user drew). Empty for
    sparse labels (an ``ignore`` value in ``dataset.json``): a partly drawn structure's
    size says nothing about the whole one.

    Returns
    -------
    dict
        ``{class name: [min_ml, max_ml]}`` for classes 1 .. C-1.
    """
    cases = [c for c in [*spec.training, *spec.validation] if c.label is not None]
    if spec.ignore_label is not None or not cases:
        return {}
    volumes: dict[int, list[float]] = {c: [] for c in sorted(spec.labels) if c > 0}
    for case in cases:
        img = read_image(case.label)
        lab = image_to_array(img)
        voxel_ml = float(np.prod(img.GetSpacing())) / 1000.0
        counts = np.bincount(lab.ravel().astype(np.int64, copy=False), minlength=max(volumes, default=0) + 1)
        for c in volumes:
            volumes[c].append(float(counts[c]) * voxel_ml)
    return {spec.labels[c]: [min(v), max(v)] for c, v in volumes.items() if v}


def size_check(
    label: np.ndarray,
    spacing: Sequence[float],
    class_names: Sequence[str],
    ranges: Mapping[str, Sequence[float]],
    factor: float = SIZE_CHECK_FACTOR,
) -> tuple[dict[str, float], list[str]]:
    """Predicted volume of each foreground class and the classes outside the labeled range.

    Parameters
    ----------
    label:
        Predicted label map (class index per voxel).
    spacing:
        Voxel spacing in mm (any axis order: only the product counts).
    class_names:
        Class names by index, background first.
    ranges:
        :func:`labeled_volume_range` of the training run; classes missing from it are not checked.
    factor:
        :data:`SIZE_CHECK_FACTOR`.

    Returns
    -------
    tuple
        ``{class name: ml}`` and one sentence per flagged class (empty: nothing flagged).
    """
    if factor < 1:
        raise ValueError(f"size check factor must be >= 1, got {factor}")
    voxel_ml = float(np.prod([float(s) for s in spacing])) / 1000.0
    counts = np.bincount(np.asarray(label).ravel().astype(np.int64, copy=False), minlength=len(class_names))
    volumes = {name: float(counts[c]) * voxel_ml for c, name in enumerate(class_names) if c > 0}
    notes = []
    for name, ml in volumes.items():
        if name not in ranges:
            continue
        lo, hi = (float(v) for v in ranges[name])
        if ml < lo / factor:
            notes.append(f"{name} {ml:.1f} ml is under 1/{factor:g} of the smallest labeled one ({lo:.1f} ml)")
        elif ml > hi * factor:
            notes.append(f"{name} {ml:.1f} ml is over {factor:g}x the largest labeled one ({hi:.1f} ml)")
    return volumes, notes
