"""The names that cross a process or a package come from `data.names`, which analysis imports without torch or Ray."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

from torch import nn

from analysis.plots import AXES
from data.names import COMPLETED, COSTS, ERROR, INFEASIBLE, KEEP, MEASURED_STATUSES, STOPPED_EARLY
from trainable.ops import op_names, op_params

ROOT = Path(__file__).resolve().parents[1]


def test_analysis_command_loads_neither_torch_nor_ray():
    code = ("import sys, analysis, analysis.__main__; "
            "print(sorted({'torch', 'ray'} & {name.split('.')[0] for name in sys.modules}))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "[]"


def test_names_module_imports_nothing_of_the_project():
    code = "import sys, data.names; print(sorted(n for n in sys.modules if n.split('.')[0] in {'data', 'trainable', 'search'}))"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "['data', 'data.names']"


def test_every_cost_has_an_axis():
    assert set(AXES) == set(COSTS)


def test_keep_is_the_op_that_replaces_nothing():
    conv = nn.Conv2d(4, 6, 3)
    assert KEEP in op_names()
    assert op_params(conv, KEEP) == sum(p.numel() for p in conv.parameters())


def _trial(trial_id: str, status: str, last: dict) -> SimpleNamespace:
    """What `trials_table` reads of a Ray Tune trial."""
    return SimpleNamespace(trial_id=trial_id, status=status, last_result=last, config={"policy": {"a": KEEP}},
                           metric_analysis={"top1": {"max": last.get("top1")}}, checkpoint=None, num_failures=0,
                           get_error=lambda: None)


def test_trials_table_writes_the_statuses_and_costs_analysis_reads():
    from search.results import trials_table

    costs = {cost: 10.0 for cost in COSTS}
    trials = [_trial("done", "TERMINATED", {"epoch": 2, "epochs_total": 2, "top1": 0.5, **costs}),
              _trial("early", "TERMINATED", {"epoch": 1, "epochs_total": 2, "top1": 0.4, **costs}),
              _trial("over", "TERMINATED", {"infeasible": True}),
              _trial("broke", "ERROR", {}),
              _trial("running", "RUNNING", {})]
    table = trials_table(SimpleNamespace(trials=trials), ["top1"])
    assert table["status"].tolist() == [COMPLETED, STOPPED_EARLY, INFEASIBLE, ERROR]
    assert set(COSTS) <= set(table.columns)
    assert table["top1"].notna().tolist() == [status in MEASURED_STATUSES for status in table["status"]]
