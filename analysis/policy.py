"""Policies ({layer: op}) of the trials: parsing, one-line summaries, wording and per-layer use."""
from __future__ import annotations

import json
from collections import Counter

import pandas as pd

from data.names import KEEP

HP_POLICY = "hp.policy."


def parse_policy(value: object) -> dict[str, str]:
    """A policy from the trials table's JSON text (null means nothing plugged)."""
    if value is None or (isinstance(value, float) and value != value):
        return {}
    if isinstance(value, str):
        value = json.loads(value) if value.strip() else {}
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise ValueError(f"expected a JSON object of layer name to op name, got {value!r}")
    return dict(value)


def policies_of(trials: pd.DataFrame) -> pd.Series:
    """Each trial's policy, from the policy column or, without one, from the hp.policy.<layer> columns."""
    if "policy" in trials.columns:
        parsed = []
        for trial_id, value in zip(trials["trial_id"], trials["policy"]):
            try:
                parsed.append(parse_policy(value))
            except ValueError as err:
                raise ValueError(f"column 'policy' of trial {trial_id!r}: {err}") from err
        return pd.Series(parsed, index=trials.index, dtype=object)
    columns = [c for c in trials.columns if c.startswith(HP_POLICY)]
    rows = [{c[len(HP_POLICY):]: str(v) for c, v in zip(columns, values) if pd.notna(v)}
            for values in trials[columns].itertuples(index=False)]
    return pd.Series(rows, index=trials.index, dtype=object)


def plugged(policy: dict[str, str]) -> dict[str, str]:
    """The layers a policy replaces (every op but keep)."""
    return {layer: op for layer, op in policy.items() if op != KEEP}


def _op_counts(policy: dict[str, str]) -> list[tuple[str, int]]:
    return sorted(Counter(plugged(policy).values()).items(), key=lambda item: (-item[1], item[0]))


def summarize(policy: dict[str, str]) -> str:
    """Short form, e.g. '12 plugged: 8 dws, 4 group4'."""
    counts = _op_counts(policy)
    if not counts:
        return "nothing plugged"
    total = sum(n for _, n in counts)
    return f"{total} plugged: " + ", ".join(f"{n} {op}" for op, n in counts)


def describe(policy: dict[str, str]) -> str:
    """The policy in words: which op replaces which layers, and how many searched layers stay."""
    chosen = plugged(policy)
    kept = len(policy) - len(chosen)
    if not chosen:
        return "Plugs nothing: the student is the teacher."
    parts = []
    for op, n in _op_counts(policy):
        layers = sorted(layer for layer, o in chosen.items() if o == op)
        parts.append(f"`{op}` replaces {n} layer{'s' if n > 1 else ''} ({', '.join(f'`{l}`' for l in layers)})")
    tail = f"; {kept} searched layer{'s stay' if kept != 1 else ' stays'} as in the teacher." if kept else "."
    return f"Plugs {len(chosen)} layer{'s' if len(chosen) > 1 else ''}: " + "; ".join(parts) + tail


def layer_usage(policies: pd.Series, scores: pd.Series, front_index: pd.Index) -> pd.DataFrame:
    """Per (layer, op), for every layer that some trial plugs: share of the front using it, mean score of users.

    A layer missing from a policy counts as kept. scores holds the measured trials' metric (NaN elsewhere).
    """
    layers = sorted({layer for policy in policies for layer in plugged(policy)})
    columns = ["layer", "op", "front_share", "front_count", "trials", "mean_score"]
    if not layers:
        return pd.DataFrame(columns=columns)
    ops = pd.DataFrame([[policy.get(layer, KEEP) for layer in layers] for policy in policies],
                       index=policies.index, columns=layers)
    in_front = ops.index.isin(front_index)
    rows = []
    for layer in layers:
        for op in sorted(ops[layer].unique(), key=lambda o: (o != KEEP, o)):
            users = ops[layer] == op
            rows.append({"layer": layer, "op": op,
                         "front_share": (users & in_front).sum() / max(in_front.sum(), 1),
                         "front_count": int((users & in_front).sum()),
                         "trials": int(users.sum()),
                         "mean_score": scores[users].mean()})
    return pd.DataFrame(rows, columns=columns)
