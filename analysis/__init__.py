"""Pareto fronts, hypervolume, plots and reports of a search; reads files only, imports neither torch nor ray.

Everything is keyed by the experiment's score metric, named in its teacher.json (mIoU for older experiments).
"""
from analysis.agreement import Agreement, drop_agreement, latency_agreement, spearman
from analysis.front import hypervolume, knee_index, measured, pareto_front, pareto_mask
from analysis.library import drop_table, layer_sensitivity, load_library
from analysis.load import Experiment, load_curves, load_experiment, load_reference

__all__ = [
    "Agreement",
    "Experiment",
    "drop_agreement",
    "drop_table",
    "hypervolume",
    "knee_index",
    "latency_agreement",
    "layer_sensitivity",
    "load_curves",
    "load_experiment",
    "load_library",
    "load_reference",
    "measured",
    "pareto_front",
    "pareto_mask",
    "spearman",
]
