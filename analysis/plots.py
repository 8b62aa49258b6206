"""The figures: Pareto front, per-epoch curves, layer use, plug sensitivity, comparison of searches.

Drawn on an Agg canvas, no pyplot; the metric's axis is labelled with the experiment's metric_label.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.transforms import blended_transform_factory

from analysis.library import drop_table
from analysis.load import Experiment
from data.files import atomic_output
from data.names import (COMPLETED, ERROR, FLOPS, INFEASIBLE, KEEP, LATENCY_MS, PARAMS, RESULT_FILE, STATUSES, STOPPED_EARLY,
                        TRIALS_FILE)

STATUS_COLORS = {COMPLETED: "tab:blue", STOPPED_EARLY: "tab:orange", INFEASIBLE: "tab:gray", ERROR: "tab:red"}


def save(fig: Figure, file: Path) -> None:
    """Write the figure whole or not at all (data.files.atomic_output), in the format its suffix names."""
    with atomic_output(file) as handle:
        fig.savefig(handle, format=file.suffix.lstrip("."), dpi=120)


class Axis(NamedTuple):
    """How a cost column is shown: divide by scale, label the axis, name the unit in text."""

    scale: float
    label: str
    unit: str


AXES = {PARAMS: Axis(1e6, "parameters (M)", "M params"), FLOPS: Axis(1e9, "GFLOPs", "GFLOPs"),
        LATENCY_MS: Axis(1.0, "latency (ms)", "ms")}


def score_label(metric_label: str) -> str:
    """The y axis of every metric plot: 'val <metric_label> (%)'."""
    return f"val {metric_label} (%)"


@dataclass(frozen=True)
class FrontLine:
    """One search's front for the comparison plot."""

    name: str
    x: np.ndarray
    score: np.ndarray
    ref_x: float
    teacher_score: float | None
    hypervolume: float


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _steps(ax, x: np.ndarray, score: np.ndarray, ref_x: float, **style) -> None:
    """The front's attainment line: from each point flat to the next one's x, the last one out to ref_x."""
    order = np.argsort(x, kind="stable")
    xs, ys = x[order], score[order]
    ax.step(np.r_[xs, max(ref_x, xs[-1])], np.r_[ys, ys[-1]], where="post", **style)


def _teacher(ax, ref_x: float, teacher_score: float | None, label: str, color: str = "gold") -> None:
    if teacher_score is None:
        ax.axvline(ref_x, color=color, linestyle="--", linewidth=1.2, label=label)
    else:
        ax.scatter([ref_x], [teacher_score * 100], marker="*", s=320, color=color, edgecolor="black",
                   linewidth=0.8, zorder=6, label=label)


def _drawable(reference: pd.DataFrame | None, x: str) -> pd.DataFrame:
    """Reference students that have a figure on the chosen x axis."""
    if reference is None or x not in reference.columns:
        return pd.DataFrame(columns=["name", x])
    return reference[reference[x].notna()]


def plot_pareto(exp: Experiment, front: pd.DataFrame, x: str, file: Path,
                reference: pd.DataFrame | None = None, knee_id: str | None = None) -> None:
    """Every trial coloured by status, the front as a step line, the teacher as a star, reference students."""
    scale, label, _ = AXES[x]
    metric = exp.metric
    trials = exp.trials
    fig = _figure(11, 6)
    ax = fig.add_subplot()
    rug = blended_transform_factory(ax.transData, ax.transAxes)
    for status in STATUSES:
        rows = trials[(trials["status"] == status) & trials[x].notna()]
        if rows.empty:
            continue
        scored = rows[rows[metric].notna()]
        unscored = rows[rows[metric].isna()]
        color = STATUS_COLORS[status]
        if not scored.empty:
            ax.scatter(scored[x] / scale, scored[metric] * 100, s=16, color=color, alpha=0.6, linewidth=0,
                       label=f"{status.replace('_', ' ')} ({len(scored)})")
        if not unscored.empty:
            name = f"{status.replace('_', ' ')}, no {exp.metric_label}"
            ax.scatter(unscored[x] / scale, np.full(len(unscored), 0.02), s=40, marker="|", color=color,
                       transform=rug, label=f"{name} ({len(unscored)}, at the bottom)")
    ref_x = exp.reference_x(x)
    teacher = exp.teacher or {}
    fx, fy = front[x].to_numpy(float) / scale, front[metric].to_numpy(float) * 100
    _steps(ax, fx, fy, ref_x / scale, color="black", linewidth=1.4, zorder=4, label=f"Pareto front ({len(front)})")
    ax.scatter(fx, fy, s=28, facecolor="none", edgecolor="black", linewidth=1.0, zorder=5)
    if teacher.get(x) is None:
        _teacher(ax, ref_x / scale, None, "reference x (largest trial)", color="gray")
    else:
        _teacher(ax, ref_x / scale, exp.teacher_score, f"teacher ({teacher.get('arch', 'unnamed')})")
    if knee_id is not None:
        knee = front[front["trial_id"] == knee_id].iloc[0]
        ax.annotate(f"knee: {knee_id}", (knee[x] / scale, knee[metric] * 100), xytext=(-30, 24),
                    textcoords="offset points", ha="right", arrowprops={"arrowstyle": "->", "color": "black"})
    rows = _drawable(reference, x)
    if not rows.empty:
        ax.scatter(rows[x] / scale, rows[metric] * 100, marker="D", s=50, color="tab:purple", edgecolor="black",
                   zorder=6, label="reference students")
        for _, row in rows.iterrows():
            ax.annotate(row["name"], (row[x] / scale, row[metric] * 100), xytext=(6, -12),
                        textcoords="offset points", fontsize=9, color="tab:purple")
    ax.set_xlabel(label)
    ax.set_ylabel(score_label(exp.metric_label))
    ax.set_title(f"{exp.name}: {len(trials)} trials, {len(front)} on the front")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    save(fig, file)


def plot_curves(exp: Experiment, curves: pd.DataFrame, front_ids: set[str], file: Path) -> None:
    """The metric per epoch of every trial; trials ASHA stopped end in a cross; front members drawn bold."""
    fig = _figure(9, 5.5)
    ax = fig.add_subplot()
    status_of = dict(zip(exp.trials["trial_id"], exp.trials["status"]))
    handles = []
    if curves.empty:
        ax.text(0.5, 0.5, f"no per-epoch results ({RESULT_FILE}) found", ha="center", va="center", transform=ax.transAxes)
    for status in (*STATUSES, None):
        color = STATUS_COLORS.get(status, "tab:purple")
        ids = [t for t in curves["trial_id"].unique() if status_of.get(t) == status]
        if not ids:
            continue
        groups = [g for _, g in curves[curves["trial_id"].isin(ids)].groupby("trial_id", sort=False)]
        segments = [np.c_[g["epoch"], g[exp.metric] * 100] for g in groups]
        bold = [g["trial_id"].iloc[0] in front_ids for g in groups]
        ax.add_collection(LineCollection([s for s, b in zip(segments, bold) if not b], colors=color,
                                         linewidths=0.7, alpha=0.45))
        ax.add_collection(LineCollection([s for s, b in zip(segments, bold) if b], colors=color,
                                         linewidths=2.0, alpha=0.95, zorder=3))
        name = status.replace("_", " ") if status else f"not in {TRIALS_FILE}"
        handles.append(Line2D([], [], color=color, label=f"{name} ({len(ids)})"))
        if status == STOPPED_EARLY:
            ends = np.array([s[-1] for s in segments])
            ax.scatter(ends[:, 0], ends[:, 1], marker="x", s=22, color="black", linewidth=0.9, zorder=4)
            handles.append(Line2D([], [], color="black", marker="x", linestyle="none", label="stopped by ASHA here"))
    handles.append(Line2D([], [], color="gray", linewidth=1.8, label="front member (bold)"))
    if not curves.empty:
        ax.autoscale()
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.legend(handles=handles, loc="lower right", fontsize=8)
    ax.set_xlabel("epoch")
    ax.set_ylabel(score_label(exp.metric_label))
    ax.set_title(f"{exp.name}: val {exp.metric_label} per epoch")
    ax.grid(alpha=0.3)
    save(fig, file)


def _heatmap(ax, table: pd.DataFrame, cmap: str, fmt: str, title: str, vmin: float | None, vmax: float | None):
    values = np.ma.masked_invalid(table.to_numpy(float))
    image = ax.imshow(values, cmap=cmap, aspect="auto", vmin=vmin, vmax=vmax)
    ax.set_xticks(range(table.shape[1]), table.columns, rotation=30, ha="right")
    ax.set_yticks(range(table.shape[0]), table.index)
    ax.set_title(title, fontsize=10)
    if table.size <= 400:
        for (i, j), value in np.ndenumerate(table.to_numpy(float)):
            if np.isfinite(value):
                ax.text(j, i, format(value, fmt), ha="center", va="center", fontsize=7,
                        color="white" if image.norm(value) > 0.6 else "black")
    return image


def plot_layers(usage: pd.DataFrame, front_size: int, metric_label: str, file: Path) -> None:
    """For each plugged layer and op: share of the front using it, and the mean metric of the trials using it."""
    if usage.empty:
        fig = _figure(6, 2)
        fig.text(0.5, 0.5, "no trial plugs any layer", ha="center", va="center")
        save(fig, file)
        return
    share = usage.pivot(index="layer", columns="op", values="front_share")
    score = usage.pivot(index="layer", columns="op", values="mean_score") * 100
    ops = sorted(share.columns, key=lambda o: (o != KEEP, o))
    share, score = share[ops], score[ops]
    fig = _figure(max(8.0, 2.2 + 1.3 * len(ops)), max(3.0, 1.6 + 0.3 * len(share)))
    left, right = fig.subplots(1, 2, sharey=True)
    fig.colorbar(_heatmap(left, share, "Blues", ".2f", f"share of the {front_size} front members\nusing each op", 0, 1),
                 ax=left, shrink=0.8)
    title = f"mean {score_label(metric_label)} of the\nmeasured trials using each op"
    fig.colorbar(_heatmap(right, score, "viridis", ".1f", title, None, None), ax=right, shrink=0.8)
    fig.suptitle(f"plugged layers: op use on the front and mean {metric_label}")
    save(fig, file)


def plot_compare(lines: list[FrontLine], x: str, metric_label: str, file: Path) -> None:
    """The fronts of several searches (all scored by one metric) on one plot, hypervolumes in the legend."""
    scale, label, _ = AXES[x]
    fig = _figure(9, 6)
    ax = fig.add_subplot()
    colors = [f"C{i}" for i in range(10)]
    teachers: set[tuple[float, float | None]] = set()
    for i, line in enumerate(lines):
        color = colors[i % len(colors)]
        _steps(ax, line.x / scale, line.score * 100, line.ref_x / scale, color=color, linewidth=1.6,
               label=f"{line.name} (hypervolume {line.hypervolume:.4f})")
        ax.scatter(line.x / scale, line.score * 100, s=22, color=color, zorder=5)
        if line.teacher_score is not None and (line.ref_x, line.teacher_score) not in teachers:
            teachers.add((line.ref_x, line.teacher_score))
            _teacher(ax, line.ref_x / scale, line.teacher_score, f"{line.name} teacher", color=color)
    ax.set_xlabel(label)
    ax.set_ylabel(score_label(metric_label))
    ax.set_title("Pareto fronts of " + ", ".join(line.name for line in lines))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    save(fig, file)


def plot_sensitivity(plugs: pd.DataFrame, metric_label: str, file: Path) -> None:
    """The plug library as a layer x op heatmap of solo_drop: the teacher's metric lost with that one plug."""
    table = drop_table(plugs) * 100
    fig = _figure(max(6.0, 2.6 + 1.1 * table.shape[1]), max(3.0, 1.6 + 0.3 * table.shape[0]))
    ax = fig.add_subplot()
    title = f"drop in the teacher's val {metric_label} (points)\nwith only that plug inserted, no training"
    fig.colorbar(_heatmap(ax, table, "YlOrRd", ".2f", title, None, None), ax=ax, shrink=0.8)
    ax.set_xlabel("op")
    ax.set_ylabel("layer")
    fig.suptitle(f"plug library: {len(plugs)} plugs over {table.shape[0]} layers")
    save(fig, file)
