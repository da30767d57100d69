"""Which unlabeled volumes to label next: the strategies of the labelling loop.

- ``random``: ``k`` volumes drawn uniformly (the baseline every claim is against).
- ``uncertainty``: the ``k`` highest per-volume scores (``mean_uncertainty_foreground``
  of ``scores.csv``: mean entropy inside the predicted foreground). A volume whose
  prediction is empty has no foreground score; it is ranked first (the model found
  nothing there, the most informative label there is).
- ``diverse``: the ``CANDIDATE_FACTOR * k`` most uncertain, then farthest-first
  (greedy k-center) in a cheap per-volume feature space, measured from the labeled
  set and the volumes picked so far, so that near-duplicates of what is already
  labeled are skipped. The feature is the histogram of the normalised intensities
  (:func:`intensity_histogram`), standardised per dimension.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["STRATEGIES", "CANDIDATE_FACTOR", "HISTOGRAM_BINS", "HISTOGRAM_RANGE", "intensity_histogram", "select_next"]

STRATEGIES: tuple[str, ...] = ("random", "uncertainty", "diverse")
#: The diverse strategy looks at the top 2k uncertain volumes (the labelling-loop spec's example).
CANDIDATE_FACTOR: int = 2
#: Bins and range (in standard deviations of the z-scored MR intensities) of the feature.
HISTOGRAM_BINS: int = 16
HISTOGRAM_RANGE: tuple[float, float] = (-3.0, 3.0)


def intensity_histogram(image: np.ndarray, bins: int = HISTOGRAM_BINS, value_range=HISTOGRAM_RANGE) -> np.ndarray:
    """Normalised histogram (sums to 1) of a preprocessed image's intensities, clipped to ``value_range``."""
    values = np.clip(np.asarray(image, dtype=np.float64).ravel(), *value_range)
    hist, _ = np.histogram(values, bins=bins, range=value_range)
    total = hist.sum()
    return hist / total if total else hist.astype(np.float64)


def _uncertainty_order(pool: Sequence[str], scores: Mapping[str, Mapping[str, float]]) -> list[str]:
    def key(name: str) -> tuple[int, float]:
        s = scores[name]
        empty = int(s.get("foreground_voxels", 1) == 0)
        return (-empty, -float(s["mean_uncertainty_foreground"]))

    missing = [n for n in pool if n not in scores]
    if missing:
        raise ValueError(f"no score for pool volume(s) {missing}: was the pool predicted?")
    return sorted(pool, key=key)


def select_next(
    strategy: str,
    pool: Sequence[str],
    k: int,
    *,
    rng: np.random.Generator,
    scores: Mapping[str, Mapping[str, float]] | None = None,
    features: Mapping[str, np.ndarray] | None = None,
    labeled: Sequence[str] = (),
) -> list[str]:
    """The ``k`` volumes of ``pool`` to label next, in pick order.

    Parameters
    ----------
    strategy:
        One of :data:`STRATEGIES`.
    pool:
        Names of the unlabeled volumes that may be picked.
    k:
        How many; must not exceed ``len(pool)``.
    rng:
        For ``random`` only.
    scores:
        Per-volume scores (``predict``'s ``scores.csv`` row) by name; ``uncertainty``, ``diverse``.
    features:
        Feature vector by name, for the pool and the labeled volumes; ``diverse``.
    labeled:
        Names already labeled (``diverse`` keeps away from them).
    """
    pool = list(pool)
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; available: {', '.join(STRATEGIES)}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if k > len(pool):
        raise ValueError(f"cannot pick {k} volume(s): the pool holds only {len(pool)} ({', '.join(pool) or 'none'})")
    if strategy == "random":
        return [pool[i] for i in rng.choice(len(pool), size=k, replace=False)]
    if scores is None:
        raise ValueError(f"strategy {strategy!r} needs the pool's per-volume scores")
    ranked = _uncertainty_order(pool, scores)
    if strategy == "uncertainty":
        return ranked[:k]
    if features is None:
        raise ValueError("strategy 'diverse' needs per-volume features")
    candidates = ranked[: min(len(ranked), CANDIDATE_FACTOR * k)]
    names = list(dict.fromkeys([*labeled, *candidates]))
    missing = [n for n in names if n not in features]
    if missing:
        raise ValueError(f"no feature for volume(s) {missing}")
    x = np.stack([np.asarray(features[n], dtype=np.float64) for n in names])
    std = x.std(axis=0)
    x = (x - x.mean(axis=0)) / np.where(std > 0, std, 1.0)
    index = {n: i for i, n in enumerate(names)}
    centres = [index[n] for n in labeled if n in index]
    picked: list[str] = []
    for _ in range(k):
        left = [c for c in candidates if c not in picked]
        if not centres:  # nothing labeled yet: start from the most uncertain
            choice = left[0]
        else:
            dist = [min(float(np.linalg.norm(x[index[c]] - x[j])) for j in centres) for c in left]
            choice = left[int(np.argmax(dist))]  # ties: the more uncertain (earlier in `left`)
        picked.append(choice)
        centres.append(index[choice])
    return picked
