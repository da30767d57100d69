"""Score predicted label maps against reference labels (files in, metrics files out)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..data import DataError, DatasetSpec, image_to_array, read_image
from ..data.dataset import case_name_from_path
from ..data.io import geometry_of, same_geometry
from .metrics import evaluate_case, summarize, write_results

__all__ = ["evaluate_predictions"]


def evaluate_predictions(
    predictions: str | Path,
    *,
    dataset: str | Path | None = None,
    split: str = "validation",
    labels_dir: str | Path | None = None,
    output_dir: str | Path | None = None,
    class_names: list[str] | None = None,
) -> dict[str, Any]:
    """Compare ``<case>_label.nrrd`` in ``predictions`` with the reference of every case.

    References come from ``dataset`` (the cases of ``split``) or from ``labels_dir``
    (files named like the cases). Distances are in mm from the reference's spacing.
    Writes ``metrics.csv`` and ``metrics.json`` and returns the summary.
    """
    pred_dir = Path(predictions)
    if dataset is not None:
        spec = DatasetSpec.from_json(dataset)
        cases = {c.name: c.label for c in getattr(spec, split) if c.label is not None}
        class_names = spec.class_names
        if not cases:
            raise DataError(f"{dataset}: the {split!r} list has no labeled cases to evaluate against")
    elif labels_dir is not None:
        cases = {case_name_from_path(p): p for p in sorted(Path(labels_dir).iterdir()) if p.is_file()}
    else:
        raise DataError("give a dataset.json or a folder of reference labels")

    rows = []
    for name, ref_path in sorted(cases.items()):
        pred_path = pred_dir / f"{name}_label.nrrd"
        if not pred_path.exists():
            raise DataError(f"{pred_path}: no prediction for case {name!r} (reference {ref_path})")
        ref_img, pred_img = read_image(ref_path), read_image(pred_path)
        if not same_geometry(geometry_of(ref_img), geometry_of(pred_img)):
            raise DataError(f"{pred_path}: geometry differs from its reference {ref_path}")
        ref, pred = image_to_array(ref_img).astype(np.int64), image_to_array(pred_img).astype(np.int64)
        num_classes = len(class_names) if class_names else int(max(ref.max(), pred.max())) + 1
        names = class_names or ["background"] + [f"class_{i}" for i in range(1, num_classes)]
        row = evaluate_case(pred, ref, num_classes, ref_img.GetSpacing(), names, case=name)
        rows.append(row)
    summary = summarize(rows)
    write_results(rows, summary, Path(output_dir) if output_dir else pred_dir)
    return summary
