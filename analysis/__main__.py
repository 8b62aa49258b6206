"""python -m analysis runs/<name>: Pareto front, figures and report.md written into the experiment folder."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from analysis.front import X_AXES, hypervolume, knee_index, measured, pareto_front
from analysis.load import Experiment, load_curves, load_experiment, load_reference
from analysis.plots import FrontLine, plot_compare, plot_curves, plot_layers, plot_pareto
from analysis.policy import layer_usage
from analysis.report import comparison_statement, display_table, front_csv, write_report
from data.errors import InputError, run_cli


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m analysis", description=__doc__)
    parser.add_argument("experiment", type=Path, help="experiment folder holding trials.parquet")
    parser.add_argument("--x", choices=X_AXES, default="params", help="cost axis of the front (default params)")
    parser.add_argument("--reference", type=Path, metavar="FILE.csv",
                        help="reference students: columns name, params, miou (fraction 0..1, or percent), "
                             "optional flops")
    parser.add_argument("--compare", type=Path, nargs="+", default=[], metavar="DIR",
                        help="other experiment folders whose fronts and hypervolumes to compare")
    return parser


def _front_line(exp: Experiment, x: str, ref_x: float, name: str) -> FrontLine:
    front = pareto_front(exp.trials, x)
    hv = hypervolume(front[x], front["miou"], ref_x) / ref_x
    teacher = exp.teacher or {}
    teacher_miou = teacher.get("miou") if teacher.get(x) is not None else None
    return FrontLine(name, front[x].to_numpy(float), front["miou"].to_numpy(float), exp.reference_x(x),
                     teacher_miou, hv)


def _compare(experiments: list[Experiment], x: str) -> list[FrontLine]:
    """Fronts and hypervolumes of several searches, all against the largest of their reference points."""
    names = [exp.name for exp in experiments]
    if len(set(names)) < len(names):
        names = [str(exp.path) for exp in experiments]
    ref_x = max(exp.reference_x(x) for exp in experiments)
    return [_front_line(exp, x, ref_x, name) for exp, name in zip(experiments, names)]


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    x = args.x
    exp = load_experiment(args.experiment, x)
    reference = load_reference(args.reference) if args.reference else None
    others = [load_experiment(path, x) for path in args.compare]
    ref_x = exp.reference_x(x)
    if ref_x <= 0:
        raise InputError(f"{exp.path}: reference {x} is {ref_x:g}; expected a positive teacher {x}")
    front = pareto_front(exp.trials, x)
    hv = hypervolume(front[x], front["miou"], ref_x) / ref_x
    knee_id = str(front["trial_id"].iloc[knee_index(front[x], front["miou"])])
    front_csv(exp, front).to_csv(exp.path / "pareto.csv", index=False)
    plot_pareto(exp, front, x, exp.path / "pareto.png", reference, knee_id)
    plot_curves(exp, load_curves(exp.path), set(front["trial_id"]), exp.path / "curves.png")
    miou = measured(exp.trials, x)["miou"].reindex(exp.trials.index)
    plot_layers(layer_usage(exp.policies, miou, front.index), len(front), exp.path / "layers.png")
    lines = None
    if others:
        lines = _compare([exp, *others], x)
        plot_compare(lines, x, exp.path / "compare.png")
    write_report(exp.path / "report.md", exp, front, x, hv, knee_id, lines)
    print(display_table(exp, front).to_string(index=False))
    print(f"\n{len(front)} of {len(measured(exp.trials, x))} measured trials on the front; "
          f"hypervolume {hv:.4f}; knee {knee_id}")
    if lines:
        print(comparison_statement(lines))
    written = ["pareto.csv", "pareto.png", "curves.png", "layers.png", "report.md"] + (["compare.png"] if lines else [])
    print(f"wrote {', '.join(written)} into {exp.path}")
    return 0


if __name__ == "__main__":
    run_cli(main)
