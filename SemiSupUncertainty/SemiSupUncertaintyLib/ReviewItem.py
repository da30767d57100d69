"""One predicted volume in the review table: its nodes, its score and its predicted size."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["ReviewItem"]


@dataclass
class ReviewItem:
    """A row of the review table.

    Attributes
    ----------
    caseName:
        File stem of the prediction's outputs (``<caseName>_label.nrrd``), from ``scores.csv``.
    volume, segmentation, uncertainty:
        Scene nodes: the input volume, its predicted (then corrected) segmentation, the
        uncertainty map (``None`` where absent).
    score:
        The per-volume score of ``scores.csv`` (``mean_uncertainty_foreground``, higher = label first).
    foregroundVoxels:
        Predicted foreground voxels (0: the model found nothing; ranked first).
    predictedMl:
        ``foregroundVoxels`` x voxel volume of the input, in millilitres.
    labelPath:
        The predicted label map file: the untouched prediction the accepted label is compared to.
    status:
        ``"to review"`` or ``"accepted"``.
    sizeCheck:
        ``scores.csv``'s ``size_check``: ``"ok"``, ``"flagged: ..."`` (a class far smaller or
        larger than any labeled one) or ``"not checked: ..."``; empty for older predictions.
    """

    caseName: str
    volume: object
    segmentation: object
    uncertainty: object
    score: float
    foregroundVoxels: int
    predictedMl: float
    labelPath: Path
    status: str = "to review"
    sizeCheck: str = ""

    @property
    def sizeFlagged(self) -> bool:
        return self.sizeCheck.startswith("flagged")
