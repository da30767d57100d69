"""Score predicted label maps against reference labels (files in, metrics files out)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..data import DataError, DatasetSpec, image_to_array, read_image
from ..data.dataset import IMAGE_EXTENSIONS, case_name_from_path
from ..data.io import geometry_difference, geometry_of, same_geometry, vector_image_to_array
from .metrics import evaluate_case, summarize, write_results
from .uncertainty_quality import DEFAULT_MARGIN_MM, case_uncertainty_quality, summarize_uncertainty

__all__ = ["evaluate_predictions"]


def evaluate_predictions(
    predictions: str | Path,
    *,
    dataset: str | Path | None = None,
    split: str = "validation",
    labels_dir: str | Path | None = None,
    output_dir: str | Path | None = None,
    class_names: list[str] | None = None,
    margin_mm: float = DEFAULT_MARGIN_MM,
    uncertainty_map: str = "uncertainty",
    worst: int = 0,
) -> dict[str, Any]:
    """Compare ``<case>_label.nrrd`` in ``predictions`` with the reference of every case.

    References come from ``dataset`` (the cases of ``split``) or from ``labels_dir``
    (files named like the cases). Distances are in mm from the reference's spacing.
    Reference voxels of the dataset's ``ignore`` value are left out of every metric.
    Writes ``metrics.csv`` and ``metrics.json`` and returns the summary.

    When the folder holds ``<case>_<uncertainty_map>.nrrd`` (and
    ``<case>_probabilities.nrrd`` from ``predict --save-probabilities``, for the ECE),
    each case and the summary get an ``uncertainty`` object
    (:mod:`semisup.measure.uncertainty_quality`) computed inside the foreground
    dilated by ``margin_mm``; the summary's ``ranking_spearman`` reads ``scores.csv``.
    Whatever is missing is ``None`` with its reason.

    ``worst > 0`` (with ``dataset``, which names the images) writes
    ``worst/<rank>_<case>.png`` for the ``worst`` cases of lowest mean Dice: the axial
    slice with the most wrong voxels, prediction vs reference contours and the
    uncertainty; the summary lists them under ``worst_cases``.
    """
    pred_dir = Path(predictions)
    ignore_label = None
    images: dict[str, Path] = {}
    if worst and dataset is None:
        raise DataError("figures of the worst cases need the images: give a dataset.json")
    if dataset is not None:
        spec = DatasetSpec.from_json(dataset)
        cases = {c.name: c.label for c in getattr(spec, split) if c.label is not None}
        images = {c.name: Path(c.image) for c in getattr(spec, split)}
        class_names = spec.class_names
        ignore_label = spec.ignore_label
        if not cases:
            raise DataError(f"{dataset}: the {split!r} list has no labeled cases to evaluate against")
    elif labels_dir is not None:
        cases = _label_files(Path(labels_dir))
    else:
        raise DataError("give a dataset.json or a folder of reference labels")

    loaded = []
    grids = {}  # case -> the predicted label map's image (the grid its other maps must share)
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
        grids[name] = pred_img
    if not class_names:
        class_names = _undeclared_classes(loaded, labels_dir)
    rows = []
    for name, spacing, ref, pred in loaded:
        row = evaluate_case(pred, ref, len(class_names), spacing, class_names, case=name, ignore_index=ignore_label)
        row["uncertainty"] = _case_uncertainty(
            pred_dir, name, grids[name], pred, ref, len(class_names), margin_mm, uncertainty_map, ignore_label
        )
        rows.append(row)
    summary = summarize(rows)
    scores, why = _volume_scores(pred_dir, [r["case"] for r in rows])
    summary["uncertainty"] = summarize_uncertainty(
        [r["uncertainty"] for r in rows],
        scores=scores,
        dice=[r["mean"]["dice"] for r in rows],
        scores_reason=why,
    )
    out_dir = Path(output_dir) if output_dir else pred_dir
    if worst:
        by_name = {name: (spacing, ref, pred) for name, spacing, ref, pred in loaded}
        summary["worst_cases"] = _worst_figures(
            rows, by_name, images, pred_dir, out_dir / "worst", worst, uncertainty_map, class_names, ignore_label
        )
    write_results(rows, summary, out_dir)
    return summary


def _worst_figures(
    rows, by_name, images, pred_dir: Path, folder: Path, count: int, kind: str, class_names, ignore_label,
) -> list[dict[str, Any]]:
    """Figures of the ``count`` cases of lowest mean Dice (failure analysis); their list."""
    from .report import atomic_write_bytes, case_figure_png, worst_error_slice

    folder.mkdir(parents=True, exist_ok=True)
    ranked = sorted(rows, key=lambda r: (r["mean"]["dice"], r["case"]))[:count]
    listed = []
    for rank, row in enumerate(ranked, 1):
        name = row["case"]
        spacing, ref, pred = by_name[name]
        image_img = read_image(images[name], vector=True)
        if image_img.GetSize() != tuple(ref.shape):
            raise DataError(f"{images[name]}: image grid {image_img.GetSize()} differs from its reference label {ref.shape}")
        image = vector_image_to_array(image_img)[0]
        u_path = pred_dir / f"{name}_{kind}.nrrd"
        unc = vector_image_to_array(read_image(u_path, vector=True))[0] if u_path.exists() else np.zeros(ref.shape, np.float32)
        shown_ref = np.where(ref == ignore_label, 0, ref) if ignore_label is not None else ref
        z = worst_error_slice(pred, ref, ignore_label)
        png, _ = case_figure_png({
            "image": image, "label_pred": pred, "label_ref": shown_ref, "uncertainty": unc, "spacing": spacing,
            "name": f"{name} (Dice {row['mean']['dice']:.2f})", "class_names": class_names, "axial_index": z,
        })
        path = folder / f"{rank:02d}_{name}.png"
        atomic_write_bytes(path, png)
        listed.append({"rank": rank, "case": name, "dice": row["mean"]["dice"], "axial_index": z, "figure": str(path)})
    return listed


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


#: Column of scores.csv used for ranking (the key the Slicer table reads too).
SCORE_KEY = "mean_uncertainty_foreground"


def _read_matching(path: Path, pred_img, what: str):
    img = read_image(path, vector=True)
    if not same_geometry(geometry_of(img), geometry_of(pred_img)):
        raise DataError(f"{path}: {what} geometry differs from its label map: {geometry_difference(img, pred_img)}")
    return img


def _case_uncertainty(
    pred_dir: Path, name: str, pred_img, pred: np.ndarray, ref: np.ndarray, num_classes: int, margin_mm: float, kind: str,
    ignore_label: int | None = None,
) -> dict[str, Any]:
    u_path = pred_dir / f"{name}_{kind}.nrrd"
    p_path = pred_dir / f"{name}_probabilities.nrrd"
    missing = {}
    uncertainty = probabilities = None
    if u_path.exists():
        uncertainty = vector_image_to_array(_read_matching(u_path, pred_img, "uncertainty map"))[0].astype(np.float32)
    else:
        missing["uncertainty"] = f"no {u_path.name} in the predictions folder"
    if p_path.exists():
        probabilities = vector_image_to_array(_read_matching(p_path, pred_img, "probability map"))
        if probabilities.shape[0] != num_classes:
            raise DataError(f"{p_path}: {probabilities.shape[0]} probability channels, expected {num_classes} classes")
    else:
        missing["probabilities"] = f"no {p_path.name}: predict with --save-probabilities for the ECE"
    spacing = pred_img.GetSpacing()
    # Entropy in nats is at most ln C (the normalisation of the QU-BraTS filtered Dice).
    u_max = float(np.log(num_classes)) if kind == "uncertainty" else None
    return case_uncertainty_quality(
        pred, ref, uncertainty, spacing, probabilities=probabilities, uncertainty_max=u_max,
        margin_mm=margin_mm, missing=missing, ignore_label=ignore_label,
    )


def _volume_scores(pred_dir: Path, cases: list[str]) -> tuple[list[float | None] | None, str | None]:
    """Per-case ``SCORE_KEY`` from ``scores.csv`` in ``cases`` order, or ``(None, reason)``."""
    import csv

    path = pred_dir / "scores.csv"
    if not path.exists():
        return None, f"no {path.name} in {pred_dir}"
    with path.open(newline="") as fh:
        rows = {r.get("case", ""): r for r in csv.DictReader(fh)}
    if rows and SCORE_KEY not in next(iter(rows.values())):
        return None, f"{path}: no column {SCORE_KEY!r}"
    out: list[float | None] = []
    for case in cases:
        value = rows.get(case, {}).get(SCORE_KEY)
        out.append(float(value) if value not in (None, "") else None)
    return out, None
