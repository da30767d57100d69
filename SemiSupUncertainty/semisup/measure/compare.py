"""Paired comparison of two evaluated runs on the same cases.

With one training seed and a few test cases, the difference of two mean Dice
figures says little on its own; the per-case differences do: how many cases the
candidate improves, and a Wilcoxon signed-rank test of the paired differences
(scipy). Inputs are the ``metrics.json`` files written by ``semisup evaluate``.
A side given several runs (e.g. training seeds) is scored per case by the mean over
its runs, so the test pairs cases, not runs.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

from ..data import DataError

__all__ = ["PairedComparison", "compare_metrics", "load_case_scores", "mean_case_scores"]


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
    baseline_runs, candidate_runs
        Runs averaged per case on each side.
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
    baseline_runs: int = 1
    candidate_runs: int = 1

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        p = "n/a" if self.p_value is None else f"{self.p_value:.3g}"
        runs = "" if self.baseline_runs == self.candidate_runs == 1 else (
            f" (per-case mean over {self.baseline_runs} baseline and {self.candidate_runs} candidate runs)")
        return (f"{self.metric}{runs}: baseline {self.baseline_mean:.4f}, candidate {self.candidate_mean:.4f}, "
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


def _paths(runs: str | Path | Sequence[str | Path]) -> list[Path]:
    return [Path(runs)] if isinstance(runs, (str, Path)) else [Path(r) for r in runs]


def _same_cases(a: dict[str, float], b: dict[str, float], name_a: Path, name_b: Path) -> None:
    if set(a) != set(b):
        only = sorted(set(a) ^ set(b))
        raise DataError(f"{name_a} and {name_b} scored different cases (e.g. {only[:3]}): compare runs on the same cases")


def mean_case_scores(runs: str | Path | Sequence[str | Path], metric: str) -> dict[str, float]:
    """Per-case mean of ``metric`` over one or more runs that scored the same cases."""
    paths = _paths(runs)
    if not paths:
        raise DataError("no metrics.json given")
    scores = [load_case_scores(p, metric) for p in paths]
    for path, s in zip(paths[1:], scores[1:]):
        _same_cases(scores[0], s, paths[0], path)
    return {case: sum(s[case] for s in scores) / len(scores) for case in scores[0]}


def compare_metrics(
    baseline: str | Path | Sequence[str | Path],
    candidate: str | Path | Sequence[str | Path],
    metric: str = "dice",
) -> PairedComparison:
    """Compare ``candidate`` with ``baseline`` case by case (see the module docstring).

    Each side is one ``metrics.json`` (or its folder) or several, averaged per case.
    """
    if metric not in HIGHER_IS_BETTER:
        raise DataError(f"metric must be one of {sorted(HIGHER_IS_BETTER)}, got {metric!r}")
    base_paths, cand_paths = _paths(baseline), _paths(candidate)
    a, b = mean_case_scores(base_paths, metric), mean_case_scores(cand_paths, metric)
    _same_cases(a, b, base_paths[0], cand_paths[0])
    if not a:
        raise DataError(f"{base_paths[0]}: no cases")
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
        baseline_runs=len(base_paths),
        candidate_runs=len(cand_paths),
    )
