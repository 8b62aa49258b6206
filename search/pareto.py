"""Non-dominated sorting and crowding distance (NSGA-II's, Deb et al. 2002) over points to minimise; numpy only.

`points` is an (n, m) array: n points, m objectives, each minimised (negate an objective to maximise it).
Point a dominates point b when a is <= b in every objective and < in at least one.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def minimised(values: Sequence[Sequence[float]], modes: Sequence[str]) -> np.ndarray:
    """The (n, m) array of `values` with every `max` objective negated."""
    signs = np.array([1.0 if mode == "min" else -1.0 for mode in modes])
    return np.asarray(values, dtype=float).reshape(-1, len(modes)) * signs


def nondominated_ranks(points: np.ndarray) -> np.ndarray:
    """Each point's front: 0 for the non-dominated points, 1 for those only they dominate, and so on."""
    n = len(points)
    le = (points[:, None, :] <= points[None, :, :]).all(axis=2)
    lt = (points[:, None, :] < points[None, :, :]).any(axis=2)
    dominates = le & lt  # dominates[i, j]: i dominates j
    counts = dominates.sum(axis=0)  # how many points dominate each one
    ranks = np.full(n, -1)
    front, rank = np.flatnonzero(counts == 0), 0
    while front.size:
        ranks[front] = rank
        counts = counts - dominates[front].sum(axis=0)
        front = np.flatnonzero((counts == 0) & (ranks < 0))
        rank += 1
    return ranks


def crowding_distances(points: np.ndarray, ranks: np.ndarray) -> np.ndarray:
    """Per point, within its own front: the sum over objectives of the gap between its two neighbours, over the
    front's range in that objective; a front's extremes in any objective get infinity."""
    distances = np.zeros(len(points))
    for rank in np.unique(ranks):
        members = np.flatnonzero(ranks == rank)
        front = points[members]
        for column in front.T:
            order = np.argsort(column, kind="stable")
            span = column[order[-1]] - column[order[0]]
            distances[members[order[[0, -1]]]] = np.inf
            if span > 0 and len(order) > 2:
                gaps = (column[order[2:]] - column[order[:-2]]) / span
                distances[members[order[1:-1]]] += gaps
    return distances


def better_than(points: np.ndarray, index: int) -> int:
    """How many points rank strictly before `points[index]`: a lower front, or the same front and a larger crowding
    distance (ties do not count)."""
    ranks = nondominated_ranks(points)
    distances = crowding_distances(points, ranks)
    mine = ranks[index], distances[index]
    return int(((ranks < mine[0]) | ((ranks == mine[0]) & (distances > mine[1]))).sum())
