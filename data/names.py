"""Names that cross a process or a package: the files of an experiment folder and of a retrained student's
folder, the cost objectives, the trials' statuses and the op `keep`.

Imports nothing of the project's and nothing heavy, so every layer imports them from here, analysis included
(which needs neither torch nor Ray).
"""
from __future__ import annotations

# An experiment folder (runs/<name>/), written by search/run.py beside Ray Tune's own files.
SPACE_COPY = "space.yaml"  # the space file the search ran
TEACHER_FILE = "teacher.json"  # the teacher's arch, task, metric, params, FLOPs and scores
RUN_FILE = "run.json"  # how the search was started: the space's folder, the plug library
OPTUNA_FILE = "optuna.db"  # the searcher's study (SQLite)
TRIALS_FILE = "trials.parquet"  # one row per trial
LATENCY_PREFIX = "latency-"  # latency-<hash>.json: the teacher's and every plug's timings, cached
RESULT_FILE = "result.json"  # Ray Tune's per-trial results, one line per epoch
# Written into the experiment folder by `python -m analysis`.
FRONT_CSV = "pareto.csv"
FRONT_PLOT = "pareto.png"
CURVES_PLOT = "curves.png"
LAYERS_PLOT = "layers.png"
COMPARE_PLOT = "compare.png"
SENSITIVITY_PLOT = "sensitivity.png"
REPORT_FILE = "report.md"
# Written into the experiment folder by search/demo.py.
SUMMARY_FILE = "summary.json"

# A retrained student's folder (search/retrain.py).
STUDENT_FILE = "student.pt"  # rebuilds alone: trainable.surgery.load_student
STUDENT_ONNX = "student.onnx"
POLICY_FILE = "policy.json"
EVAL_FILE = "eval.json"  # the task's metrics on the val split

# A plug library's table, in its cache folder.
PLUGS_FILE = "plugs.parquet"

# The op that leaves a layer as the teacher has it.
KEEP = "keep"

# The cost objectives (trials.parquet's columns), each minimised; the task's metrics are maximised.
PARAMS, FLOPS, LATENCY_MS = "params", "flops", "latency_ms"
COSTS = (PARAMS, FLOPS, LATENCY_MS)

# A trial's status in trials.parquet.
COMPLETED, STOPPED_EARLY, INFEASIBLE, ERROR = "completed", "stopped_early", "infeasible", "error"
STATUSES = (COMPLETED, STOPPED_EARLY, INFEASIBLE, ERROR)
MEASURED_STATUSES = (COMPLETED, STOPPED_EARLY)  # the trials whose metrics were measured
