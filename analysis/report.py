"""Tables and the markdown report of one search (and its comparison with others)."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from analysis.load import STATUSES, Experiment
from analysis.plots import AXES, FrontLine
from analysis.policy import HP_POLICY, describe, summarize


def front_csv(exp: Experiment, front: pd.DataFrame) -> pd.DataFrame:
    """pareto.csv rows: the front's trials with figures, a policy summary and the policy as JSON."""
    policies = exp.policies[front.index]
    return pd.DataFrame({
        "trial_id": front["trial_id"],
        "status": front["status"],
        "params": front["params"].astype("Int64"),
        "flops": (front["flops"] if "flops" in front.columns else pd.Series(pd.NA, index=front.index)).astype("Int64"),
        "miou": front["miou"],
        "policy_summary": [summarize(p) for p in policies],
        "policy": [json.dumps(p, sort_keys=True) for p in policies],
    })


def display_table(exp: Experiment, front: pd.DataFrame) -> pd.DataFrame:
    """The front for people: millions of params, GFLOPs, mIoU in percent."""
    table = pd.DataFrame({"trial": front["trial_id"], "params (M)": (front["params"] / 1e6).map("{:.2f}".format)})
    if "flops" in front.columns:
        table["GFLOPs"] = (front["flops"] / 1e9).map(lambda v: "" if pd.isna(v) else f"{v:.2f}")
    table["mIoU (%)"] = (front["miou"] * 100).map("{:.2f}".format)
    table["status"] = front["status"].str.replace("_", " ")
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
    scale = AXES[x][0]
    return f"{value / scale:.2f} {'M params' if x == 'params' else 'GFLOPs'}"


def _settings(row: pd.Series) -> str:
    items = [(c[3:], row[c]) for c in row.index if c.startswith("hp.") and not c.startswith(HP_POLICY)]
    text = [f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in items if pd.notna(v)]
    return ", ".join(text) if text else "none recorded"


def best_trial(front: pd.DataFrame, x: str) -> pd.Series:
    """The front member with the highest mIoU (ties: smaller x)."""
    return front.sort_values(["miou", x], ascending=[False, True], kind="stable").iloc[0]


def comparison_statement(lines: list[FrontLine]) -> str:
    """Which search has the larger hypervolume (all against one reference point)."""
    ranked = sorted(lines, key=lambda line: line.hypervolume, reverse=True)
    if len(ranked) > 1 and ranked[0].hypervolume == ranked[1].hypervolume:
        tied = [line.name for line in ranked if line.hypervolume == ranked[0].hypervolume]
        return f"{', '.join(tied)} have equal hypervolume ({ranked[0].hypervolume:.4f})."
    word = "larger" if len(ranked) == 2 else "largest"
    others = ", ".join(f"{line.name} {line.hypervolume:.4f}" for line in ranked[1:])
    return f"{ranked[0].name} has the {word} hypervolume ({ranked[0].hypervolume:.4f} vs {others})."


def write_report(file: Path, exp: Experiment, front: pd.DataFrame, x: str, hypervolume: float, knee_id: str,
                 compare: list[FrontLine] | None = None) -> None:
    """report.md: counts, teacher, front table, hypervolume, knee, best policy, figures, comparison."""
    trials = exp.trials
    counts = trials["status"].value_counts()
    by_status = ", ".join(f"{counts[s]} {s.replace('_', ' ')}" for s in STATUSES if s in counts)
    ref_x = exp.reference_x(x)
    teacher = exp.teacher or {}
    knee = front[front["trial_id"] == knee_id].iloc[0]
    best = best_trial(front, x)
    lines = [f"# Search `{exp.name}`", ""]
    lines.append(f"- trials: {len(trials)} ({by_status})")
    if teacher:
        miou = "not measured" if teacher.get("miou") is None else f"{teacher['miou'] * 100:.2f} %"
        figures = ", ".join(_amount(teacher[k], k) for k in ("params", "flops") if teacher.get(k) is not None)
        lines.append(f"- teacher: {teacher.get('arch', 'unnamed')}, {figures}, val mIoU {miou}")
    source = "the teacher's" if teacher.get(x) is not None else "the largest trial's (no teacher figure)"
    lines.append(f"- hypervolume: **{hypervolume:.4f}**: the share of the box from 0 to {source} "
                 f"{_amount(ref_x, x)} and from 0 to 100 % mIoU that the front dominates")
    lines += ["", f"## Pareto front ({len(front)} trials, {x} down, mIoU up)", "",
              markdown_table(display_table(exp, front)), "",
              "Trials equal to a front member in both figures are front members too.", "",
              "## Knee", "",
              f"Trial `{knee_id}`: {_amount(knee[x], x)}, {knee['miou'] * 100:.2f} % mIoU, "
              f"{summarize(exp.policies[knee.name])}. It is the front point farthest above the line joining "
              "the front's two ends, with both axes scaled to 0..1.", "",
              "## Best trial", "",
              f"Trial `{best['trial_id']}`: {best['miou'] * 100:.2f} % mIoU at {_amount(best[x], x)}. "
              f"{describe(exp.policies[best.name])} Settings: {_settings(best)}.", "",
              "## Figures", "",
              "![Pareto front](pareto.png)", "", "![Validation mIoU per epoch](curves.png)", "",
              "![Layer use on the front](layers.png)", ""]
    if compare:
        table = pd.DataFrame({"search": [line.name for line in compare],
                              "front size": [len(line.x) for line in compare],
                              "hypervolume": [f"{line.hypervolume:.4f}" for line in compare]})
        common = max(line.ref_x for line in compare)
        lines += ["## Comparison", "",
                  f"All hypervolumes here are measured against one reference point: {_amount(common, x)} "
                  "(the largest of the searches' reference points) and 0 % mIoU.", "",
                  markdown_table(table), "", comparison_statement(compare), "",
                  "![Fronts compared](compare.png)", ""]
    file.write_text("\n".join(lines))
