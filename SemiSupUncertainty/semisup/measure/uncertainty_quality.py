"""How good is an uncertainty map? Error detection, calibration and ranking scores.

Definitions follow the project's labelling-loop spec (ValUES, ICLR 2024; QU-BraTS,
MELBA 2022). Every voxel score is computed inside a *region*: the voxels where the
prediction or the reference is foreground, dilated by ``margin_mm`` (Euclidean
distance in mm with the image spacing). Outside it everything is easy background and
would inflate every score.

- ``auroc``: AUROC of the uncertainty as a detector of wrong voxels (prediction !=
  reference). 0.5 = no information, 1 = perfect. Ties count one half (Mann-Whitney).
- ``ece``: expected calibration error of the max class probability, 15 equal-width
  bins on [0, 1]: ``sum_b (n_b / n) |accuracy_b - confidence_b|``; a voxel is
  correct when the argmax of its probabilities equals the reference.
- ``ueo``: uncertainty-error overlap, ``max_t Dice(uncertainty > t, error)`` over every
  threshold (exact: each distinct uncertainty value is tried).
- ``filtered_dice_auc`` (QU-BraTS): uncertainty normalised to [0, 1] (entropy / ln C);
  for thresholds from high to low the voxels with uncertainty > t are set aside and
  foreground Dice is computed on the rest; the area under Dice vs. threshold,
  divided by the threshold span so it reads as a mean Dice.
- ``ranking_spearman`` (summary only): Spearman correlation over cases between the
  per-volume score of ``scores.csv`` and 1 - Dice.

A metric that cannot be computed (no wrong voxel, no probabilities, fewer than three
cases) is ``None`` with its reason under ``reasons``: never a made-up zero.

scikit-learn is not a dependency of the package, so AUROC and the rank correlation are
written with scipy's ``rankdata``/``spearmanr`` (the Mann-Whitney identity).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import ndimage, stats

__all__ = [
    "ECE_BINS",
    "DEFAULT_MARGIN_MM",
    "FILTERED_DICE_THRESHOLDS",
    "ERROR_CURVE_BINS",
    "MIN_CASES_FOR_RANKING",
    "evaluation_region",
    "auroc",
    "expected_calibration_error",
    "reliability_bins",
    "uncertainty_error_overlap",
    "filtered_dice_auc",
    "error_by_uncertainty",
    "case_uncertainty_quality",
    "summarize_uncertainty",
    "ranking_spearman",
]

#: Equal-width confidence bins of the ECE (Guo et al. 2017, "On calibration of modern
#: neural networks", used by the project spec).
ECE_BINS: int = 15
#: Margin around the prediction/reference foreground that the voxel scores look at.
#: Not from a paper: wide enough to hold the boundary band where segmentation errors
#: live at LA2018's 0.625 mm (8 voxels), small against the whole-volume background.
DEFAULT_MARGIN_MM: float = 5.0
#: Normalised uncertainty thresholds of QU-BraTS (uncertainty in 0..100, filtered at
#: 100, 75, 50 and 25; Mehta et al. 2022, Sec. 3.1), here on [0, 1].
FILTERED_DICE_THRESHOLDS: tuple[float, ...] = (1.0, 0.75, 0.5, 0.25)
#: Bins of normalised uncertainty for the uncertainty-vs-error figure.
ERROR_CURVE_BINS: int = 10
#: A rank correlation over fewer cases says nothing.
MIN_CASES_FOR_RANKING: int = 3


def evaluation_region(
    pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float], margin_mm: float = DEFAULT_MARGIN_MM
) -> np.ndarray:
    """Voxels within ``margin_mm`` (Euclidean, mm) of the prediction or reference foreground.

    An empty foreground (both empty) gives an empty region.
    """
    if margin_mm < 0:
        raise ValueError(f"margin_mm must be >= 0, got {margin_mm}")
    fg = (np.asarray(pred) > 0) | (np.asarray(ref) > 0)
    if not fg.any():
        return np.zeros(fg.shape, dtype=bool)
    if margin_mm == 0:
        return fg
    dist = ndimage.distance_transform_edt(~fg, sampling=[float(s) for s in spacing])
    return dist <= margin_mm


def auroc(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """Area under the ROC curve of ``scores`` detecting ``positive`` (ties count 1/2).

    ``None`` when there are no positives or no negatives (undefined).
    """
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(positive, dtype=bool).ravel()
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = stats.rankdata(s)  # average ranks for ties
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def reliability_bins(confidence: np.ndarray, correct: np.ndarray, n_bins: int = ECE_BINS) -> dict[str, list[float]]:
    """Per equal-width bin of ``confidence`` on [0, 1]: voxel count, accuracy and mean confidence.

    Bins are ``[0, 1/B), ..., [(B-1)/B, 1]`` (the last one closed). Empty bins have
    accuracy and confidence ``None``.
    """
    c = np.clip(np.asarray(confidence, dtype=np.float64).ravel(), 0.0, 1.0)
    y = np.asarray(correct, dtype=np.float64).ravel()
    idx = np.minimum((c * n_bins).astype(np.int64), n_bins - 1)
    counts = np.bincount(idx, minlength=n_bins)
    acc_sum = np.bincount(idx, weights=y, minlength=n_bins)
    conf_sum = np.bincount(idx, weights=c, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = acc_sum / counts
        conf = conf_sum / counts
    return {
        "edges": [i / n_bins for i in range(n_bins + 1)],
        "count": [int(v) for v in counts],
        "accuracy": [float(v) if n else None for v, n in zip(acc, counts)],
        "confidence": [float(v) if n else None for v, n in zip(conf, counts)],
    }


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, n_bins: int = ECE_BINS) -> float | None:
    """``sum_b (n_b / n) |accuracy_b - confidence_b|`` over equal-width bins; ``None`` for no voxel."""
    bins = reliability_bins(confidence, correct, n_bins)
    n = sum(bins["count"])
    if n == 0:
        return None
    return float(
        sum(k / n * abs(a - c) for k, a, c in zip(bins["count"], bins["accuracy"], bins["confidence"]) if k)
    )


def uncertainty_error_overlap(uncertainty: np.ndarray, error: np.ndarray) -> float | None:
    """``max_t Dice(uncertainty > t, error)`` over all thresholds; ``None`` without errors.

    Sorting once makes every threshold exact: thresholding just below each distinct
    value v keeps ``uncertainty >= v``, and cumulative sums give each Dice.
    """
    u = np.asarray(uncertainty, dtype=np.float64).ravel()
    e = np.asarray(error, dtype=bool).ravel()
    n_err = int(e.sum())
    if n_err == 0:
        return None
    order = np.argsort(-u, kind="stable")
    u_sorted, e_sorted = u[order], e[order]
    tp = np.cumsum(e_sorted)
    flagged = np.arange(1, u.size + 1)
    # Only the last position of each run of equal values is a reachable threshold.
    last_of_value = np.append(u_sorted[1:] != u_sorted[:-1], True)
    dice = 2.0 * tp[last_of_value] / (flagged[last_of_value] + n_err)
    return float(dice.max())


def _dice(pred_fg: np.ndarray, ref_fg: np.ndarray) -> float:
    denom = int(pred_fg.sum()) + int(ref_fg.sum())
    return 1.0 if denom == 0 else 2.0 * int((pred_fg & ref_fg).sum()) / denom


def filtered_dice_auc(
    norm_uncertainty: np.ndarray,
    pred: np.ndarray,
    ref: np.ndarray,
    thresholds: Sequence[float] = FILTERED_DICE_THRESHOLDS,
) -> tuple[float | None, list[float]]:
    """QU-BraTS filtered Dice: Dice of the voxels kept (uncertainty <= t) per threshold, and its AUC.

    Parameters
    ----------
    norm_uncertainty:
        Uncertainty scaled to [0, 1].
    pred, ref:
        Label maps; foreground is ``> 0`` (all foreground classes together).
    thresholds:
        From high to low.

    Returns
    -------
    (auc, dice_per_threshold)
        ``auc`` is the trapezoid area under Dice vs. threshold divided by the span of the
        thresholds (a mean Dice in [0, 1]); ``None`` for fewer than two thresholds.
    """
    u = np.asarray(norm_uncertainty, dtype=np.float64)
    p, r = np.asarray(pred) > 0, np.asarray(ref) > 0
    ts = [float(t) for t in thresholds]
    dices = []
    for t in ts:
        keep = u <= t
        dices.append(_dice(p & keep, r & keep))
    if len(ts) < 2 or max(ts) == min(ts):
        return None, dices
    order = np.argsort(ts)
    x, y = np.asarray(ts)[order], np.asarray(dices)[order]
    area = float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2.0))
    return area / float(x[-1] - x[0]), dices


def error_by_uncertainty(
    norm_uncertainty: np.ndarray, error: np.ndarray, n_bins: int = ERROR_CURVE_BINS
) -> dict[str, list[float]]:
    """Voxel count and wrong-voxel count per equal-width bin of normalised uncertainty (for the figure)."""
    u = np.clip(np.asarray(norm_uncertainty, dtype=np.float64).ravel(), 0.0, 1.0)
    e = np.asarray(error, dtype=np.float64).ravel()
    idx = np.minimum((u * n_bins).astype(np.int64), n_bins - 1)
    return {
        "edges": [i / n_bins for i in range(n_bins + 1)],
        "count": [int(v) for v in np.bincount(idx, minlength=n_bins)],
        "errors": [int(v) for v in np.bincount(idx, weights=e, minlength=n_bins)],
    }


def case_uncertainty_quality(
    pred: np.ndarray,
    ref: np.ndarray,
    uncertainty: np.ndarray | None,
    spacing: Sequence[float],
    *,
    probabilities: np.ndarray | None = None,
    uncertainty_max: float | None = None,
    margin_mm: float = DEFAULT_MARGIN_MM,
    missing: Mapping[str, str] | None = None,
    ignore_label: int | None = None,
) -> dict[str, Any]:
    """``auroc``, ``ece``, ``ueo`` and ``filtered_dice_auc`` of one case, with the region stated.

    Parameters
    ----------
    pred, ref:
        Integer label maps (x, y, z).
    uncertainty:
        Voxel uncertainty (higher = less sure) on the same grid, or ``None`` (then
        ``missing["uncertainty"]`` says why).
    spacing:
        Voxel size in mm (x, y, z), for the region margin.
    probabilities:
        Class probabilities ``(C, x, y, z)`` for the ECE, or ``None`` (then
        ``missing["probabilities"]`` says why).
    uncertainty_max:
        Largest possible uncertainty (``ln C`` for entropy in nats), used to normalise
        for ``filtered_dice_auc`` and the error curve.
    margin_mm:
        Region margin (see the module docstring).
    missing:
        Reasons for absent inputs, written into ``reasons``.
    ignore_label:
        Reference value of unlabeled voxels (sparse labels): left out of the region.
    """
    missing = dict(missing or {})
    pred, ref = np.asarray(pred), np.asarray(ref)
    if ignore_label is not None:
        known = ref != ignore_label
        region = evaluation_region(pred * known, ref * known, spacing, margin_mm) & known
    else:
        region = evaluation_region(pred, ref, spacing, margin_mm)
    n_region = int(region.sum())
    out: dict[str, Any] = {
        "region": f"prediction or reference foreground dilated by {margin_mm:g} mm",
        "region_margin_mm": float(margin_mm),
        "region_voxels": n_region,
        "auroc": None,
        "ece": None,
        "ueo": None,
        "filtered_dice_auc": None,
        "reasons": {},
    }
    reasons: dict[str, str] = out["reasons"]
    if n_region == 0:
        for key in ("auroc", "ece", "ueo", "filtered_dice_auc"):
            reasons[key] = "empty region: neither prediction nor reference has foreground"
        return out
    error = (pred != ref)[region]
    n_err = int(error.sum())
    out["error_voxels"] = n_err

    if probabilities is None:
        reasons["ece"] = missing.get("probabilities", "no class probabilities")
    else:
        probs = np.asarray(probabilities, dtype=np.float64)
        if probs.shape[1:] != pred.shape:
            raise ValueError(f"probabilities of shape {probs.shape} do not match the label map {pred.shape}")
        conf = probs.max(axis=0)[region]
        correct = probs.argmax(axis=0)[region] == ref[region]
        out["ece"] = expected_calibration_error(conf, correct)
        out["reliability"] = reliability_bins(conf, correct)

    if uncertainty is None:
        for key in ("auroc", "ueo", "filtered_dice_auc"):
            reasons[key] = missing.get("uncertainty", "no uncertainty map")
        return out
    u = np.asarray(uncertainty, dtype=np.float64)
    if u.shape != pred.shape:
        raise ValueError(f"uncertainty of shape {u.shape} does not match the label map {pred.shape}")
    u_region = u[region]
    if n_err == 0:
        reasons["auroc"] = reasons["ueo"] = "no wrong voxel in the region: error detection is undefined"
    elif n_err == n_region:
        out["ueo"] = uncertainty_error_overlap(u_region, error)
        reasons["auroc"] = "every voxel in the region is wrong: AUROC is undefined"
    else:
        out["auroc"] = auroc(u_region, error)
        out["ueo"] = uncertainty_error_overlap(u_region, error)
    if uncertainty_max is None or not uncertainty_max > 0:
        reasons["filtered_dice_auc"] = "no maximum uncertainty to normalise by"
    else:
        norm = u_region / float(uncertainty_max)
        out["filtered_dice_auc"], out["filtered_dice"] = filtered_dice_auc(norm, pred[region], ref[region])
        out["filtered_dice_thresholds"] = list(FILTERED_DICE_THRESHOLDS)
        out["error_by_uncertainty"] = error_by_uncertainty(norm, error)
    return out


def ranking_spearman(scores: Sequence[float], dice: Sequence[float]) -> tuple[float | None, str | None]:
    """Spearman correlation of per-volume scores with ``1 - Dice``; ``(None, reason)`` when undefined."""
    s = np.asarray(scores, dtype=np.float64)
    d = 1.0 - np.asarray(dice, dtype=np.float64)
    if s.size < MIN_CASES_FOR_RANKING:
        return None, f"{s.size} case(s) with a score; a rank correlation needs at least {MIN_CASES_FOR_RANKING}"
    if np.all(s == s[0]) or np.all(d == d[0]):
        return None, "the scores or the Dice values are all equal: rank correlation undefined"
    rho = stats.spearmanr(s, d).statistic
    return float(rho), None


def _pool(rows: Sequence[Mapping[str, Any]], key: str, fields: Sequence[str]) -> dict[str, Any] | None:
    present = [r[key] for r in rows if r.get(key)]
    if not present:
        return None
    pooled: dict[str, Any] = {"edges": present[0]["edges"]}
    for f in fields:
        pooled[f] = [int(sum(p[f][i] for p in present)) for i in range(len(present[0]["count"]))]
    return pooled


def summarize_uncertainty(
    case_results: Sequence[Mapping[str, Any]],
    *,
    scores: Sequence[float | None] | None = None,
    dice: Sequence[float] | None = None,
    scores_reason: str | None = None,
) -> dict[str, Any]:
    """Means over cases of each metric (cases where it is defined), ``ranking_spearman`` and pooled curves.

    Parameters
    ----------
    case_results:
        Results of :func:`case_uncertainty_quality`.
    scores, dice:
        Per case (same order): the volume score of ``scores.csv`` (``None`` when the
        case has none) and the mean foreground Dice.
    scores_reason:
        Why there are no scores at all (e.g. no ``scores.csv``).
    """
    out: dict[str, Any] = {"region": case_results[0]["region"] if case_results else None, "reasons": {}}
    for key in ("auroc", "ece", "ueo", "filtered_dice_auc"):
        vals = [r[key] for r in case_results if r.get(key) is not None]
        if vals:
            arr = np.asarray(vals, dtype=np.float64)
            out[key] = {"mean": float(arr.mean()), "std": float(arr.std(ddof=0)), "n": int(arr.size)}
        else:
            out[key] = None
            why = sorted({r["reasons"].get(key, "") for r in case_results} - {""})
            if len(why) > 2:  # one reason per case (file names differ): the first, and how many more
                why = [why[0], f"and {len(why) - 1} more case(s) likewise"]
            out["reasons"][key] = "; ".join(why) if why else "no case"
    if scores is None or dice is None:
        out["ranking_spearman"] = None
        out["reasons"]["ranking_spearman"] = scores_reason or "no per-volume scores"
    else:
        pairs = [(s, d) for s, d in zip(scores, dice) if s is not None and math.isfinite(float(s))]
        rho, why = ranking_spearman([p[0] for p in pairs], [p[1] for p in pairs])
        out["ranking_spearman"] = rho
        out["ranking_cases"] = len(pairs)
        if why:
            out["reasons"]["ranking_spearman"] = why
    reliability = _pool(case_results, "reliability", ("count",))
    if reliability is not None:
        # Pooled accuracy/confidence need the sums; recompute them from the case means.
        n_bins = len(reliability["count"])
        acc = [0.0] * n_bins
        conf = [0.0] * n_bins
        for r in case_results:
            rel = r.get("reliability")
            if not rel:
                continue
            for i, k in enumerate(rel["count"]):
                if k:
                    acc[i] += rel["accuracy"][i] * k
                    conf[i] += rel["confidence"][i] * k
        reliability["accuracy"] = [a / k if k else None for a, k in zip(acc, reliability["count"])]
        reliability["confidence"] = [c / k if k else None for c, k in zip(conf, reliability["count"])]
        out["reliability"] = reliability
    errors = _pool(case_results, "error_by_uncertainty", ("count", "errors"))
    if errors is not None:
        out["error_by_uncertainty"] = errors
    return out
