"""Is the search worth running: every searcher with every scheduler at equal compute, on three spaces.

Spaces: the demo, the classification test space (inputs as in `benchmarks/search_cost.py`) and a real CIFAR-10
ResNet-20 (`../shared/real`: its published weights, 400 val images, 2,300 unlabeled ones; the space of its README with
per-layer choices on layer3 and one choice for layer2). Every space gets a plug library (the demo's own section, the
others `{epochs: 1 or 2, lr: 3e-3}`), built once per space before any search, so every searcher starts from the same
proposals and every trial from the library's plugs; no latency is measured (`latency.enabled: false`: the cost is
params).

For each space and seed (search.seed = distill.seed = the seed), one search per searcher (`tpe`, `nsga2`, `random`,
`library`) and scheduler (`asha` on the score, `moasha` over the objectives, `none`), with the same number of trials
and `distill.epochs`/`steps_per_epoch` (DEFAULTS). The searches run in this process, one after another, each a new
driver of one Ray cluster started once for the whole benchmark (2 CPUs, 2 trials at a time), so Ray starts once.

Equal compute: schedulers stop trials at different epochs, so each search is cut to the same number of trial-epochs,
the least total over all searches of that space (trials in creation order, a trial counted once it is done).
Hypervolume is that of `analysis` (params down, the task's score up), with the same reference point for every row of a
space: the teacher's params and a score of 0, over the teacher's params. Per row, mean ± standard deviation over the
seeds of: the hypervolume and the front points within the cut, the front points of the whole search, the cheapest and
the most accurate front point (params over the teacher's, score).

Uniform baselines: each op's uniform policy (`PolicyChoices.uniform`: the op on every choice that offers it), distilled
once by `search/retrain.py --space --policy` (from the library's plugs, the space's defaults, distill.seed 0, the
trials' epochs and steps). Per row, on how many seeds a front point within the cut dominates each baseline (params <=
and score >=, one strictly), and on how many seeds the search trained the cheapest uniform policy.

Targets, for the default searcher and scheduler (DEFAULT): hypervolume >= 1.2 x that of random sampling with the same
scheduler on every space; >= 8 front points from a 20-trial demo search (every seed); the cheapest uniform policy
trained on every seed of every space.

    python benchmarks/search_quality.py           # 3 spaces x 4 searchers x 3 schedulers x 3 seeds: 108 searches
    python benchmarks/search_quality.py --spaces classification --seeds 1 --num-samples 3 --epochs 1 \\
        --searchers tpe library --schedulers asha none                                        # a smoke run
"""
from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Sequence

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from search_cost import (  # noqa: E402
    CLS_LIBRARY, REPO, SPACES, Log, Search, markdown, mean_sd, prepare_inputs, read_search, write_space,
)

from data.errors import InputError, run_cli  # noqa: E402
from data.names import EVAL_FILE, KEEP  # noqa: E402
from search.choices import PolicyChoices, resolve_choices  # noqa: E402
from search.space import MOASHASettings  # noqa: E402
from search.space import load_space  # noqa: E402

SEARCHERS = ("tpe", "nsga2", "random", "library")
SCHEDULERS: dict[str, Any] = {
    "asha": {"asha": {"grace_period": 1, "reduction_factor": MOASHASettings().reduction_factor}},
    "moasha": {"moasha": {k: v for k, v in asdict(MOASHASettings()).items() if v is not None}},
    "none": "none",
}
DEFAULT = ("tpe", "moasha")  # the default searcher and scheduler of a space with several objectives
REAL = REPO.parent / "shared" / "real"
# Per space: trials, distill.epochs and steps_per_epoch of every search. Sized for 2 cores: 108 searches of about 8 s
# of Ray and driver start-up each, and trials of 2 short epochs (the schedulers' one rung is at epoch 1).
DEFAULTS = {"demo": {"num_samples": 20, "epochs": 2, "steps": 4},
            "classification": {"num_samples": 8, "epochs": 2, "steps": 4},
            "real": {"num_samples": 8, "epochs": 2, "steps": 4}}
HV_RATIO, FRONT_POINTS = 1.2, 8


def real_space(folder: Path) -> Path:
    """The ResNet-20 space of ../shared/real/README.md, with a budget, choices and a library (base_space sets the
    trials' length and the search's size)."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy2(REAL / "cifar_models.py", folder / "cifar_models.py")  # the `module:callable` sits beside the space
    tree = {
        "teacher": {"arch": "cifar_models:resnet20", "args": {"num_classes": 10}, "task": "classification",
                    "checkpoint": str(REAL / "resnet20.th")},
        "data": {"dataset": "imagefolder", "root": str(REAL / "cifar10"), "val": "val", "unlabeled": ["unlabeled"],
                 "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "image_size": 32,
                 "augment": {"crop": "pad", "flip": True}, "batch_size": 64},
        "policy": {"budget": {"max_param_ratio": 0.6}, "groups": [
            {"layers": ["layer2.*.conv[12]"], "ops": ["keep", "dws", "lowrank8"]},
            {"layers": ["layer3.*.conv[12]"], "ops": ["keep", "dws", "lowrank16"], "per_layer": True}]},
        "library": {"epochs": 1, "lr": 3.0e-3, "batch_size": 64},
        "distill": {"w_kd": {"loguniform": [0.01, 1], "default": 0.1}},  # the rest at its defaults
        "search": {"score": "top1"},
    }
    path = folder / "real.yaml"
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


def base_space(key: str, work: Path, args: argparse.Namespace, log: Log) -> Path:
    """The space every search of `key` starts from: its inputs, a library cached under `work`, the trials' length."""
    work.mkdir(parents=True, exist_ok=True)
    source = real_space(work / "real") if key == "real" else SPACES[key]
    inputs = {} if key == "real" else prepare_inputs(key, args.out, log)
    library = yaml.safe_load(source.read_text()).get("library") or CLS_LIBRARY
    defaults = DEFAULTS[key]
    return write_space(source, work / "base.yaml", {
        **inputs, "library": {**library, "cache": str(work / "library")}, "latency": {"enabled": False},
        "distill.init": "library",
        "distill.epochs": args.epochs or defaults["epochs"], "distill.steps_per_epoch": args.steps or defaults["steps"],
        "search.num_samples": args.num_samples or defaults["num_samples"], "search.max_concurrent": 2,
        "search.resources": {"cpu": 1, "gpu": 0},
    })


def quietly(main: Callable[[list[str]], int], argv: list[str], log_path: Path) -> int:
    """A command's main in this process, its output into `log_path`; InputError with the log's tail when it fails."""
    with log_path.open("w") as out, contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            code = main(argv)
        except InputError as err:
            print(f"error: {err}")
            code = 2
    if code != 0:
        tail = "\n".join(log_path.read_text().splitlines()[-15:])
        raise InputError(f"{' '.join(argv)}: exit {code}; log {log_path}:\n{tail}")
    return code


def run_baselines(space_file: Path, work: Path, log: Log) -> list[dict[str, Any]]:
    """Each op's uniform policy distilled once, as the searches' trials are (library plugs, defaults, seed 0)."""
    from search import retrain

    choices = resolve_choices(load_space(space_file))
    ops = dict.fromkeys(op for choice in choices.choices for op in choice.ops if op != KEEP)
    rows = []
    for op in ops:
        policy = choices.policy(choices.uniform(op))
        folder = work / "baselines"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"uniform_{op}.json").write_text(json.dumps(policy, indent=2))
        started = time.monotonic()
        quietly(retrain.main, ["--space", str(space_file), "--policy", str(folder / f"uniform_{op}.json"), "--no-onnx",
                               "--out", str(folder), "--name", f"uniform_{op}"], folder / f"uniform_{op}.log")
        result = json.loads((folder / f"uniform_{op}" / EVAL_FILE).read_text())
        rows.append({"name": f"uniform {op}", "policy": policy, "params": float(result["params"]),
                     "score": float(result[result["metric"]]), "teacher_params": float(result["teacher_params"]),
                     "within_budget": choices.feasible(policy)})
        log(f"  baseline uniform {op}: params {result['params'] / result['teacher_params']:.1%}, {result['metric']} "
            f"{result[result['metric']]:.4f} ({time.monotonic() - started:.0f}s)")
    return rows


def run_search(space_file: Path, storage: Path, name: str, address: str, seed: int, log: Log) -> Search:
    """`search/run.py` in this process as a new driver of the cluster at `address`, then its results."""
    import ray

    from search import run

    folder = storage / name
    if folder.exists():
        shutil.rmtree(folder)
    storage.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    try:
        quietly(run.main, ["--space", str(space_file), "--name", name, "--storage", str(storage), "--address", address],
                storage / f"{name}.log")
    finally:
        ray.shutdown()
    return read_search(space_file, folder, name, seed, time.monotonic() - started, log)


def dominated(front: Any, metric: str, point: dict[str, Any]) -> bool:
    """Whether some front point dominates the baseline."""
    x, y = front["params"].astype(float), front[metric].astype(float)
    return bool((((x <= point["params"]) & (y >= point["score"])) & ((x < point["params"]) | (y > point["score"]))).any())


def trained(run: Search, policy: dict[str, str]) -> bool:
    return any(json.loads(text) == policy for text in run.trials["policy"])


def summarize(key: str, runs: dict[tuple[str, str], list[Search]], points: list[dict], cheapest: dict[str, str],
              budget: float) -> tuple[list[list[Any]], list[dict]]:
    """One table row per (searcher, scheduler) and one record per search."""
    from analysis.front import pareto_front

    rows, records = [], []
    for (searcher, scheduler), group in runs.items():
        stats = []
        for run in group:
            cut = run.trials[run.steps <= budget + 1e-9]
            front = pareto_front(cut, "params", run.metric)
            ratio = front["params"].astype(float) / run.teacher_params
            score = front[run.metric].astype(float)
            stats.append({
                "space": key, "searcher": searcher, "scheduler": scheduler, "seed": run.seed, "trials_in_cut": len(cut),
                "hv": run.hv(cut), "front": len(front), "front_all": run.front_size(), "wall_s": run.wall_s,
                "cheapest": (float(ratio.min()), float(score[ratio.idxmin()])) if len(front) else None,
                "most_accurate": (float(ratio[score.idxmax()]), float(score.max())) if len(front) else None,
                "dominates": {p["name"]: dominated(front, run.metric, p) for p in points},
                "cheapest_uniform_trained": trained(run, cheapest),
            })
        n = len(stats)
        pick = lambda name, i: [s[name][i] for s in stats if s[name] is not None]  # noqa: E731
        rows.append([
            searcher, scheduler, n, mean_sd([s["trials_in_cut"] for s in stats], 1), mean_sd([s["hv"] for s in stats]),
            mean_sd([s["front"] for s in stats], 1), mean_sd([s["front_all"] for s in stats], 1),
            f"{mean_sd(pick('cheapest', 0), 3)} / {mean_sd(pick('cheapest', 1), 3)}",
            f"{mean_sd(pick('most_accurate', 0), 3)} / {mean_sd(pick('most_accurate', 1), 3)}",
            f"{sum(s['cheapest_uniform_trained'] for s in stats)}/{n}",
            *(f"{sum(s['dominates'][p['name']] for s in stats)}/{n}" for p in points),
        ])
        records += stats
    return rows, records


def targets(key: str, records: list[dict]) -> list[str]:
    """Each target for the default searcher and scheduler on this space: met or not, with the figures."""
    mine = [r for r in records if (r["searcher"], r["scheduler"]) == DEFAULT]
    random = [r for r in records if (r["searcher"], r["scheduler"]) == ("random", DEFAULT[1])]
    lines = []
    if mine and random:
        hv, base = (sum(r["hv"] for r in rs) / len(rs) for rs in (mine, random))
        ratio = hv / base if base > 0 else float("inf")
        lines.append(f"{key}: hypervolume of {'/'.join(DEFAULT)} {hv:.4f} vs random/{DEFAULT[1]} {base:.4f}: "
                     f"{ratio:.2f}x (target >= {HV_RATIO}): {'met' if ratio >= HV_RATIO else 'NOT met'}")
    if mine and key == "demo":
        least = min(r["front_all"] for r in mine)
        lines.append(f"{key}: front points of {'/'.join(DEFAULT)} searches, fewest over seeds: {least} "
                     f"(target >= {FRONT_POINTS}): {'met' if least >= FRONT_POINTS else 'NOT met'}")
    if mine:
        done = sum(r["cheapest_uniform_trained"] for r in mine)
        lines.append(f"{key}: cheapest uniform policy trained by {'/'.join(DEFAULT)} on {done}/{len(mine)} seeds: "
                     f"{'met' if done == len(mine) else 'NOT met'}")
    return lines


def bench_space(key: str, args: argparse.Namespace, address: str, log: Log) -> dict[str, Any]:
    work = args.out / "search_quality" / key
    space_file = base_space(key, work, args, log)
    from search import library

    log(f"{key}: building the plug library")
    quietly(library.main, ["--space", str(space_file)], work / "library.log")
    choices: PolicyChoices = resolve_choices(load_space(space_file))
    cheapest = choices.cheapest_uniform()
    cheapest = choices.policy(cheapest) if cheapest is not None else {}
    points = run_baselines(space_file, work, log)
    runs: dict[tuple[str, str], list[Search]] = {}
    failed = []
    for seed in range(args.seeds):
        for searcher in args.searchers:
            for scheduler in args.schedulers:
                name = f"{searcher}_{scheduler}_{seed}"
                space = write_space(space_file, work / "spaces" / f"{name}.yaml", {
                    "search.searcher": searcher, "search.scheduler": SCHEDULERS[scheduler], "search.seed": seed,
                    "distill.seed": seed})
                try:
                    runs.setdefault((searcher, scheduler), []).append(
                        run_search(space, work / "runs", name, address, seed, log))
                except InputError as err:  # one failed search is reported, the others still compared
                    log(f"  {name} FAILED: {str(err).splitlines()[0]}")
                    failed.append(name)
    runs = {pair: group for pair, group in runs.items() if group}
    if not runs:
        raise InputError(f"{key}: every search failed: {', '.join(failed)}")
    budget = min(run.total for group in runs.values() for run in group)
    log(f"{key}: every search cut to {budget:.0f} trial-epochs")
    rows, records = summarize(key, runs, points, cheapest, budget)
    first = next(run for group in runs.values() for run in group)
    return {"rows": rows, "records": records, "baselines": points, "budget": budget, "failed": failed,
            "metric": first.metric, "teacher": {"params": first.teacher_params, "score": first.teacher_score},
            "targets": targets(key, records)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/search_quality.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    spaces = (*SPACES, "real")
    parser.add_argument("--spaces", nargs="+", choices=spaces, default=list(spaces))
    parser.add_argument("--searchers", nargs="+", choices=SEARCHERS, default=list(SEARCHERS))
    parser.add_argument("--schedulers", nargs="+", choices=tuple(SCHEDULERS), default=list(SCHEDULERS))
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (default 3)")
    parser.add_argument("--num-samples", type=int, help="trials per search (default: demo 20, the others 8)")
    parser.add_argument("--epochs", type=int, help="distill.epochs of trials and baselines (default 2)")
    parser.add_argument("--steps", type=int, help="distill.steps_per_epoch (default 4)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/plugkd-bench"))
    args = parser.parse_args(argv)
    for name in ("seeds", "num_samples", "epochs", "steps"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise InputError(f"--{name.replace('_', '-')}: expected an integer >= 1, got {getattr(args, name)}")
    args.out = args.out.resolve()
    started = time.monotonic()
    log = lambda line: print(line, flush=True)  # noqa: E731
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    try:
        results = {key: bench_space(key, args, cluster.address, log) for key in args.spaces}
    finally:
        cluster.shutdown()
    lines = []
    for key, result in results.items():
        points = result["baselines"]
        head = ["searcher", "scheduler", "seeds", "trials in cut", "hypervolume", "front points (cut)",
                "front points (all)", "cheapest: params / score", "most accurate: params / score",
                "cheapest uniform trained", *(f"dominates {p['name']}" for p in points)]
        teacher = result["teacher"]
        lines += [f"### {key}: teacher {teacher['params'] / 1e6:.3f}M params, {result['metric']} {teacher['score']:.4f}; "
                  f"every search cut to {result['budget']:.0f} trial-epochs", "",
                  markdown(head, result["rows"]), "",
                  markdown(["baseline", "params (of teacher)", result["metric"], "within budget"],
                           [[p["name"], f"{p['params'] / p['teacher_params']:.1%}", f"{p['score']:.4f}",
                             "yes" if p["within_budget"] else "no"] for p in points]), "",
                  *result["targets"],
                  *([f"{key}: failed searches: {', '.join(result['failed'])}"] if result["failed"] else []), ""]
    elapsed = time.monotonic() - started
    lines.append(f"total {elapsed:.0f}s")
    report = "\n".join(lines)
    print("\n" + report)
    folder = args.out / "search_quality"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "search_quality.md").write_text(report + "\n")
    (folder / "search_quality.json").write_text(json.dumps(
        {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "wall_s": elapsed,
         **{key: {k: v for k, v in result.items() if k != "rows"} for key, result in results.items()}}, indent=2,
        default=str))
    print(f"wrote {folder / 'search_quality.md'} and search_quality.json")
    return 0


if __name__ == "__main__":
    run_cli(main)
