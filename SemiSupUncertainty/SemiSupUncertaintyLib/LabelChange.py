"""How much the user changed a predicted segmentation before accepting it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np

__all__ = ["LabelChange", "labelChange"]

#: Cubic millimetres per millilitre.
MM3_PER_ML = 1000.0


@dataclass
class LabelChange:
    """Prediction vs. accepted label of one volume (all foreground classes together, and per class).

    ``dice``: foreground Dice (1 when both are empty); ``changedMl``: volume of the voxels
    whose label changed; ``addedMl``/``removedMl``: foreground the user added/removed.
    """

    dice: float
    changedMl: float
    addedMl: float
    removedMl: float
    changedVoxels: int
    acceptedMl: float
    predictedMl: float
    classDice: dict[str, float] = field(default_factory=dict)

    def asDict(self) -> dict:
        return asdict(self)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def labelChange(predicted: np.ndarray, accepted: np.ndarray, voxelVolumeMm3: float, classNames: Sequence[str]) -> LabelChange:
    """Compare two label maps of one grid (value ``i`` = ``classNames[i - 1]``)."""
    p, a = np.asarray(predicted), np.asarray(accepted)
    if p.shape != a.shape:
        raise ValueError(f"label maps of different shapes {p.shape} and {a.shape}")
    ml = voxelVolumeMm3 / MM3_PER_ML
    pf, af = p > 0, a > 0
    changed = int((p != a).sum())
    return LabelChange(
        dice=_dice(pf, af),
        changedMl=changed * ml,
        addedMl=int((af & ~pf).sum()) * ml,
        removedMl=int((pf & ~af).sum()) * ml,
        changedVoxels=changed,
        acceptedMl=int(af.sum()) * ml,
        predictedMl=int(pf.sum()) * ml,
        classDice={name: _dice(p == i, a == i) for i, name in enumerate(classNames, start=1)},
    )
