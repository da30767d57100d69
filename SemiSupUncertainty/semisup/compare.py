"""Paired comparison of two evaluated runs on the same cases.

With one training seed and a few test cases, the difference of two mean Dice
figures says little on its own; the per-case differences do: how many cases the
candidate improves, and a Wilcoxon signed-rank test of the paired differences
(scipy). Inputs are the ``metrics.json`` files written by ``semisup evaluate``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .data import DataError

__all__ = ["PairedComparison", "compare_metrics", "load_case_scores"]

#: Metrics where a larger value is better; distances (hd95, asd) are better smaller.
HIGHER_IS_BETTER = {"dice": True, "jaccard": True, "hd95": False, "asd": False}


@dataclass(frozen=True)
class PairedComparison:
    """Candidate minus baseline over the cases both runs scored.

    Attributes
    ----------
    metric
        Per-case mean over classes of this metric (``dice``, ``jaccard``, ``hd95``, ``asd``).
    cases
        Number of paired cases.
    mean_difference, median_difference
        Of candidate - baseline (same unit as the metric).
    improved, worsened
        Cases where the candidate is better / worse (direction of the metric).
    p_value
        Two-sided Wilcoxon signed-rank test; ``None`` when every difference is zero.
    """

    metric: str
    cases: int
    baseline_mean: float
    candidate_mean: float
    mean_difference: float
    median_difference: float
    improved: int
    worsened: int
    p_value: float | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        p = "n/a" if self.p_value is None else f"{self.p_value:.3g}"
        return (f"{self.metric}: baseline {self.baseline_mean:.4f}, candidate {self.candidate_mean:.4f}, "
                f"difference {self.mean_difference:+.4f} (median {self.median_difference:+.4f}); "
                f"better on {self.improved}/{self.cases} cases, worse on {self.worsened}; Wilcoxon p = {p}")


def load_case_scores(path: str | Path, metric: str) -> dict[str, float]:
    """Per-case scores of ``metric`` from a ``metrics.json`` (or the folder holding one)."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.json"
    try:
        cases = json.loads(path.read_text())["cases"]
        return {c["case"]: float(c["mean"][metric]) for c in cases}
    except FileNotFoundError:
        raise DataError(f"{path}: not found; run `semisup evaluate` first") from None
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise DataError(f"{path}: not a metrics.json from `semisup evaluate` with per-case {metric!r} ({exc})") from None


def compare_metrics(baseline: str | Path, candidate: str | Path, metric: str = "dice") -> PairedComparison:
    """Compare ``candidate`` with ``baseline`` case by case (see the module docstring)."""
    if metric not in HIGHER_IS_BETTER:
        raise DataError(f"metric must be one of {sorted(HIGHER_IS_BETTER)}, got {metric!r}")
    a, b = load_case_scores(baseline, metric), load_case_scores(candidate, metric)
    if set(a) != set(b):
        only = sorted(set(a) ^ set(b))
        raise DataError(f"{baseline} and {candidate} scored different cases (e.g. {only[:3]}): compare runs on the same cases")
    if not a:
        raise DataError(f"{baseline}: no cases")
    names = sorted(a)
    diffs = [b[n] - a[n] for n in names]
    sign = 1.0 if HIGHER_IS_BETTER[metric] else -1.0
    ordered = sorted(diffs)
    mid = len(ordered) // 2
    median = ordered[mid] if len(ordered) % 2 else 0.5 * (ordered[mid - 1] + ordered[mid])
    p_value = None
    if any(d != 0 for d in diffs):
        from scipy.stats import wilcoxon

        p_value = float(wilcoxon(diffs).pvalue)
    return PairedComparison(
        metric=metric,
        cases=len(names),
        baseline_mean=sum(a.values()) / len(a),
        candidate_mean=sum(b.values()) / len(b),
        mean_difference=sum(diffs) / len(diffs),
        median_difference=median,
        improved=sum(sign * d > 0 for d in diffs),
        worsened=sum(sign * d < 0 for d in diffs),
        p_value=p_value,
    )
