"""How well the search's cheap predictions match what the trials measured: summed plug latencies against
measured latency, the plug library's additive metric drop against the trained student's drop."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis.front import measured
from data.names import KEEP


@dataclass(frozen=True)
class Agreement:
    """Prediction against measurement over the n rows having both."""

    n: int
    spearman: float
    """Spearman rank correlation; NaN with fewer than two rows or a constant side."""
    median_error: float
    """Median absolute error: relative to the measurement for latency, in metric units for drops."""


def spearman(a: object, b: object) -> float:
    """Spearman's rho: Pearson correlation of the average ranks (as scipy.stats.spearmanr), without scipy."""
    ra = pd.Series(np.asarray(a, dtype=float)).rank().to_numpy()
    rb = pd.Series(np.asarray(b, dtype=float)).rank().to_numpy()
    if ra.size != rb.size:
        raise ValueError(f"a and b must be of equal length, got {ra.size} and {rb.size}")
    if ra.size < 2 or ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def latency_agreement(trials: pd.DataFrame) -> Agreement | None:
    """latency_pred_ms against latency_ms over the trials with both (a positive latency); None without the columns."""
    if "latency_pred_ms" not in trials.columns or "latency_ms" not in trials.columns:
        return None
    both = trials[trials["latency_pred_ms"].notna() & (trials["latency_ms"] > 0)]
    predicted, actual = both["latency_pred_ms"].to_numpy(float), both["latency_ms"].to_numpy(float)
    error = np.abs(predicted - actual) / actual
    return Agreement(len(both), spearman(predicted, actual), float(np.median(error)) if len(both) else float("nan"))


def drop_agreement(trials: pd.DataFrame, metric: str, teacher_score: float | None) -> Agreement | None:
    """predicted_drop against teacher_score minus the trial's metric over the measured trials with a prediction.

    None without a predicted_drop column or a teacher score.
    """
    if "predicted_drop" not in trials.columns or teacher_score is None:
        return None
    pool = measured(trials, "predicted_drop", metric)
    predicted = pool["predicted_drop"].to_numpy(float)
    actual = teacher_score - pool[metric].to_numpy(float)
    error = np.abs(predicted - actual)
    return Agreement(len(pool), spearman(predicted, actual), float(np.median(error)) if len(pool) else float("nan"))


SOLO_MEASURES = ("solo_drop", "solo_kl", "solo_disagreement", "local_error")


def solo_rankings(trials: pd.DataFrame, policies: pd.Series, plugs: pd.DataFrame, metric: str,
                  teacher_score: float | None) -> dict[str, tuple[int, float]]:
    """Per measure of the plug library's table (`SOLO_MEASURES` it has): how well its sum over a trial's plugs
    ranks the measured drops, as (trials compared, Spearman's rho), over the measured trials whose every plug
    the table has. Empty without a teacher score."""
    if teacher_score is None:
        return {}
    pool = measured(trials, metric, metric)
    found = {}
    for name in (m for m in SOLO_MEASURES if m in plugs.columns):
        value = {(row.layer, row.op): float(getattr(row, name)) for row in plugs.itertuples(index=False)}
        sums, drops = [], []
        for index, score in pool[metric].items():
            keys = [(layer, op) for layer, op in policies[index].items() if op != KEEP]
            if all(key in value for key in keys):
                sums.append(sum(value[key] for key in keys))
                drops.append(teacher_score - float(score))
        found[name] = (len(sums), spearman(sums, drops))
    return found
