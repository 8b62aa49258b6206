"""Pareto front, hypervolume and knee for (a cost x down, the task's metric up); pure numpy and pandas.

Dominance: trial a dominates trial b when a's x <= b's x and a's metric >= b's metric with at least one
of the two strict. Trials equal in both coordinates do not dominate each other, so the front keeps all of
them (duplicates of a front point are front points too).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from data.names import MEASURED_STATUSES


def _pair(x: object, y: object) -> tuple[np.ndarray, np.ndarray]:
    """Two one-dimensional float arrays of equal length with only finite values."""
    xs = np.asarray(x, dtype=float)
    ys = np.asarray(y, dtype=float)
    if xs.ndim != 1 or xs.shape != ys.shape:
        raise ValueError(f"x and y must be 1-D and of equal length, got shapes {xs.shape} and {ys.shape}")
    if not (np.isfinite(xs).all() and np.isfinite(ys).all()):
        raise ValueError("x and y must be finite")
    return xs, ys


def pareto_mask(x: object, y: object) -> np.ndarray:
    """True for each point that no other point dominates (x down, y up); equal points are all kept."""
    xs, ys = _pair(x, y)
    if xs.size == 0:
        return np.zeros(0, dtype=bool)
    order = np.lexsort((-ys, xs))
    sx, sy = xs[order], ys[order]
    starts = np.r_[True, sx[1:] != sx[:-1]]
    group = np.cumsum(starts) - 1
    group_best = sy[starts]
    best_at_smaller_x = np.r_[-np.inf, np.maximum.accumulate(group_best)[:-1]]
    keep = (sy == group_best[group]) & (sy > best_at_smaller_x[group])
    mask = np.empty(xs.size, dtype=bool)
    mask[order] = keep
    return mask


def measured(trials: pd.DataFrame, x: str, metric: str) -> pd.DataFrame:
    """Trials that finished with a metric value (completed or stopped early) and a known x."""
    ok = trials["status"].isin(MEASURED_STATUSES) & trials[metric].notna() & trials[x].notna()
    return trials[ok]


def pareto_front(trials: pd.DataFrame, x: str, metric: str) -> pd.DataFrame:
    """The non-dominated measured trials, sorted by x, then metric, then trial_id."""
    pool = measured(trials, x, metric)
    front = pool[pareto_mask(pool[x].to_numpy(float), pool[metric].to_numpy(float))]
    return front.sort_values([x, metric, "trial_id"], kind="stable")


def hypervolume(x: object, y: object, ref_x: float, ref_y: float = 0.0) -> float:
    """Area dominated by the points inside the box [x, ref_x] x [ref_y, y]; dominated points add nothing."""
    xs, ys = _pair(x, y)
    inside = (xs < ref_x) & (ys > ref_y)
    if not inside.any():
        return 0.0
    xs, ys = xs[inside], ys[inside]
    order = np.argsort(xs, kind="stable")
    heights = np.maximum.accumulate(ys[order]) - ref_y
    widths = np.diff(np.r_[xs[order], ref_x])
    return float(np.sum(widths * heights))


def knee_index(x: object, y: object) -> int:
    """Position of the front point farthest above the chord joining the front's extremes.

    Both coordinates are scaled to 0..1 over the given points, so the chord runs from (0, 0) to (1, 1) and
    the signed distance above it is proportional to y - x; ties go to the point with the smaller x.
    """
    xs, ys = _pair(x, y)
    if xs.size == 0:
        raise ValueError("the knee of an empty front is undefined")

    def scaled(v: np.ndarray) -> np.ndarray:
        span = v.max() - v.min()
        return (v - v.min()) / span if span > 0 else np.zeros_like(v)

    gain = scaled(ys) - scaled(xs)
    order = np.lexsort((-ys, xs))
    return int(order[np.argmax(gain[order])])
