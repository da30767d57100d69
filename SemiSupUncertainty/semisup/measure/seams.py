"""Tile seams: how much an uncertainty map jumps at sliding-window borders.

A map stitched from windows whose MC-dropout draws differ changes level where one
window hands over to the next; the anatomy does not care where the windows are. The
statistic compares the mean absolute difference between neighbouring voxels across
the window-border planes with the same mean across all other planes: about 1 when
the map ignores the tiling, larger when it shows the tiles.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["seam_ratio"]


def seam_ratio(values: np.ndarray, borders: Sequence[Sequence[int]]) -> float:
    """Mean ``|u[b] - u[b - 1]|`` over window borders ``b`` / the same mean elsewhere.

    Parameters
    ----------
    values:
        A map ``(*spatial)`` (e.g. the entropy on the grid the windows ran on).
    borders:
        Per axis, the voxel indices where windows change (``inference.window_borders``).

    Returns
    -------
    float
        The ratio pooled over all axes; ``nan`` when there are no borders, or nothing
        varies away from them.
    """
    u = np.asarray(values, dtype=np.float64)
    if len(borders) != u.ndim:
        raise ValueError(f"borders has {len(borders)} axes but the map has {u.ndim}")
    seam_sum = seam_n = rest_sum = rest_n = 0.0
    for axis, planes in enumerate(borders):
        if u.shape[axis] < 2:
            continue
        jumps = np.abs(np.diff(u, axis=axis))  # jump k sits between voxels k and k + 1
        at = np.zeros(jumps.shape[axis], dtype=bool)
        for b in planes:
            if not 0 < int(b) < u.shape[axis]:
                raise ValueError(f"border {b} on axis {axis} is outside 1..{u.shape[axis] - 1}")
            at[int(b) - 1] = True
        per_plane = np.moveaxis(jumps, axis, 0).reshape(jumps.shape[axis], -1)
        seam_sum += per_plane[at].sum()
        seam_n += per_plane[at].size
        rest_sum += per_plane[~at].sum()
        rest_n += per_plane[~at].size
    if seam_n == 0 or rest_n == 0 or rest_sum == 0:
        return float("nan")
    return float((seam_sum / seam_n) / (rest_sum / rest_n))
