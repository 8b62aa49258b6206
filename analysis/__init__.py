"""Pareto fronts, hypervolume, plots and reports of a search; reads files only, imports neither torch nor ray."""
from analysis.front import MEASURED_STATUSES, hypervolume, knee_index, measured, pareto_front, pareto_mask
from analysis.load import Experiment, load_curves, load_experiment, load_reference

__all__ = [
    "MEASURED_STATUSES",
    "Experiment",
    "hypervolume",
    "knee_index",
    "load_curves",
    "load_experiment",
    "load_reference",
    "measured",
    "pareto_front",
    "pareto_mask",
]
