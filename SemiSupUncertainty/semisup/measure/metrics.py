"""Segmentation metrics per class, with distances in mm: Dice, Jaccard, HD95, ASD.

MONAI computes every value (``compute_dice``, ``compute_iou``,
``compute_hausdorff_distance(percentile=95)``, ``compute_average_surface_distance(
symmetric=True)``) on the whole volume, with the image ``spacing`` so distances are
in mm. Pass ``spacing=1.0`` for distances in voxels (the UA-MT paper reports voxels
for LA: say so when comparing).

Empty masks
-----------
MONAI returns NaN (or inf) when a class is absent from the prediction or the
reference. Here every value is defined, so summaries never contain NaN:

================================  ======  ========  =================================
case (for one class)              Dice    Jaccard   HD95 and ASD
================================  ======  ========  =================================
both empty                        1.0     1.0       0.0
exactly one empty                 0.0     0.0       image diagonal in mm
================================  ======  ========  =================================

The image diagonal is ``sqrt(sum_i (n_i * spacing_i)^2)``, the physical extent of
the grid: an upper bound of every distance a non-empty prediction can reach, so a
missed or hallucinated structure always scores worst.

Rows and files
--------------
:func:`evaluate_case` returns one *row* per case::

    {"case": "la_003", "spacing": [0.625, 0.625, 0.625],
     "classes": {"left_atrium": {"label": 1, "dice": ..., "jaccard": ..., "hd95": ...,
                                 "asd": ..., "pred_voxels": ..., "ref_voxels": ...}},
     "mean": {"dice": ..., "jaccard": ..., "hd95": ..., "asd": ...}}

``mean`` averages the foreground classes. :func:`summarize` gives mean and
population standard deviation (``ddof=0``) over cases; :func:`write_results` writes
``metrics.csv`` (one row per case x class) and ``metrics.json`` atomically.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import math
import os
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.metrics import (
    compute_average_surface_distance,
    compute_dice,
    compute_hausdorff_distance,
    compute_iou,
)

__all__ = ["METRICS", "HD_PERCENTILE", "image_diagonal", "evaluate_case", "summarize", "write_results"]

log = logging.getLogger(__name__)

#: Metric keys, in the order of the CSV columns.
METRICS: tuple[str, ...] = ("dice", "jaccard", "hd95", "asd")
#: Percentile of the surface distances reported as "HD95" (UA-MT, UCMT).
HD_PERCENTILE: float = 95.0

_CSV_FIELDS = ("case", "class", "label", *METRICS, "pred_voxels", "ref_voxels")


def _as_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _spacing(spacing: float | Sequence[float], ndim: int) -> tuple[float, ...]:
    if isinstance(spacing, (int, float)):
        sp = (float(spacing),) * ndim
    else:
        sp = tuple(float(s) for s in spacing)
    if len(sp) != ndim or any(not (s > 0 and math.isfinite(s)) for s in sp):
        raise ValueError(f"spacing must be {ndim} positive numbers (mm, image axis order), got {spacing}")
    return sp


def image_diagonal(shape: Sequence[int], spacing: float | Sequence[float]) -> float:
    """Physical diagonal ``sqrt(sum (n_i * s_i)^2)`` of a grid, the value for one-sided empty masks."""
    sp = _spacing(spacing, len(shape))
    return float(math.sqrt(sum((n * s) ** 2 for n, s in zip(shape, sp))))


def _class_names(class_names: Sequence[str] | Mapping[Any, str] | None, num_classes: int) -> list[str]:
    """Names of the foreground classes 1..C-1.

    Accepts names for all labels 0..C-1 (background first, as in ``dataset.json``),
    names for the foreground only, a mapping ``label -> name``, or ``None``.
    """
    if class_names is None:
        return [f"class_{c}" for c in range(1, num_classes)]
    if isinstance(class_names, Mapping):
        by_label = {int(k): str(v) for k, v in class_names.items()}
        return [by_label.get(c, f"class_{c}") for c in range(1, num_classes)]
    names = [str(n) for n in class_names]
    if len(names) == num_classes:
        names = names[1:]
    if len(names) != num_classes - 1:
        raise ValueError(
            f"class_names has {len(class_names)} names; expected {num_classes} (with background) "
            f"or {num_classes - 1} (foreground only)"
        )
    if len(set(names)) != len(names):
        raise ValueError(f"class_names must be unique, got {names}")
    return names


def _class_metrics(p: np.ndarray, r: np.ndarray, spacing: tuple[float, ...], diagonal: float) -> dict[str, float]:
    n_p, n_r = int(p.sum()), int(r.sum())
    if n_p == 0 and n_r == 0:
        return {"dice": 1.0, "jaccard": 1.0, "hd95": 0.0, "asd": 0.0}
    if n_p == 0 or n_r == 0:
        return {"dice": 0.0, "jaccard": 0.0, "hd95": diagonal, "asd": diagonal}
    # MONAI wants one-hot (B, C, *spatial); one class at a time keeps empties out of its path.
    yp = torch.from_numpy(p)[None, None].double()  # float64: Dice of large masks to full precision
    yr = torch.from_numpy(r)[None, None].double()
    with warnings.catch_warnings():
        # MONAI 1.6 warns about its own deprecated internal argument on every call.
        warnings.simplefilter("ignore", FutureWarning)
        values = {
            "dice": compute_dice(yp, yr, include_background=True),
            "jaccard": compute_iou(yp, yr, include_background=True),
            "hd95": compute_hausdorff_distance(
                yp, yr, include_background=True, percentile=HD_PERCENTILE, spacing=list(spacing)
            ),
            "asd": compute_average_surface_distance(
                yp, yr, include_background=True, symmetric=True, spacing=list(spacing)
            ),
        }
    out = {k: float(v.reshape(-1)[0]) for k, v in values.items()}
    for k in ("hd95", "asd"):
        if not math.isfinite(out[k]):  # cannot happen for non-empty masks; never let NaN through
            log.warning("%s was %s for non-empty masks; using the image diagonal", k, out[k])
            out[k] = diagonal
    return out


def dice_per_class(pred: Any, ref: Any, num_classes: int) -> dict[int, float]:
    """Dice of each foreground class ``1..C-1`` of two label maps, 1.0 where both are empty.

    The cheap Dice alone (no distances), for decisions taken on many predictions
    (e.g. the largest-component choice on validation cases). Same values as
    :func:`evaluate_case`'s ``dice``.
    """
    p, r = _as_numpy(pred), _as_numpy(ref)
    if p.shape != r.shape:
        raise ValueError(f"prediction shape {p.shape} differs from reference shape {r.shape}")
    out = {}
    for c in range(1, int(num_classes)):
        pc, rc = p == c, r == c
        total = int(pc.sum()) + int(rc.sum())
        out[c] = 1.0 if total == 0 else 2.0 * int(np.logical_and(pc, rc).sum()) / total
    return out


def evaluate_case(
    pred: Any,
    ref: Any,
    num_classes: int,
    spacing: float | Sequence[float] = 1.0,
    class_names: Sequence[str] | Mapping[Any, str] | None = None,
    *,
    case: str = "",
    ignore_index: int | None = None,
) -> dict[str, Any]:
    """Dice, Jaccard, HD95 and ASD of every foreground class of one case.

    Parameters
    ----------
    pred, ref:
        Integer label maps (array or tensor) of the same spatial shape, 2-D or 3-D,
        values in ``0..num_classes-1``.
    num_classes:
        ``C`` including background (label 0, not scored).
    spacing:
        Voxel size in mm in the arrays' axis order (x, y, z); one number for
        isotropic, 1.0 for distances in voxels.
    class_names:
        Names of labels ``0..C-1`` (background name ignored), of ``1..C-1``, or a
        mapping ``label -> name``; default ``class_1`` ...
    case:
        Case name stored in the row (used by :func:`write_results`).
    ignore_index:
        Reference value of unlabeled voxels (sparse labels): prediction and reference
        are both set to background there, so those voxels count as neither true nor
        false; HD95 and ASD are then distances within the labeled voxels.

    Returns
    -------
    dict
        ``{"case", "spacing", "classes": {name: {label, dice, jaccard, hd95, asd,
        pred_voxels, ref_voxels}}, "mean": {dice, jaccard, hd95, asd}}``; see the
        module docstring for empty masks.
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2 (background + foreground), got {num_classes}")
    p_arr, r_arr = _as_numpy(pred), _as_numpy(ref)
    if p_arr.shape != r_arr.shape:
        raise ValueError(
            f"{case or 'case'}: prediction shape {p_arr.shape} differs from reference shape {r_arr.shape}"
        )
    if p_arr.ndim not in (2, 3):
        raise ValueError(f"{case or 'case'}: expected 2-D or 3-D label maps, got shape {p_arr.shape}")
    if ignore_index is not None:
        ignored = r_arr == ignore_index
        if ignored.any():
            p_arr = np.where(ignored, 0, p_arr)
            r_arr = np.where(ignored, 0, r_arr)
    for what, arr in (("prediction", p_arr), ("reference", r_arr)):
        if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
            raise ValueError(
                f"{case or 'case'}: {what} has labels {arr.min()}..{arr.max()} outside 0..{num_classes - 1}"
            )
    sp = _spacing(spacing, p_arr.ndim)
    names = _class_names(class_names, num_classes)
    diagonal = image_diagonal(p_arr.shape, sp)

    classes: dict[str, dict[str, Any]] = {}
    for label, name in enumerate(names, start=1):
        p, r = p_arr == label, r_arr == label
        classes[name] = {
            "label": label,
            **_class_metrics(p, r, sp, diagonal),
            "pred_voxels": int(p.sum()),
            "ref_voxels": int(r.sum()),
        }
    mean = {m: float(np.mean([c[m] for c in classes.values()])) for m in METRICS}
    return {"case": case, "spacing": list(sp), "classes": classes, "mean": mean}


def _stats(values: list[float]) -> dict[str, float]:
    arr = np.asarray(values, dtype=np.float64)
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=0)), "n": int(arr.size)}


def summarize(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Mean and standard deviation (``ddof=0``) over cases, per class and metric.

    Parameters
    ----------
    rows:
        Results of :func:`evaluate_case`.

    Returns
    -------
    dict
        ``{"n_cases": N, "classes": {name: {metric: {"mean", "std", "n"}}},
        "mean": {metric: {"mean", "std", "n"}}}`` where ``"mean"`` summarizes each
        case's foreground-class mean. ``classes`` and ``mean`` are empty for no rows.
    """
    names: list[str] = []
    for row in rows:
        names.extend(n for n in row["classes"] if n not in names)
    classes = {
        name: {m: _stats([r["classes"][name][m] for r in rows if name in r["classes"]]) for m in METRICS}
        for name in names
    }
    mean = {m: _stats([r["mean"][m] for r in rows]) for m in METRICS} if rows else {}
    return {"n_cases": len(rows), "classes": classes, "mean": mean}


def _atomic_write(path: Path, text: str) -> None:
    # Write beside the target then rename: a reader never sees half a file.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_results(
    rows: Sequence[Mapping[str, Any]], summary: Mapping[str, Any], out_dir: str | Path
) -> tuple[Path, Path]:
    """Write ``metrics.csv`` (one row per case x class) and ``metrics.json`` atomically.

    Parameters
    ----------
    rows:
        Results of :func:`evaluate_case` (their ``case`` names label the CSV rows).
    summary:
        Result of :func:`summarize`.
    out_dir:
        Folder, created if missing.

    Returns
    -------
    tuple[Path, Path]
        Paths of ``metrics.csv`` and ``metrics.json``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=_CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        for name, vals in row["classes"].items():
            writer.writerow({"case": row.get("case", ""), "class": name, **{k: vals[k] for k in _CSV_FIELDS[2:]}})
    doc = {
        "distance_unit": "mm (each case's spacing; voxels where spacing is 1)",
        "empty_masks": (
            "both empty: dice 1, jaccard 1, hd95 0, asd 0; "
            "one empty: dice 0, jaccard 0, hd95 = asd = image diagonal"
        ),
        "cases": list(rows),
        "summary": summary,
    }
    csv_path, json_path = out / "metrics.csv", out / "metrics.json"
    _atomic_write(csv_path, buf.getvalue())
    # allow_nan=False: a NaN here is a bug, fail loudly rather than write invalid JSON.
    _atomic_write(json_path, json.dumps(doc, indent=2, allow_nan=False) + "\n")
    return csv_path, json_path
