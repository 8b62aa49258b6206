"""The plug library a search drew from (plugs.parquet): reading it and ranking its layers by sensitivity."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from analysis.load import first_line, numeric_columns
from data.errors import InputError

PLUG_COLUMNS = ("layer", "op", "solo_drop")
PLUG_NUMBERS = ("params", "flops", "local_error", "solo_score", "solo_drop", "solo_kl", "solo_disagreement")


def load_library(path: str | Path) -> pd.DataFrame:
    """One row per (layer, op) plug, in the file's order; numeric columns as float."""
    file = Path(path)
    try:
        plugs = pd.read_parquet(file)
    except Exception as err:  # pyarrow raises several unrelated types for a bad file
        raise InputError(f"{file}: cannot be read as a parquet table ({first_line(err)})") from err
    if plugs.empty:
        raise InputError(f"{file}: the table is empty; expected one row per (layer, op) plug")
    missing = [c for c in PLUG_COLUMNS if c not in plugs.columns]
    if missing:
        raise InputError(f"{file}: column {missing[0]!r} is missing; expected columns {', '.join(PLUG_COLUMNS)} "
                         "(plus params, flops, local_error, solo_score)")
    plugs = plugs.reset_index(drop=True)
    plugs["layer"] = plugs["layer"].astype(str)
    plugs["op"] = plugs["op"].astype(str)
    repeated = plugs[plugs.duplicated(["layer", "op"])]
    if not repeated.empty:
        row = repeated.iloc[0]
        raise InputError(f"{file}: plug ({row['layer']!r}, {row['op']!r}) appears twice; expected one row per "
                         "(layer, op)")
    numeric_columns(plugs, PLUG_NUMBERS, file)
    return plugs


def drop_table(plugs: pd.DataFrame) -> pd.DataFrame:
    """solo_drop as a layer x op table, layers and ops in the library's order (NaN where a plug is absent)."""
    table = plugs.pivot(index="layer", columns="op", values="solo_drop")
    return table.reindex(index=pd.unique(plugs["layer"]), columns=pd.unique(plugs["op"]))


def layer_sensitivity(plugs: pd.DataFrame) -> pd.DataFrame:
    """Per layer with a measured plug: mean solo_drop over its plugs, its worst and mildest op; most sensitive first."""
    rows = []
    for layer, group in plugs[plugs["solo_drop"].notna()].groupby("layer", sort=False):
        ranked = group.sort_values("solo_drop", kind="stable")
        rows.append({"layer": layer, "mean_drop": group["solo_drop"].mean(), "plugs": len(group),
                     "mildest_op": ranked["op"].iloc[0], "mildest_drop": ranked["solo_drop"].iloc[0],
                     "worst_op": ranked["op"].iloc[-1], "worst_drop": ranked["solo_drop"].iloc[-1]})
    columns = ["layer", "mean_drop", "plugs", "mildest_op", "mildest_drop", "worst_op", "worst_drop"]
    table = pd.DataFrame(rows, columns=columns)
    return table.sort_values("mean_drop", ascending=False, kind="stable").reset_index(drop=True)
