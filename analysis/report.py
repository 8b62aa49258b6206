"""Tables, statements and the markdown report of one search (and its comparison with others)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from analysis.agreement import Agreement, drop_agreement, latency_agreement, solo_rankings
from analysis.library import layer_sensitivity
from analysis.load import Experiment
from analysis.plots import AXES, FrontLine
from analysis.policy import HP_POLICY, describe, summarize
from data.files import write_text_atomic
from data.names import (COMPARE_PLOT, COSTS, CURVES_PLOT, ERROR, FRONT_PLOT, LAYERS_PLOT, RUN_FILE, SENSITIVITY_PLOT, STATUSES,
                        TEACHER_FILE)


def _column(front: pd.DataFrame, name: str) -> pd.Series:
    return front[name] if name in front.columns else pd.Series(pd.NA, index=front.index, dtype="Float64")


def front_csv(exp: Experiment, front: pd.DataFrame) -> pd.DataFrame:
    """pareto.csv rows: the front's trials with costs (latency when measured), the metric, the policy."""
    policies = exp.policies[front.index]
    table = pd.DataFrame({
        "trial_id": front["trial_id"],
        "status": front["status"],
        "params": front["params"].astype("Int64"),
        "flops": _column(front, "flops").astype("Int64"),
    })
    if exp.has("latency_ms"):
        table["latency_ms"] = front["latency_ms"]
    table[exp.metric] = front[exp.metric]
    table["policy_summary"] = [summarize(p) for p in policies]
    table["policy"] = [json.dumps(p, sort_keys=True) for p in policies]
    return table


def _fixed(values: pd.Series, scale: float = 1.0) -> pd.Series:
    return (values / scale).map(lambda v: "" if pd.isna(v) else f"{v:.2f}")


def display_table(exp: Experiment, front: pd.DataFrame) -> pd.DataFrame:
    """The front for people: millions of params, GFLOPs, latency in ms when measured, the metric in percent."""
    table = pd.DataFrame({"trial": front["trial_id"], "params (M)": _fixed(front["params"], 1e6)})
    if "flops" in front.columns:
        table["GFLOPs"] = _fixed(front["flops"], 1e9)
    if exp.has("latency_ms"):
        table["latency (ms)"] = _fixed(front["latency_ms"])
    table[f"{exp.metric_label} (%)"] = _fixed(front[exp.metric] * 100)
    table["status"] = front["status"].str.replace("_", " ")
    if "proposal" in front.columns:
        table["proposal"] = front["proposal"].fillna("")
    table["policy"] = [summarize(p) for p in exp.policies[front.index]]
    return table.reset_index(drop=True)


def markdown_table(table: pd.DataFrame) -> str:
    """A pipe table; cells are written as they are (pipes escaped)."""
    def cell(value: object) -> str:
        return str(value).replace("|", "\\|")

    lines = ["| " + " | ".join(cell(c) for c in table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines)


def _amount(value: float, x: str) -> str:
    axis = AXES[x]
    return f"{value / axis.scale:.2f} {axis.unit}"


def _settings(row: pd.Series) -> str:
    items = [(c[3:], row[c]) for c in row.index if c.startswith("hp.") and not c.startswith(HP_POLICY)]
    text = [f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in items if pd.notna(v)]
    return ", ".join(text) if text else "none recorded"


def best_trial(front: pd.DataFrame, x: str, metric: str) -> pd.Series:
    """The front member with the highest metric (ties: smaller x)."""
    return front.sort_values([metric, x], ascending=[False, True], kind="stable").iloc[0]


def comparison_statement(lines: list[FrontLine]) -> str:
    """Which search has the larger hypervolume (all against one reference point)."""
    ranked = sorted(lines, key=lambda line: line.hypervolume, reverse=True)
    if len(ranked) > 1 and ranked[0].hypervolume == ranked[1].hypervolume:
        tied = [line.name for line in ranked if line.hypervolume == ranked[0].hypervolume]
        return f"{', '.join(tied)} have equal hypervolume ({ranked[0].hypervolume:.4f})."
    word = "larger" if len(ranked) == 2 else "largest"
    others = ", ".join(f"{line.name} {line.hypervolume:.4f}" for line in ranked[1:])
    return f"{ranked[0].name} has the {word} hypervolume ({ranked[0].hypervolume:.4f} vs {others})."


def error_reasons(trials: pd.DataFrame) -> pd.DataFrame:
    """The trials that ended in error, per reason (most frequent first), with up to three example ids."""
    errors = trials[trials["status"] == ERROR]
    reasons = _column(errors, "reason").astype(object).where(lambda r: r.notna(), "no reason recorded")
    rows = [{"reason": reason, "trials": len(ids), "e.g.": ", ".join(f"`{t}`" for t in ids[:3])}
            for reason, ids in errors["trial_id"].groupby(reasons, sort=False).agg(list).items()]
    table = pd.DataFrame(rows, columns=["reason", "trials", "e.g."])
    return table.sort_values(["trials", "reason"], ascending=[False, True], kind="stable").reset_index(drop=True)


def error_statement(trials: pd.DataFrame) -> str:
    """How many trials ended in error and why, in one line."""
    reasons = error_reasons(trials)
    total = int(reasons["trials"].sum())
    if not total:
        return "No trial ended in error."
    listed = "; ".join(f"{row.trials} {row.reason}" for row in reasons.itertuples(index=False))
    return f"{total} trial{'s' if total > 1 else ''} ended in error ({listed})."


def retries_statement(trials: pd.DataFrame) -> str | None:
    """Total retries over the trials (None when the table records no retries column)."""
    if "retries" not in trials.columns:
        return None
    retries = trials["retries"].fillna(0)
    return f"Retries: {int(retries.sum())} in total, over {int((retries > 0).sum())} of {len(trials)} trials."


def proposals_statement(trials: pd.DataFrame, front: pd.DataFrame) -> str | None:
    """Who proposed the trials (library, optuna, repaired) and how many of each reached the front."""
    if "proposal" not in trials.columns:
        return None
    source = trials["proposal"].fillna("not recorded")
    counts = source.value_counts(sort=False)
    on_front = source[front.index].value_counts()
    parts = [f"{n} {name} ({on_front.get(name, 0)} on the front)" for name, n in counts.sort_index().items()]
    return "proposals: " + ", ".join(parts)


def _rho(agreement: Agreement) -> str:
    if math.isnan(agreement.spearman):
        return "Spearman rank correlation undefined (fewer than two trials, or constant values)"
    return f"Spearman rank correlation {agreement.spearman:.3f}"


def latency_statement(agreement: Agreement) -> str:
    """How well the summed per-layer plug latencies predict the measured latency."""
    subject = "Predicted latency (`latency_pred_ms`, the sum of per-layer plug latencies) against measured `latency_ms`"
    if not agreement.n:
        return f"{subject}: no trial has both."
    return (f"{subject} over {agreement.n} trials: {_rho(agreement)}, median relative error "
            f"{agreement.median_error * 100:.1f} %.")


def drop_statement(agreement: Agreement, metric_label: str) -> str:
    """How well the plug library's additive prediction ranks the trained students' drops."""
    subject = (f"The library's predicted drop (`predicted_drop`, the sum of the plugs' solo drops) against the "
               f"measured drop (teacher {metric_label} minus trial {metric_label})")
    if not agreement.n:
        return f"{subject}: no measured trial has a prediction."
    return (f"{subject} over {agreement.n} measured trials: {_rho(agreement)}, median absolute error "
            f"{agreement.median_error * 100:.2f} points.")


def ranking_statement(rankings: dict[str, tuple[int, float]], metric_label: str) -> str:
    """How well each solo measure of the library, summed over a trial's plugs, ranks the measured drops."""
    shown = [f"`{name}` {rho:.2f}" for name, (n, rho) in rankings.items() if n]
    if not shown:
        return ""
    n = max(n for n, _ in rankings.values())
    return (f"Spearman's rho of each solo measure of the library, summed over a trial's plugs, against the measured "
            f"drop (teacher {metric_label} minus trial {metric_label}) over {n} measured trials: {', '.join(shown)}.")


def sensitivity_statement(plugs: pd.DataFrame) -> str:
    """The layers whose plugs cost the teacher most and least (mean solo drop over each layer's plugs)."""
    table = layer_sensitivity(plugs)
    if table.empty:
        return "No plug has a measured solo drop."
    k = max(1, min(3, len(table) // 2))
    most = [f"`{r.layer}` {r.mean_drop * 100:.2f} (worst `{r.worst_op}` {r.worst_drop * 100:.2f})"
            for r in table.head(k).itertuples(index=False)]
    least = [f"`{r.layer}` {r.mean_drop * 100:.2f} (mildest `{r.mildest_op}` {r.mildest_drop * 100:.2f})"
             for r in table.tail(k).iloc[::-1].itertuples(index=False)]
    return (f"Mean solo drop over each layer's plugs, in points, of {len(table)} layers. "
            f"Most sensitive: {', '.join(most)}. Least sensitive: {', '.join(least)}.")


def _teacher_line(exp: Experiment) -> str:
    teacher = exp.teacher or {}
    score = "not measured" if exp.teacher_score is None else f"{exp.teacher_score * 100:.2f} %"
    figures = [_amount(teacher[k], k) for k in COSTS if teacher.get(k) is not None]
    task = f" ({teacher['task']})" if teacher.get("task") else ""
    return f"- teacher: {teacher.get('arch', 'unnamed')}{task}, {', '.join(figures)}, val {exp.metric_label} {score}"


def _predictions(exp: Experiment) -> list[str]:
    """The Predictions section: latency model and the library's drop predictor, where the table has them."""
    latency = latency_agreement(exp.trials)
    drop = drop_agreement(exp.trials, exp.metric, exp.teacher_score)
    lines = [latency_statement(latency)] if latency else []
    if drop:
        lines.append(drop_statement(drop, exp.metric_label))
    elif "predicted_drop" in exp.trials.columns:
        lines.append(f"The table has `predicted_drop` but {TEACHER_FILE} records no teacher {exp.metric_label}, "
                     "so the measured drop is unknown.")
    if not lines:
        return []
    return ["## Predictions", "", *(f"- {line}" for line in lines), ""]


def _library(exp: Experiment, plugs: pd.DataFrame | None) -> list[str]:
    """The Plug library section: where it is, its size, the most and least sensitive layers, the heatmap."""
    if exp.library is None:
        return []
    lines = ["## Plug library", ""]
    if plugs is None:
        return [*lines, f"{RUN_FILE} names `{exp.library}`, which is not there (a cleared cache?); "
                        "no sensitivity figure.", ""]
    ranking = ranking_statement(solo_rankings(exp.trials, exp.policies, plugs, exp.metric, exp.teacher_score),
                                exp.metric_label)
    return [*lines, f"`{exp.library}`: {len(plugs)} plugs over {plugs['layer'].nunique()} layers, each inserted "
                    f"alone into the teacher without training.", "", sensitivity_statement(plugs), "",
            *([ranking, ""] if ranking else []),
            f"![Drop in the teacher's metric per plug]({SENSITIVITY_PLOT})", ""]


def write_report(file: Path, exp: Experiment, front: pd.DataFrame, x: str, hypervolume: float, knee_id: str,
                 compare: list[FrontLine] | None = None, plugs: pd.DataFrame | None = None) -> None:
    """report.md: counts, teacher, front, hypervolume, knee, best policy, errors, predictions, library, figures."""
    trials, metric, label = exp.trials, exp.metric, exp.metric_label
    counts = trials["status"].value_counts()
    by_status = ", ".join(f"{counts[s]} {s.replace('_', ' ')}" for s in STATUSES if s in counts)
    ref_x = exp.reference_x(x)
    teacher = exp.teacher or {}
    knee = front[front["trial_id"] == knee_id].iloc[0]
    best = best_trial(front, x, metric)
    lines = [f"# Search `{exp.name}`", "", f"- trials: {len(trials)} ({by_status})"]
    if teacher:
        lines.append(_teacher_line(exp))
    source = "the teacher's" if teacher.get(x) is not None else "the largest trial's (no teacher figure)"
    lines.append(f"- hypervolume: **{hypervolume:.4f}**: the share of the box from 0 to {source} "
                 f"{_amount(ref_x, x)} and from 0 to 100 % {label} that the front dominates")
    proposals = proposals_statement(trials, front)
    if proposals:
        lines.append(f"- {proposals}")
    lines += ["", f"## Pareto front ({len(front)} trials, {x} down, {label} up)", "",
              markdown_table(display_table(exp, front)), "",
              "Trials equal to a front member in both figures are front members too.", "",
              "## Knee", "",
              f"Trial `{knee_id}`: {_amount(knee[x], x)}, {knee[metric] * 100:.2f} % {label}, "
              f"{summarize(exp.policies[knee.name])}. It is the front point farthest above the line joining "
              "the front's two ends, with both axes scaled to 0..1.", "",
              "## Best trial", "",
              f"Trial `{best['trial_id']}`: {best[metric] * 100:.2f} % {label} at {_amount(best[x], x)}. "
              f"{describe(exp.policies[best.name])} Settings: {_settings(best)}.", "",
              "## Errors", "", error_statement(trials), ""]
    reasons = error_reasons(trials)
    if not reasons.empty:
        lines += [markdown_table(reasons), ""]
    retries = retries_statement(trials)
    if retries:
        lines += [retries, ""]
    lines += _predictions(exp)
    lines += _library(exp, plugs)
    lines += ["## Figures", "",
              f"![Pareto front]({FRONT_PLOT})", "", f"![Validation {label} per epoch]({CURVES_PLOT})", "",
              f"![Layer use on the front]({LAYERS_PLOT})", ""]
    if compare:
        table = pd.DataFrame({"search": [line.name for line in compare],
                              "front size": [len(line.x) for line in compare],
                              "hypervolume": [f"{line.hypervolume:.4f}" for line in compare]})
        common = max(line.ref_x for line in compare)
        lines += ["## Comparison", "",
                  f"All hypervolumes here are measured against one reference point: {_amount(common, x)} "
                  f"(the largest of the searches' reference points) and 0 % {label}.", "",
                  markdown_table(table), "", comparison_statement(compare), "",
                  f"![Fronts compared]({COMPARE_PLOT})", ""]
    write_text_atomic(file, "\n".join(lines))
