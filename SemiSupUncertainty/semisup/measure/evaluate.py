"""Score predicted label maps against reference labels (files in, metrics files out)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..data import DataError, DatasetSpec, image_to_array, read_image
from ..data.dataset import IMAGE_EXTENSIONS, case_name_from_path
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
    Reference voxels of the dataset's ``ignore`` value are left out of every metric.
    Writes ``metrics.csv`` and ``metrics.json`` and returns the summary.
    """
    pred_dir = Path(predictions)
    ignore_label = None
    if dataset is not None:
        spec = DatasetSpec.from_json(dataset)
        cases = {c.name: c.label for c in getattr(spec, split) if c.label is not None}
        class_names = spec.class_names
        ignore_label = spec.ignore_label
        if not cases:
            raise DataError(f"{dataset}: the {split!r} list has no labeled cases to evaluate against")
    elif labels_dir is not None:
        cases = _label_files(Path(labels_dir))
    else:
        raise DataError("give a dataset.json or a folder of reference labels")

    loaded = []
    for name, ref_path in sorted(cases.items()):
        pred_path = pred_dir / f"{name}_label.nrrd"
        if not pred_path.exists():
            raise DataError(f"{pred_path}: no prediction for case {name!r} (reference {ref_path})")
        ref_img, pred_img = read_image(ref_path), read_image(pred_path)
        if not same_geometry(geometry_of(ref_img), geometry_of(pred_img)):
            raise DataError(f"{pred_path}: geometry differs from its reference {ref_path}")
        ref = label_values(image_to_array(ref_img), ref_path, class_names, ignore_label)
        pred = label_values(image_to_array(pred_img), pred_path, class_names)
        loaded.append((name, ref_img.GetSpacing(), ref, pred))
    if not class_names:
        class_names = _undeclared_classes(loaded, labels_dir)
    rows = [
        evaluate_case(pred, ref, len(class_names), spacing, class_names, case=name, ignore_index=ignore_label)
        for name, spacing, ref, pred in loaded
    ]
    summary = summarize(rows)
    write_results(rows, summary, Path(output_dir) if output_dir else pred_dir)
    return summary


def _label_files(folder: Path) -> dict[str, Path]:
    """Image files of ``folder`` by case name; other files (README.txt, .DS_Store) are skipped."""
    if not folder.is_dir():
        raise DataError(f"{folder}: folder not found")
    files = [
        p for p in sorted(folder.iterdir())
        if p.is_file() and not p.name.startswith(".") and p.name.lower().endswith(IMAGE_EXTENSIONS)
    ]
    if not files:
        raise DataError(f"{folder}: no label image files ({', '.join(IMAGE_EXTENSIONS)})")
    return {case_name_from_path(p): p for p in files}


def label_values(
    arr: np.ndarray, path: Path, class_names: list[str] | None, ignore_label: int | None = None
) -> np.ndarray:
    """A label map as int64, refusing what is not one: non-integer values (0/0.5), or
    values outside the declared classes ``0..C-1`` (a 0/255 mask for 2 classes).
    ``ignore_label`` (the dataset's unlabeled value, references only) is allowed too.

    Without declared classes only the integrality and the sign are checked here; the
    values together must then be consecutive (:func:`_undeclared_classes`).
    """
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all():
            raise DataError(f"{path}: label map has NaN or infinite values")
        fractional = arr != np.rint(arr)
        if fractional.any():
            shown = ", ".join(f"{v:g}" for v in np.unique(arr[fractional])[:5])
            raise DataError(f"{path}: label values must be whole class numbers; found {shown}")
    elif arr.dtype.kind not in "iub":
        raise DataError(f"{path}: pixel type {arr.dtype} is not a label map")
    values = arr.astype(np.int64)
    top = len(class_names) - 1 if class_names else None
    checked = values if ignore_label is None else values[values != ignore_label]
    low, high = (int(checked.min()), int(checked.max())) if checked.size else (0, 0)
    if low < 0 or (top is not None and high > top):
        outside = np.unique(checked[(checked < 0) | (checked > (top if top is not None else high))])
        shown = ", ".join(str(v) for v in outside[:10]) + (", ..." if outside.size > 10 else "")
        declared = f"the declared classes 0..{top} ({', '.join(class_names)})" if class_names else "class numbers >= 0"
        raise DataError(f"{path}: label values {shown} are not among {declared}")
    return values


def _undeclared_classes(loaded: list, labels_dir: Path | None) -> list[str]:
    """Class names for references without declared classes: the values found must be
    0..K-1 without gaps, so a 0/255 mask is refused rather than scored as 256 classes."""
    found: set[int] = set()
    for _, _, ref, pred in loaded:
        found.update(np.unique(ref).tolist())
        found.update(np.unique(pred).tolist())
    top = max(found | {1})
    missing = sorted(set(range(top + 1)) - found)
    if missing:
        shown = ", ".join(str(v) for v in sorted(found)[:10])
        raise DataError(
            f"{labels_dir}: label values {shown} are not consecutive class numbers 0..{top} "
            f"({len(missing)} missing); pass --classes (names, background first) or --dataset to declare the classes"
        )
    return ["background"] + [f"class_{i}" for i in range(1, top + 1)]
