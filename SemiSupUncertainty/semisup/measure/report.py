"""A short human-readable report of a run: markdown, one figure and the same numbers as JSON.

``write_report`` writes into a run folder:

- ``report.md``: run information, a metrics table per case with the mean, the
  summary metrics, the predicted cases ranked by uncertainty (most uncertain first)
  and the embedded figure;
- ``report.png``: one axial slice (the middle slice through the foreground) of one
  case: image, prediction (and reference) contours over the image, uncertainty map;
- ``report_uncertainty.png`` (when the summary has an ``uncertainty`` object from
  ``evaluate``): a reliability diagram (accuracy vs. confidence, 15 bins) and the
  voxel error rate against normalised uncertainty, both inside the evaluation region;
- ``report.json``: the same numbers, machine-readable (non-finite numbers as ``null``).

Every file is written to a temporary name and moved into place (``os.replace``) so a
reader never sees a half-written report. Matplotlib is used through its object API with
the Agg canvas, so no global backend is switched (safe inside Slicer).
"""

from __future__ import annotations

import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["atomic_write_bytes", "case_figure_png", "worst_error_slice", "write_report", "middle_foreground_slice", "uncertainty_ranking", "flatten_metrics", "UNCERTAINTY_KEYS"]

# Keys of run_info listed first, in this order; the rest follow as given.
_RUN_INFO_ORDER = ("method", "network", "iterations", "device", "time_s", "time")
# Per-case uncertainty entries tried in order for the ranking.
UNCERTAINTY_KEYS: tuple[str, ...] = ("mean_uncertainty_foreground", "uncertainty")
# Entries of a per-case row that are not metrics (evaluate_case rows carry them).
_NOT_METRICS = ("name", "case", "spacing")
# Per-case uncertainty-quality scores shown in the table (the bins stay in report.json).
_UNCERTAINTY_COLUMNS = ("auroc", "ece", "ueo", "filtered_dice_auc")
# Colours of classes 1, 2, ... in the figure's contours.
_CLASS_COLOURS = ("#ff3b30", "#34c759", "#0a84ff", "#ffcc00", "#af52de", "#5ac8fa")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file: a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _scalar(value: Any) -> Any:
    """Python scalar of a numpy scalar or 0-d array/tensor; other values unchanged."""
    if isinstance(value, np.generic) or (hasattr(value, "item") and getattr(value, "shape", None) == ()):
        return value.item()
    return value


def _jsonable(value: Any) -> Any:
    """Recursively convert to JSON-safe values (numpy scalars, Paths; NaN/inf -> None)."""
    value = _scalar(value)
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    return str(value)


def flatten_metrics(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested metric dicts into ``"outer/inner"`` keys.

    Examples
    --------
    >>> flatten_metrics({"dice": {"1": 0.8, "2": 0.7}, "hd95": 3.0})
    {'dice/1': 0.8, 'dice/2': 0.7, 'hd95': 3.0}
    """
    flat: dict[str, Any] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_metrics(value, prefix=f"{name}/"))
        else:
            flat[name] = _scalar(value)
    return flat


def _metric_columns(case: Mapping[str, Any]) -> dict[str, Any]:
    """Flat metric columns of one per-case row.

    ``evaluate_case`` rows nest metrics under ``classes/<name>/``; that prefix is dropped
    (``organ/dice``); class indices (``label``) and voxel counts (``*_voxels``) are
    left out of the table (they stay in ``report.json``).
    """
    flat = flatten_metrics({k: v for k, v in case.items() if k not in _NOT_METRICS})
    flat = {k: v for k, v in flat.items() if not k.startswith("uncertainty/") or k.split("/", 1)[1] in _UNCERTAINTY_COLUMNS}
    out = {}
    for key, value in flat.items():
        leaf = key.rsplit("/", 1)[-1]
        if leaf == "label" or leaf.endswith("_voxels"):  # class index, voxel counts: not metrics
            continue
        out[key.removeprefix("classes/")] = value
    return out


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _fmt(value: Any) -> str:
    """Table cell: 4 significant digits for numbers, '–' for missing."""
    value = _scalar(value)
    if value is None:
        return "–"
    if _is_number(value):
        v = float(value)
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        if isinstance(value, (int, np.integer)):
            return str(int(value))
        return f"{v:.4g}"
    return str(value).replace("|", "\\|")


def _fmt_duration(seconds: float) -> str:
    m, s = divmod(float(seconds), 60.0)
    h, m = divmod(int(m), 60)
    if h:
        return f"{seconds:.0f} s ({h} h {m} min)"
    if m:
        return f"{seconds:.1f} s ({m} min {s:.0f} s)"
    return f"{seconds:.1f} s"


def _case_name(case: Mapping[str, Any], index: int) -> str:
    """``"name"``, else ``"case"`` (rows of :func:`semisup.measure.metrics.evaluate_case`)."""
    return str(case.get("name") or case.get("case") or f"case_{index}")


def uncertainty_ranking(
    per_case: Sequence[Mapping[str, Any]], key: str | Sequence[str] = UNCERTAINTY_KEYS
) -> list[dict[str, Any]]:
    """Cases with a finite uncertainty value, most uncertain first.

    Parameters
    ----------
    per_case:
        One mapping per case with ``"name"`` (or ``"case"``) and an uncertainty entry.
    key:
        Uncertainty entry, or several tried in order per case (the first present wins);
        by default ``mean_uncertainty_foreground`` (from
        :func:`semisup.inference.uncertainty.volume_scores`), then ``uncertainty``.

    Returns
    -------
    list of dict
        ``{"rank", "name", "uncertainty", "empty_prediction"}``, rank 1 the most
        uncertain; ties keep input order. ``empty_prediction`` is True when the case
        reports ``foreground_voxels == 0`` (its foreground uncertainty is then 0 by
        convention and says nothing).
    """
    keys = (key,) if isinstance(key, str) else tuple(key)
    scored = []
    for i, case in enumerate(per_case):
        value = next((_scalar(case[k]) for k in keys if case.get(k) is not None), None)
        if _is_number(value) and math.isfinite(float(value)):
            empty = _scalar(case.get("foreground_voxels")) == 0
            scored.append((-float(value), i, _case_name(case, i), empty))
    scored.sort()
    return [
        {"rank": r + 1, "name": name, "uncertainty": -neg, "empty_prediction": empty}
        for r, (neg, _, name, empty) in enumerate(scored)
    ]


def middle_foreground_slice(*masks: np.ndarray | None) -> int:
    """Axial (z) index in the middle of the foreground of the given (x, y, z) masks.

    The index halfway between the first and last slice with foreground, moved to the
    nearest slice that has foreground (non-convex shapes); the volume's middle slice
    when all masks are empty.
    """
    present = [np.asarray(m) for m in masks if m is not None]
    if not present:
        raise ValueError("middle_foreground_slice needs at least one mask")
    fg = np.zeros(present[0].shape[2], dtype=bool)
    for m in present:
        fg |= (m > 0).any(axis=(0, 1))
    zs = np.flatnonzero(fg)
    if zs.size == 0:
        return present[0].shape[2] // 2
    mid = (zs[0] + zs[-1]) // 2
    return int(zs[np.argmin(np.abs(zs - mid))])


def _render_figure(figure_case: Mapping[str, Any]) -> tuple[bytes, int]:
    """PNG bytes of the three-panel figure and the axial index shown."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    image = np.asarray(figure_case["image"], dtype=np.float32)
    pred = np.asarray(figure_case["label_pred"])
    unc = np.asarray(figure_case["uncertainty"], dtype=np.float32)
    ref = figure_case.get("label_ref")
    ref = None if ref is None else np.asarray(ref)
    name = str(figure_case.get("name", "case"))
    for what, arr in (("label_pred", pred), ("uncertainty", unc), ("label_ref", ref)):
        if arr is not None and arr.shape != image.shape:
            raise ValueError(f"figure case {name}: {what} shape {arr.shape} differs from image shape {image.shape}")
    if image.ndim != 3:
        raise ValueError(f"figure case {name}: image must be 3D (x, y, z), got shape {image.shape}")

    z = int(figure_case["axial_index"]) if figure_case.get("axial_index") is not None else middle_foreground_slice(pred, ref)
    # Transpose (x, y) -> (y, x) rows so that x runs horizontally; y grows downwards.
    img2 = image[:, :, z].T
    pred2 = pred[:, :, z].T
    unc2 = unc[:, :, z].T
    ref2 = None if ref is None else ref[:, :, z].T
    spacing = figure_case.get("spacing")
    aspect = float(spacing[1]) / float(spacing[0]) if spacing is not None else 1.0
    lo, hi = np.percentile(img2, [0.5, 99.5]) if img2.size else (0.0, 1.0)
    classes = sorted(int(c) for c in np.union1d(np.unique(pred), np.unique(ref) if ref is not None else []) if c > 0)

    names = figure_case.get("class_names")

    def class_name(k: int) -> str:
        return str(names[k]) if names is not None and k < len(names) else str(k)

    fig = Figure(figsize=(13.0, 4.6), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3)
    for ax in axes:
        ax.imshow(img2, cmap="gray", vmin=lo, vmax=hi, aspect=aspect, interpolation="nearest")
        ax.set_xlabel("x (voxel)")
        ax.set_ylabel("y (voxel)")
    axes[0].set_title(f"{name}: image, z = {z}")

    handles = []
    for k in classes:
        colour = _CLASS_COLOURS[(k - 1) % len(_CLASS_COLOURS)]
        if (pred2 == k).any():
            axes[1].contour(pred2 == k, levels=[0.5], colors=[colour], linewidths=1.4)
        handles.append(Line2D([], [], color=colour, lw=1.4, label=f"prediction {class_name(k)}"))
        if ref2 is not None:
            if (ref2 == k).any():
                axes[1].contour(ref2 == k, levels=[0.5], colors=[colour], linewidths=1.0, linestyles="--")
            handles.append(Line2D([], [], color=colour, lw=1.0, ls="--", label=f"reference {class_name(k)}"))
    if handles:
        axes[1].legend(handles=handles, loc="lower right", fontsize=7, framealpha=0.6)
    axes[1].set_title("prediction" + (" (solid) vs reference (dashed)" if ref2 is not None else ""))

    vmax = float(np.nanmax(unc2)) if unc2.size and np.isfinite(unc2).any() else 1.0
    heat = axes[2].imshow(unc2, cmap="inferno", vmin=0.0, vmax=max(vmax, 1e-6), aspect=aspect, interpolation="nearest")
    axes[2].set_title("uncertainty")
    fig.colorbar(heat, ax=axes[2], fraction=0.046, pad=0.04, label="nats")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue(), z


def worst_error_slice(pred: np.ndarray, ref: np.ndarray, ignore_label: int | None = None) -> int:
    """Axial (z) index with the most voxels where ``pred`` and ``ref`` disagree (ties: the lowest);
    :func:`middle_foreground_slice` when they agree everywhere."""
    wrong = np.asarray(pred) != np.asarray(ref)
    if ignore_label is not None:
        wrong &= np.asarray(ref) != ignore_label
    per_slice = wrong.sum(axis=(0, 1))
    if not per_slice.any():
        return middle_foreground_slice(pred, ref)
    return int(np.argmax(per_slice))


def case_figure_png(figure_case: Mapping[str, Any]) -> tuple[bytes, int]:
    """PNG of one case (image, prediction vs reference contours, uncertainty) and the axial index shown.

    ``figure_case`` as for :func:`write_report`, plus an optional ``"axial_index"``.
    """
    return _render_figure(figure_case)


def _render_uncertainty_figure(uncertainty: Mapping[str, Any]) -> bytes | None:
    """Reliability diagram and error rate vs. normalised uncertainty (pooled over cases), or None."""
    rel, err = uncertainty.get("reliability"), uncertainty.get("error_by_uncertainty")
    if not rel and not err:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10.0, 4.2), dpi=100)
    FigureCanvasAgg(fig)
    ax_rel, ax_err = fig.subplots(1, 2)
    if rel:
        edges = np.asarray(rel["edges"], dtype=float)
        centres = (edges[1:] + edges[:-1]) / 2
        acc = np.array([np.nan if a is None else a for a in rel["accuracy"]], dtype=float)
        ax_rel.bar(centres, np.nan_to_num(acc), width=np.diff(edges), edgecolor="k", alpha=0.7, label="accuracy")
        ax_rel.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
        ece = uncertainty.get("ece")
        ece_text = f", ECE {ece['mean']:.3f}" if isinstance(ece, Mapping) else ""
        ax_rel.set_title(f"reliability (max class probability{ece_text})")
        ax_rel.set_xlabel("confidence")
        ax_rel.set_ylabel("accuracy")
        ax_rel.set_xlim(0, 1), ax_rel.set_ylim(0, 1)
        ax_rel.legend(loc="upper left", fontsize=8)
    else:
        ax_rel.text(0.5, 0.5, "no probabilities\n(predict --save-probabilities)", ha="center", va="center")
        ax_rel.set_axis_off()
    if err:
        edges = np.asarray(err["edges"], dtype=float)
        centres = (edges[1:] + edges[:-1]) / 2
        counts = np.asarray(err["count"], dtype=float)
        rate = np.divide(np.asarray(err["errors"], dtype=float), counts, out=np.full_like(counts, np.nan), where=counts > 0)
        ax_err.plot(centres, rate, "o-", label="error rate")
        auroc = uncertainty.get("auroc")
        ax_err.set_title("wrong voxels vs. uncertainty" + (f" (AUROC {auroc['mean']:.3f})" if isinstance(auroc, Mapping) else ""))
        ax_err.set_xlabel("uncertainty / max (entropy / ln C)")
        ax_err.set_ylabel("fraction of voxels wrong")
        ax_err.set_xlim(0, 1), ax_err.set_ylim(0, 1)
        twin = ax_err.twinx()
        twin.bar(centres, counts, width=np.diff(edges), alpha=0.2, color="grey")
        twin.set_yscale("log")
        twin.set_ylabel("voxels (grey bars)")
        ax_err.set_zorder(twin.get_zorder() + 1)  # the rate line above the count bars
        ax_err.patch.set_visible(False)
    else:
        ax_err.text(0.5, 0.5, "no uncertainty map", ha="center", va="center")
        ax_err.set_axis_off()
    region = uncertainty.get("region")
    if region:
        fig.suptitle(f"inside the {region}", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _summary_lines(metrics_summary: Mapping[str, Any]) -> list[str]:
    """Summary as markdown: ``mean ± std`` statistics pivoted into a table (rows: class
    or group, columns: metric), other scalars as a list.

    ``{"classes": {"organ": {"dice": {"mean": .8, "std": .1}}}}`` gives the row
    ``organ`` and column ``dice`` with ``0.8 ± 0.1``; a flat ``{"dice": 0.8}`` is listed.
    """
    flat = flatten_metrics(metrics_summary)
    stats: dict[str, dict[str, Any]] = {}
    scalars: list[str] = []
    for key, value in flat.items():
        parent, _, leaf = key.rpartition("/")
        if parent and leaf in ("mean", "std", "n"):
            stats.setdefault(parent.removeprefix("classes/"), {})[leaf] = value
        elif any(part in ("reliability", "error_by_uncertainty") for part in key.split("/")):
            continue  # bins: in the figure and report.json
        elif _is_number(value) or value is None or isinstance(value, str):
            scalars.append(f"- **{key}**: {_fmt(value)}")
    cells: dict[str, dict[str, str]] = {}
    columns: list[str] = []
    ns: set[Any] = set()
    for path, st in stats.items():
        row, _, col = path.rpartition("/")
        row = row or "all"
        if col not in columns:
            columns.append(col)
        text = _fmt(st.get("mean"))
        if st.get("std") is not None:
            text += f" ± {_fmt(st['std'])}"
        cells.setdefault(row, {})[col] = text
        ns.add(_scalar(st.get("n")))
    lines = list(scalars)
    if cells:
        if lines:
            lines.append("")
        lines.append("| | " + " | ".join(columns) + " |")
        lines.append("|---|" + "---|" * len(columns))
        lines += [f"| {_fmt(r)} | " + " | ".join(c.get(col, "–") for col in columns) + " |" for r, c in cells.items()]
        ns.discard(None)
        if len(ns) == 1:
            lines += ["", f"Mean ± standard deviation over n = {_fmt(ns.pop())} cases."]
        else:
            lines += ["", "Mean ± standard deviation over cases."]
    return lines


def _markdown(
    run_info: Mapping[str, Any],
    metrics_summary: Mapping[str, Any],
    per_case: Sequence[Mapping[str, Any]],
    ranking: list[dict[str, Any]],
    figure_name: str,
    figure_z: int,
    uncertainty_keys: Sequence[str],
    uncertainty_figure: bool = False,
) -> str:
    lines = ["# SemiSupUncertainty report", "", "## Run", ""]
    keys = [k for k in _RUN_INFO_ORDER if k in run_info] + [k for k in run_info if k not in _RUN_INFO_ORDER]
    for key in keys:
        value = _scalar(run_info[key])
        if _is_number(value) and (key == "time" or key.endswith("_s")):
            lines.append(f"- **{key}**: {_fmt_duration(float(value))}")
        else:
            lines.append(f"- **{key}**: {_fmt(value)}")

    # Per-case table: every numeric metric seen in any case, the mean as the last row.
    flat = [_metric_columns(c) for c in per_case]
    columns: list[str] = []
    for row in flat:
        columns += [k for k, v in row.items() if k not in columns and (_is_number(v) or v is None)]
    lines += ["", "## Metrics per case", ""]
    if per_case and columns:
        lines.append("| case | " + " | ".join(columns) + " |")
        lines.append("|---|" + "---|" * len(columns))
        for i, (case, row) in enumerate(zip(per_case, flat)):
            lines.append(f"| {_fmt(_case_name(case, i))} | " + " | ".join(_fmt(row.get(c)) for c in columns) + " |")
        means = []
        for c in columns:
            vals = [float(row[c]) for row in flat if _is_number(row.get(c)) and math.isfinite(float(row[c]))]
            means.append(_fmt(sum(vals) / len(vals)) if vals else "–")
        lines.append("| **mean** | " + " | ".join(f"**{m}**" for m in means) + " |")
        lines += ["", "Means are over the cases with a finite value; '–' means not computed."]
    else:
        lines.append("No per-case metrics.")

    lines += ["", "## Summary", ""]
    lines += _summary_lines(metrics_summary) or ["No summary metrics."]

    lines += ["", "## Uncertainty ranking (most uncertain first)", ""]
    if ranking:
        lines += ["| rank | case | uncertainty (nats) |", "|---|---|---|"]
        for r in ranking:
            note = " (empty prediction)" if r["empty_prediction"] else ""
            lines.append(f"| {r['rank']} | {_fmt(r['name'])} | {_fmt(r['uncertainty'])}{note} |")
    else:
        lines.append("No case has an uncertainty value (" + ", ".join(f"`{k}`" for k in uncertainty_keys) + ").")

    lines += [
        "",
        "## Figure",
        "",
        f"Case {figure_name}, axial slice z = {figure_z} (middle of the foreground): image, "
        "contours over the image, uncertainty (nats).",
        "",
        f"![{figure_name}, z = {figure_z}](report.png)",
        "",
    ]
    if uncertainty_figure:
        lines += [
            "## Uncertainty quality",
            "",
            "Left: reliability diagram of the max class probability (perfect calibration on the diagonal). "
            "Right: fraction of wrong voxels per bin of normalised uncertainty (a useful map rises to the right). "
            "Voxels of all cases pooled, inside the evaluation region.",
            "",
            "![uncertainty quality](report_uncertainty.png)",
            "",
        ]
    return "\n".join(lines)


def write_report(
    out_dir: str | os.PathLike,
    *,
    metrics_summary: Mapping[str, Any],
    per_case: Sequence[Mapping[str, Any]],
    figure_case: Mapping[str, Any],
    run_info: Mapping[str, Any],
    uncertainty_key: str | Sequence[str] = UNCERTAINTY_KEYS,
) -> dict[str, Path]:
    """Write ``report.md``, ``report.png`` and ``report.json`` into ``out_dir``.

    Parameters
    ----------
    out_dir:
        Folder of the report, created if needed; existing report files are replaced.
    metrics_summary:
        Aggregate metrics, possibly nested (e.g. ``{"dice": {"mean": 0.8, "std": 0.05}}``);
        shown flattened as ``"dice/mean"``.
    per_case:
        One mapping per case: ``"name"`` (or ``"case"``), numeric metrics, possibly
        nested (e.g. ``{"dice": {"1": 0.83}}``, or a row of
        :func:`semisup.measure.metrics.evaluate_case` merged with
        :func:`semisup.inference.uncertainty.volume_scores`) and, for predicted cases,
        a mean uncertainty in nats (see ``uncertainty_key``) used for the ranking.
        Missing values are shown as '–'.
    figure_case:
        ``"image"``, ``"label_pred"``, ``"uncertainty"`` (arrays (x, y, z) of one shape),
        ``"name"``, optionally ``"label_ref"``, ``"spacing"`` (mm, x y z; sets the
        pixel aspect) and ``"class_names"`` (by label value, for the legend).
    run_info:
        Run description, e.g. ``method``, ``iterations``, ``device``, ``time_s``
        (numbers under ``time`` or keys ending in ``_s`` are shown as durations).
    uncertainty_key:
        Per-case entry (or entries tried in order) ranked in the uncertainty ranking.

    Returns
    -------
    dict of str to Path
        ``{"markdown": ..., "figure": ..., "json": ...}``.

    Raises
    ------
    ValueError
        When the figure case's arrays differ in shape or are not 3D.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out / "report.md", "figure": out / "report.png", "json": out / "report.json"}
    ranking = uncertainty_ranking(per_case, uncertainty_key)
    name = str(figure_case.get("name", "case"))

    png, z = _render_figure(figure_case)
    atomic_write_bytes(paths["figure"], png)
    keys = (uncertainty_key,) if isinstance(uncertainty_key, str) else tuple(uncertainty_key)
    unc = metrics_summary.get("uncertainty")
    unc_png = _render_uncertainty_figure(unc) if isinstance(unc, Mapping) else None
    if unc_png is not None:
        paths["uncertainty_figure"] = out / "report_uncertainty.png"
        atomic_write_bytes(paths["uncertainty_figure"], unc_png)
    md = _markdown(run_info, metrics_summary, per_case, ranking, name, z, keys, unc_png is not None)
    atomic_write_bytes(paths["markdown"], md.encode("utf-8"))
    payload = {
        "run_info": run_info,
        "metrics_summary": metrics_summary,
        "per_case": list(per_case),
        "uncertainty_ranking": ranking,
        "figure": {"case": name, "axial_index": z, "file": paths["figure"].name},
    }
    text = json.dumps(_jsonable(payload), indent=2, allow_nan=False) + "\n"
    atomic_write_bytes(paths["json"], text.encode("utf-8"))
    return paths
