"""What the plug library buys a search: hypervolume per unit of compute, with the library against without it.

For each space (the demo and the classification test space) and each seed (search.seed = distill.seed =
the seed), two searches with the same number of trials, each in its own `search/run.py` process (Ray
isolated per search):

- **library**: the space with its `library` section (the demo's own; the classification space gets
  `{epochs: 2, lr: 3e-3, batch_size: 16}`); trials start from the trained plugs and the first
  `search.proposals` trials are the solver's proposals. The library is built once per space by
  `search/library.py` into a fresh cache under the output folder and its measured build seconds
  (training and scoring, as printed by the build) are charged in full to every seed's library search,
  although a later search over the same teacher would reuse the cache for free.
- **no library**: the same space without the `library` section (`distill.init: scratch`): trials from
  random plugs, Optuna from its own start-up.

Compute is counted in **trial-epochs** (a trial stopped by ASHA after 1 epoch costs 1; an over-budget
trial never trained costs 0), because a count of epochs does not move with the load of a shared machine
while seconds do (2x within minutes here). The build is converted at its measured rate: it occupies the
whole machine for `build_s` seconds, time in which the search would have run `max_concurrent` trials
side by side, so it costs `build_s * max_concurrent / s_per_epoch` trial-epochs, `s_per_epoch` being that
library search's own mean trial seconds per trial-epoch (sum of `wall_s` over sum of `epochs`, measured in
the same minutes as the build). Trials are taken in creation order (`trials.parquet` order); the library
search's curve starts at the build's cost.

The build's training rate (images per epoch times epochs over its training seconds, as `search/library.py`
prints it) is set against the teacher's forward alone over the same images on the same device (in bf16
autocast and channels_last on CUDA, as the build runs it): one teacher forward per image per epoch is the
physical floor of the build's time, so the ratio says what training every plug at once adds to it.

Hypervolume is that of `analysis` (params down, the task's score up, reference point the teacher's params
and a score of 0, divided by the teacher's params), after budgets of 1/4, 1/2, 3/4 and all of the
no-library search's total compute (mean over seeds); a search that ended before a budget keeps its final
value. "Compute to reach" is, per seed, the compute at which the library search's hypervolume first
reaches the same seed's no-library final hypervolume, over the no-library search's total compute (the
target is at most 1/3). "Infeasible or repaired" is the fraction of trials with status `infeasible` or
`proposal: repaired` (the searcher repairs over-budget proposals, so `infeasible` should be 0).

Default settings (a temporary copy of each space; `--num-samples`, `--epochs`, `--seeds`, `--spaces`
shrink them): demo 12 trials of 3 epochs (library epochs 2, the space's), ASHA as in the space;
classification 12 trials of 2 epochs, 1 at a time, no scheduler. Inputs: the spaces' own data and teacher
when they exist in the current folder, else generated once under `<out>/inputs/` (demo: the `make demo`
data and teacher, ~75 s of teacher training on a quiet machine; classification: an imagefolder of 4
shapes, 64 train, 16 val per class and 256 unlabeled images of 32x32, teacher trained 60 epochs).

    python benchmarks/search_cost.py                          # both spaces, 3 seeds (about 14 min on 2 cores)
    python benchmarks/search_cost.py --spaces demo --seeds 1 --num-samples 6 --epochs 2   # a smoke run
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from analysis.front import hypervolume, pareto_front  # noqa: E402
from data.errors import InputError, run_cli  # noqa: E402
from data.names import TEACHER_FILE, TRIALS_FILE  # noqa: E402
from search.demo import DEMOS  # noqa: E402

SPACES = {"demo": REPO / "spaces/demo.yaml", "classification": REPO / "tests/spaces/classification.yaml"}
# Per space: trials and distill.epochs of the benchmark's copy (chosen to fit 2 cores in the time the docstring says).
DEFAULTS = {"demo": {"num_samples": 12, "epochs": 3}, "classification": {"num_samples": 12, "epochs": 2}}
CLS_LIBRARY = {"epochs": 2, "lr": 3.0e-3, "batch_size": 16}
SEARCH_TIMEOUT_S = 1800
Log = Callable[[str], None]


# --- inputs and space copies ----------------------------------------------------------------------
def _run(command: Sequence[str], log_path: Path, timeout: float = SEARCH_TIMEOUT_S) -> tuple[float, str]:
    """Run a command of this repository; (wall seconds, its output). InputError with its tail when it fails."""
    started = time.monotonic()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w") as out:
        try:
            rc = subprocess.run(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            rc = 124
    text = log_path.read_text()
    if rc != 0:
        tail = "\n".join(text.splitlines()[-15:])
        raise InputError(f"{' '.join(map(str, command))}: exit {rc}; log {log_path}:\n{tail}")
    return time.monotonic() - started, text


def _set(tree: dict, dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    for key in parents:
        tree = tree.setdefault(key, {})
    if value is None:
        tree.pop(last, None)
    else:
        tree[last] = value


def write_space(source: Path, dest: Path, overrides: dict[str, Any]) -> Path:
    """A copy of `source` with dotted-key overrides (None removes the field), the Python files beside it copied too."""
    tree = yaml.safe_load(source.read_text())
    for key, value in overrides.items():
        _set(tree, key, value)
    dest.parent.mkdir(parents=True, exist_ok=True)
    for module in source.parent.glob("*.py"):  # a `module:callable` teacher is imported from the space's folder
        shutil.copy2(module, dest.parent / module.name)
    dest.write_text(yaml.safe_dump(tree, sort_keys=False))
    return dest


def prepare_inputs(key: str, work: Path, log: Log) -> dict[str, Any]:
    """Overrides pointing the space at its data and teacher: its own when present, else generated under `work`."""
    source = SPACES[key]
    tree = yaml.safe_load(source.read_text())
    root, checkpoint = REPO / tree["data"]["root"], REPO / tree["teacher"]["checkpoint"]
    if root.is_dir() and checkpoint.is_file():
        return {"data.root": str(root), "teacher.checkpoint": str(checkpoint)}
    folder = work / "inputs" / key
    root, checkpoint = folder / "data", folder / ("teacher.pt" if key == "demo" else "teacher.pth")
    overrides = {"data.root": str(root), "teacher.checkpoint": str(checkpoint)}
    if not root.is_dir():
        log(f"{key}: generating data in {root}")
        if key == "demo":  # the `make demo` data (search/demo.py)
            _run([sys.executable, "-m", "data.synthetic", "--out", str(root), *DEMOS["segmentation"].data_args],
                 folder / "data.log")
        else:
            from data.synthetic import generate_imagefolder
            generate_imagefolder(root, classes=4, train=64, val=16, unlabeled=256, size=32, seed=0)
    if key == "classification":  # the test space's teacher comes from a checkpoint: train one on the train split
        overrides.update({"data.train": "train", "teacher.train": {"epochs": 60, "lr": 3.0e-3, "batch_size": 16}})
    if not checkpoint.is_file():
        log(f"{key}: training its teacher into {checkpoint}")
        space = write_space(source, folder / "teacher_space.yaml", overrides)
        seconds, _ = _run([sys.executable, "search/teacher.py", "--space", str(space)], folder / "teacher.log")
        log(f"{key}: teacher trained in {seconds:.0f}s")
    return overrides


# --- searches and their results -------------------------------------------------------------------
@dataclass
class Search:
    """One finished search: its trials in creation order and its teacher's params and score."""

    label: str
    seed: int
    trials: pd.DataFrame
    metric: str
    teacher_params: float
    teacher_score: float
    max_concurrent: int
    wall_s: float
    offset: float = 0.0  # compute spent before the first trial (the library build), in trial-epochs
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def steps(self) -> np.ndarray:
        """Compute spent when each trial (in order) is counted as done."""
        return self.offset + np.cumsum(self.trials["epochs"].fillna(0).to_numpy(float))

    @property
    def total(self) -> float:
        return float(self.steps[-1]) if len(self.trials) else self.offset

    def hv(self, trials: pd.DataFrame | None = None) -> float:
        """Hypervolume as `python -m analysis` computes it (params down, score up, over the teacher's params)."""
        front = pareto_front(self.trials if trials is None else trials, "params", self.metric)
        return hypervolume(front["params"], front[self.metric], self.teacher_params) / self.teacher_params

    def hv_at(self, budget: float) -> float:
        return self.hv(self.trials[self.steps <= budget + 1e-9])

    def reach(self, target: float) -> float | None:
        """Least compute at which the hypervolume reaches `target`; None if it never does."""
        for index, step in enumerate(self.steps):
            if self.hv(self.trials.iloc[: index + 1]) >= target - 1e-12:
                return float(step)
        return None

    def front_size(self, trials: pd.DataFrame | None = None) -> int:
        return len(pareto_front(self.trials if trials is None else trials, "params", self.metric))

    @property
    def wasted(self) -> float:
        """Fraction of trials over the budget (infeasible) or repaired into it."""
        bad = (self.trials["status"] == "infeasible") | (self.trials["proposal"] == "repaired")
        return float(bad.mean()) if len(self.trials) else 0.0

    @property
    def s_per_epoch(self) -> float:
        epochs = float(self.trials["epochs"].fillna(0).sum())
        return float(self.trials["wall_s"].fillna(0).sum()) / epochs if epochs else float("nan")


def run_search(space: Path, storage: Path, name: str, label: str, seed: int, log: Log) -> Search:
    """`search/run.py` in its own process, then its trials.parquet and teacher.json."""
    folder = storage / name
    if folder.exists():
        shutil.rmtree(folder)
    seconds, _ = _run([sys.executable, "search/run.py", "--space", str(space), "--name", name, "--storage", str(storage)],
                      storage / f"{name}.log")
    return read_search(space, folder, label, seed, seconds, log)


def read_search(space: Path, folder: Path, label: str, seed: int, seconds: float, log: Log) -> Search:
    """A finished search's trials.parquet and teacher.json, logged in one line."""
    name = folder.name
    trials = pd.read_parquet(folder / TRIALS_FILE)
    teacher = json.loads((folder / TEACHER_FILE).read_text())
    metric = teacher["metric"]
    max_concurrent = int(yaml.safe_load(space.read_text())["search"].get("max_concurrent", 1))
    result = Search(label, seed, trials, metric, float(teacher["params"]), float(teacher[metric]), max_concurrent, seconds)
    log(f"  {name}: {len(trials)} trials, {int(trials['epochs'].sum())} trial-epochs, {seconds:.0f}s wall, "
        f"hypervolume {result.hv():.4f}, front {result.front_size()}")
    return result


def build_library(space: Path, log_path: Path) -> tuple[float, float]:
    """Seconds of the library build (training and scoring) and its training rate in images/s, as
    `search/library.py` prints them."""
    _, text = _run([sys.executable, "search/library.py", "--space", str(space)], log_path)
    seconds = re.search(r"plug library: \d+ plugs in .* \(([\d.]+)s\)", text)
    rate = re.search(r"plug library: trained .*: ([\d.]+) images/s", text)
    if seconds is None or rate is None:
        raise InputError(f"{log_path}: expected the lines 'plug library: trained ...: R images/s' and "
                         "'plug library: N plugs in ... (Ns)'")
    return float(seconds.group(1)), float(rate.group(1))


def teacher_rate(space_path: Path) -> tuple[float, str]:
    """Images/s of the teacher's forward alone over the library's images, as the build runs it (the ceiling of
    the build's rate), and the device it ran on."""
    from search.library import library_images
    from search.space import load_space
    from trainable.config import describe_device, pick_device
    from trainable.library import teacher_forward_rate

    space = load_space(space_path)
    device = pick_device()
    return teacher_forward_rate(space.teacher.build(), library_images(space), device), describe_device(device)


# --- report ---------------------------------------------------------------------------------------
def mean_sd(values: Sequence[float], digits: int = 4) -> str:
    values = [v for v in values if v is not None and not np.isnan(v)]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def markdown(head: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def bench_space(key: str, args: argparse.Namespace, log: Log) -> dict[str, Any]:
    work = args.out / "search_cost" / key
    inputs = prepare_inputs(key, args.out, log)
    defaults = DEFAULTS[key]
    num_samples = args.num_samples or defaults["num_samples"]
    epochs = args.epochs or defaults["epochs"]
    source = SPACES[key]
    library = yaml.safe_load(source.read_text()).get("library") or CLS_LIBRARY
    library = {**library, "cache": str(work / "library")}
    if args.library_epochs:
        library["epochs"] = args.library_epochs
    if (work / "library").exists():
        shutil.rmtree(work / "library")  # the build is measured: never reuse a cache
    base = {**inputs, "distill.epochs": epochs, "search.num_samples": num_samples}
    with_lib = write_space(source, work / "space_library.yaml", {**base, "library": library, "distill.init": "library"})
    log(f"{key}: building the plug library ({library['epochs']} epochs)")
    build_s, build_rate = build_library(with_lib, work / "library.log")
    floor_rate, device = teacher_rate(with_lib)
    log(f"{key}: library built in {build_s:.1f}s; its training {build_rate:.1f} images/s, the teacher's forward "
        f"alone {floor_rate:.1f} images/s on {device}")
    plain, lib = [], []
    for seed in range(args.seeds):
        seeded = {**base, "search.seed": seed, "distill.seed": seed}
        space = write_space(source, work / f"space_library_{seed}.yaml",
                            {**seeded, "library": library, "distill.init": "library"})
        run = run_search(space, work / "runs", f"library_{seed}", "library", seed, log)
        run.offset = build_s * run.max_concurrent / run.s_per_epoch
        run.extra["build_s"] = build_s
        lib.append(run)
        space = write_space(source, work / f"space_plain_{seed}.yaml",
                            {**seeded, "library": None, "distill.init": "scratch"})
        plain.append(run_search(space, work / "runs", f"plain_{seed}", "no library", seed, log))
    total = statistics.mean(run.total for run in plain)
    budgets = [total * k / 4 for k in (1, 2, 3, 4)]
    rows, records = [], []
    for runs in (lib, plain):
        curve = [[run.hv_at(b) for run in runs] for b in budgets]
        rows.append([
            key, runs[0].label, len(runs), num_samples, epochs,
            mean_sd([run.total for run in runs], 1), mean_sd([run.offset for run in runs], 1) if runs is lib else "0",
            *(mean_sd(values) for values in curve), mean_sd([run.hv() for run in runs]),
            mean_sd([run.wasted for run in runs], 2), mean_sd([run.front_size() for run in runs], 1),
        ])
        records += [{"space": key, "mode": run.label, "seed": run.seed, "trials": len(run.trials),
                     "trial_epochs": run.total, "build_trial_epochs": run.offset, "build_s": run.extra.get("build_s", 0.0),
                     "s_per_epoch": run.s_per_epoch, "wall_s": run.wall_s, "hv_at": dict(zip(budgets, [run.hv_at(b) for b in budgets])),
                     "hv": run.hv(), "wasted": run.wasted, "front": run.front_size(),
                     "teacher": {"params": run.teacher_params, run.metric: run.teacher_score}} for run in runs]
    ratios = []
    for run, base_run in zip(lib, plain):
        reached = run.reach(base_run.hv())
        ratios.append(None if reached is None else reached / base_run.total)
    return {"rows": rows, "records": records, "ratios": ratios, "build_s": build_s, "budgets": budgets,
            "build_images_per_s": build_rate, "teacher_images_per_s": floor_rate, "device": device}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/search_cost.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spaces", nargs="+", choices=tuple(SPACES), default=list(SPACES))
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (default 3)")
    parser.add_argument("--num-samples", type=int, help="trials per search (default: demo 12, classification 12)")
    parser.add_argument("--epochs", type=int, help="distill.epochs of every trial (default: demo 3, classification 2)")
    parser.add_argument("--library-epochs", type=int, help="library.epochs (default: the space's, else 2)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/plugkd-bench"))
    args = parser.parse_args(argv)
    for name in ("seeds", "num_samples", "epochs", "library_epochs"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise InputError(f"--{name.replace('_', '-')}: expected an integer >= 1, got {getattr(args, name)}")
    args.out = args.out.resolve()
    started = time.monotonic()
    log = lambda line: print(line, flush=True)  # noqa: E731
    results = {key: bench_space(key, args, log) for key in args.spaces}
    head = ["space", "search", "seeds", "trials", "epochs", "trial-epochs", "build (trial-epochs)",
            "HV @1/4", "HV @1/2", "HV @3/4", "HV @1", "HV final", "infeasible or repaired", "front points"]
    table = markdown(head, [row for result in results.values() for row in result["rows"]])
    lines = [table, ""]
    for key, result in results.items():
        shown = ", ".join("not reached" if r is None else f"{r:.2f}" for r in result["ratios"])
        reached = [r for r in result["ratios"] if r is not None]
        summary = f"median {statistics.median(reached):.2f}" if len(reached) == len(result["ratios"]) else \
            f"{len(result['ratios']) - len(reached)} of {len(result['ratios'])} seeds never reach it"
        lines.append(f"{key}: compute to reach the no-library search's final hypervolume, over the no-library "
                     f"search's compute, per seed: {shown} ({summary}; target <= 0.33). Library build {result['build_s']:.1f}s; "
                     f"budgets (trial-epochs) {', '.join(f'{b:.1f}' for b in result['budgets'])}")
        lines.append(f"{key}: library training {result['build_images_per_s']:.1f} images/s against the teacher's "
                     f"forward alone {result['teacher_images_per_s']:.1f} images/s "
                     f"({result['build_images_per_s'] / result['teacher_images_per_s']:.2f} of it) on {result['device']}")
    elapsed = time.monotonic() - started
    lines.append(f"total {elapsed:.0f}s")
    report = "\n".join(lines)
    print("\n" + report)
    folder = args.out / "search_cost"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "search_cost.md").write_text(report + "\n")
    (folder / "search_cost.json").write_text(json.dumps(
        {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "wall_s": elapsed,
         **{key: {k: v for k, v in result.items() if k != "rows"} for key, result in results.items()}}, indent=2, default=str))
    print(f"wrote {folder / 'search_cost.md'} and search_cost.json")
    return 0


if __name__ == "__main__":
    run_cli(main)
