"""Sliding-window prediction, MC-dropout sampling and uncertainty measures (tensors only).

File I/O and geometry live in :mod:`semisup.data.io`; the CLI glues them to this.
"""

from .predictor import (
    LABEL_SOURCES,
    count_samples,
    largest_connected_component,
    predict_volume,
    predict_volume_reference,
    window_borders,
)
from .uncertainty import (
    ENTROPY_EPS,
    expected_entropy,
    mutual_information,
    normalized_entropy,
    predictive_entropy,
    variance,
    volume_scores,
)

__all__ = [
    "ENTROPY_EPS",
    "LABEL_SOURCES",
    "count_samples",
    "expected_entropy",
    "largest_connected_component",
    "mutual_information",
    "normalized_entropy",
    "predict_volume",
    "predict_volume_reference",
    "predictive_entropy",
    "variance",
    "volume_scores",
    "window_borders",
]
