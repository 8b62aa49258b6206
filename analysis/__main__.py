"""python -m analysis runs/<name>: Pareto front, figures and report.md written into the experiment folder."""
from __future__ import annotations

import argparse
import contextlib
from pathlib import Path
from typing import Sequence

from analysis.agreement import drop_agreement, latency_agreement, solo_rankings
from analysis.front import hypervolume, knee_index, measured, pareto_front
from analysis.library import load_library
from analysis.load import Experiment, load_curves, load_experiment, load_reference
from analysis.plots import FrontLine, plot_compare, plot_curves, plot_layers, plot_pareto, plot_sensitivity
from analysis.policy import layer_usage
from analysis.remote import is_uri, staged
from analysis.report import (comparison_statement, display_table, drop_statement, error_statement, front_csv,
                             latency_statement, ranking_statement, retries_statement, write_report)
from data.errors import InputError, run_cli
from data.files import write_text_atomic
from data.names import (COMPARE_PLOT, COSTS, CURVES_PLOT, FRONT_CSV, FRONT_PLOT, LAYERS_PLOT, PARAMS, REPORT_FILE, RUN_FILE,
                        SENSITIVITY_PLOT, TRIALS_FILE)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m analysis", description=__doc__)
    parser.add_argument("experiment", help=f"experiment folder holding {TRIALS_FILE}, or its s3:// URI (outputs are "
                                           f"written beside {TRIALS_FILE}, in the bucket for a URI)")
    parser.add_argument("--x", choices=COSTS, default=PARAMS, help=f"cost axis of the front (default {PARAMS})")
    parser.add_argument("--reference", type=Path, metavar="FILE.csv",
                        help="reference students: columns name, params and the experiment's metric (a column "
                             "named after it, or score; fraction 0..1 or percent), optional flops, latency_ms")
    parser.add_argument("--compare", nargs="+", default=[], metavar="DIR",
                        help="other experiment folders (same metric) whose fronts and hypervolumes to compare")
    return parser


def _front_line(exp: Experiment, x: str, ref_x: float, name: str) -> FrontLine:
    front = pareto_front(exp.trials, x, exp.metric)
    hv = hypervolume(front[x], front[exp.metric], ref_x) / ref_x
    teacher_score = exp.teacher_score if (exp.teacher or {}).get(x) is not None else None
    return FrontLine(name, front[x].to_numpy(float), front[exp.metric].to_numpy(float), exp.reference_x(x),
                     teacher_score, hv)


def _compare(experiments: list[Experiment], x: str) -> list[FrontLine]:
    """Fronts and hypervolumes of several searches, all against the largest of their reference points."""
    first = experiments[0]
    for other in experiments[1:]:
        if other.metric != first.metric:
            raise InputError(f"{other.path}: scored by {other.metric!r}, {first.path} by {first.metric!r}; "
                             "expected searches scored by one metric to compare")
    names = [exp.name for exp in experiments]
    if len(set(names)) < len(names):
        names = [str(exp.path) for exp in experiments]
    ref_x = max(exp.reference_x(x) for exp in experiments)
    return [_front_line(exp, x, ref_x, name) for exp, name in zip(experiments, names)]


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    with contextlib.ExitStack() as stack:  # an s3:// experiment is analysed from a local copy (analysis.remote)
        where = args.experiment
        args.experiment = stack.enter_context(staged(args.experiment))
        args.compare = [stack.enter_context(staged(other)) for other in args.compare]
        return _analyse(args, where if is_uri(where) else str(args.experiment))


def _analyse(args: argparse.Namespace, where: str) -> int:
    x = args.x
    exp = load_experiment(args.experiment, x)
    metric = exp.metric
    reference = load_reference(args.reference, metric) if args.reference else None
    others = [load_experiment(path, x) for path in args.compare]
    lines = _compare([exp, *others], x) if others else None
    ref_x = exp.reference_x(x)
    if ref_x <= 0:
        raise InputError(f"{exp.path}: reference {x} is {ref_x:g}; expected a positive teacher {x}")
    plugs = load_library(exp.library) if exp.library is not None and exp.library.is_file() else None
    front = pareto_front(exp.trials, x, metric)
    hv = hypervolume(front[x], front[metric], ref_x) / ref_x
    knee_id = str(front["trial_id"].iloc[knee_index(front[x], front[metric])])
    written = [FRONT_CSV, FRONT_PLOT, CURVES_PLOT, LAYERS_PLOT, REPORT_FILE]
    write_text_atomic(exp.path / FRONT_CSV, front_csv(exp, front).to_csv(index=False))
    plot_pareto(exp, front, x, exp.path / FRONT_PLOT, reference, knee_id)
    plot_curves(exp, load_curves(exp.path, metric), set(front["trial_id"]), exp.path / CURVES_PLOT)
    scores = measured(exp.trials, x, metric)[metric].reindex(exp.trials.index)
    plot_layers(layer_usage(exp.policies, scores, front.index), len(front), exp.metric_label, exp.path / LAYERS_PLOT)
    if lines:
        plot_compare(lines, x, exp.metric_label, exp.path / COMPARE_PLOT)
        written.append(COMPARE_PLOT)
    if plugs is not None:
        plot_sensitivity(plugs, exp.metric_label, exp.path / SENSITIVITY_PLOT)
        written.append(SENSITIVITY_PLOT)
    write_report(exp.path / REPORT_FILE, exp, front, x, hv, knee_id, lines, plugs)
    print(display_table(exp, front).to_string(index=False))
    print(f"\n{len(front)} of {len(measured(exp.trials, x, metric))} measured trials on the front "
          f"({x} down, {exp.metric_label} up); hypervolume {hv:.4f}; knee {knee_id}")
    if lines:
        print(comparison_statement(lines))
    notes = [error_statement(exp.trials), retries_statement(exp.trials)]
    latency = latency_agreement(exp.trials)
    if latency:
        notes.append(latency_statement(latency))
    drop = drop_agreement(exp.trials, metric, exp.teacher_score)
    if drop:
        notes.append(drop_statement(drop, exp.metric_label))
    if plugs is not None:
        notes.append(ranking_statement(solo_rankings(exp.trials, exp.policies, plugs, metric, exp.teacher_score),
                                       exp.metric_label))
    if exp.library is not None and plugs is None:
        notes.append(f"plug library {exp.library} (named by {RUN_FILE}) not found; no {SENSITIVITY_PLOT}")
    print("\n".join(note for note in notes if note))
    print(f"wrote {', '.join(written)} into {where}")
    return 0


if __name__ == "__main__":
    run_cli(main)
