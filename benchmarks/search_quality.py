"""Is the search worth running: TPE, NSGA-II and random sampling against fixed policies, at equal compute.

For each space (the demo and, when present, the classification test space) and each seed (search.seed =
distill.seed = the seed), one search per searcher (`search.searcher`: tpe, nsga2, random) in its own
`search/run.py` process, on a temporary copy of the space without its `library` section
(`distill.init: scratch`), so every student starts from random plugs like the baselines below and the
searchers are compared by themselves (the library's solver would propose the same first trials to all
three; `benchmarks/search_cost.py` measures the library).

Equal compute: every search gets the same number of trials; ASHA stops trials at different epochs, so each
search is then cut to the same number of **trial-epochs**, the least total over all searches of that space
(trials in creation order, a trial counted once it is done). Hypervolume is that of `analysis` (params
down, the task's score up, reference the teacher's params and a score of 0, divided by the teacher's
params); mean ± standard deviation over the seeds, and the front size at the cut.

Fixed baselines, each distilled once (`distill.seed` 0) with the space's defaults (a searched setting
without a default takes `DistillSettings`' default) by `search/retrain.py --space S --policy FILE --epochs E
--no-onnx`, E = the trials' `distill.epochs`: `dws` on every layer that offers it, `group4` likewise,
the space's low-rank op likewise (demo `lowrank32`, classification `lowrank8`), and the hand-picked
last-stages policy (demo: `dws` on mod6 and mod7; classification, whose only searched stage is layer3:
`dws` on its last conv, `layer3.0.conv2`). A baseline over the space's parameter budget is reported as
such (the search may not propose it). For each baseline and searcher: on how many seeds some front point
dominates it (params <= and score >=, one strictly).

Default settings (`--num-samples`, `--epochs`, `--seeds`, `--spaces`, `--searchers` shrink them): demo 12
trials of 3 epochs, classification 12 trials of 2 epochs; inputs as in `benchmarks/search_cost.py`.

    python benchmarks/search_quality.py                        # both spaces, 3 seeds (about 22 min on 2 cores)
    python benchmarks/search_quality.py --spaces demo --seeds 1 --num-samples 6 --epochs 2   # a smoke run
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))

from search_cost import SPACES, Log, Search, _run, markdown, mean_sd, prepare_inputs, run_search, write_space

from data.errors import InputError, run_cli
from search.choices import PolicyChoices, resolve_choices
from search.space import load_space
from trainable.config import DistillSettings

SEARCHERS = ("tpe", "nsga2", "random")
DEFAULTS = {"demo": {"num_samples": 12, "epochs": 3}, "classification": {"num_samples": 12, "epochs": 2}}
# The hand-picked policy per space: dws on the layers starting with these prefixes.
LAST_STAGES = {"demo": ("mod6.", "mod7."), "classification": ("layer3.0.conv2",)}


def uniform(choices: PolicyChoices, wanted: str) -> dict[str, str]:
    """Per layer, the first op it offers whose name starts with `wanted` (layers offering none keep)."""
    policy = {}
    for choice in choices.choices:
        op = next((op for op in choice.ops if op.startswith(wanted)), None)
        if op is not None:
            policy.update({layer: op for layer in choice.layers})
    return policy


def baselines(key: str, choices: PolicyChoices) -> dict[str, dict[str, str]]:
    dws = uniform(choices, "dws")
    found = {"uniform dws": dws, "uniform group4": uniform(choices, "group4"),
             "uniform lowrank": uniform(choices, "lowrank"),
             "last stages dws": {layer: op for layer, op in dws.items() if layer.startswith(LAST_STAGES[key])}}
    return {name: policy for name, policy in found.items() if policy}


def defaults_missing(space_file: Path) -> list[str]:
    """`--set` arguments for the searched settings without a default: DistillSettings' own default."""
    space = load_space(space_file)
    fallback = DistillSettings()
    return [f"{name}={getattr(fallback, name)}" for name, dist in space.searched.items()
            if dist.default is None and hasattr(fallback, name)]


def run_baselines(key: str, space_file: Path, epochs: int, work: Path, log: Log) -> list[dict[str, Any]]:
    choices = resolve_choices(load_space(space_file))
    sets = [part for value in defaults_missing(space_file) for part in ("--set", value)]
    rows = []
    for name, policy in baselines(key, choices).items():
        slug = name.replace(" ", "_")
        policy_file = work / "baselines" / f"{slug}.json"
        policy_file.parent.mkdir(parents=True, exist_ok=True)
        policy_file.write_text(json.dumps(policy, indent=2))
        seconds, _ = _run([sys.executable, "search/retrain.py", "--space", str(space_file), "--policy", str(policy_file),
                           "--epochs", str(epochs), "--no-onnx", "--out", str(work / "baselines"), "--name", slug, *sets],
                          work / "baselines" / f"{slug}.log")
        result = json.loads((work / "baselines" / slug / "eval.json").read_text())
        metric = result["metric"]
        within = choices.max_params is None or choices.params(policy) <= choices.max_params
        rows.append({"name": name, "params": float(result["params"]), "score": float(result[metric]),
                     "teacher_params": float(result["teacher_params"]), "within_budget": within, "seconds": seconds,
                     "layers": len(policy)})
        log(f"  baseline {name}: {len(policy)} layers, params {result['params'] / result['teacher_params']:.1%}, "
            f"{metric} {result[metric]:.4f} ({seconds:.0f}s)")
    return rows


def dominated(run: Search, cut: Any, point: dict[str, Any]) -> bool:
    """Whether some point of the run's front (within the cut) dominates the baseline."""
    front = run.trials[cut]
    front = front[front["status"].isin(("completed", "stopped_early")) & front[run.metric].notna()]
    x, y = front["params"].astype(float), front[run.metric].astype(float)
    return bool((((x <= point["params"]) & (y >= point["score"])) & ((x < point["params"]) | (y > point["score"]))).any())


def bench_space(key: str, args: argparse.Namespace, log: Log) -> dict[str, Any]:
    work = args.out / "search_quality" / key
    inputs = prepare_inputs(key, args.out, log)
    defaults = DEFAULTS[key]
    num_samples = args.num_samples or defaults["num_samples"]
    epochs = args.epochs or defaults["epochs"]
    base = {**inputs, "library": None, "distill.init": "scratch", "distill.epochs": epochs,
            "search.num_samples": num_samples}
    reference = write_space(SPACES[key], work / "space_baselines.yaml", {**base, "distill.seed": 0})
    points = run_baselines(key, reference, epochs, work, log)
    runs: dict[str, list[Search]] = {name: [] for name in args.searchers}
    failed: list[str] = []
    for seed in range(args.seeds):
        for searcher in args.searchers:
            space = write_space(SPACES[key], work / f"space_{searcher}_{seed}.yaml",
                                {**base, "search.searcher": searcher, "search.seed": seed, "distill.seed": seed})
            try:
                runs[searcher].append(run_search(space, work / "runs", f"{searcher}_{seed}", searcher, seed, log))
            except InputError as err:  # one failed search is reported, the others still compared
                log(f"  {searcher}_{seed} FAILED: {str(err).splitlines()[0]}")
                failed.append(f"{searcher} seed {seed}")
    if not any(runs.values()):
        raise InputError(f"{key}: every search failed: {', '.join(failed)}")
    budget = min(run.total for group in runs.values() for run in group)
    log(f"{key}: every search cut to {budget:.0f} trial-epochs")
    rows, records = [], []
    for searcher, group in runs.items():
        if not group:
            continue
        cuts = [run.steps <= budget + 1e-9 for run in group]
        hvs = [run.hv(run.trials[cut]) for run, cut in zip(group, cuts)]
        fronts = [run.front_size(run.trials[cut]) for run, cut in zip(group, cuts)]
        beaten = {p["name"]: sum(dominated(run, cut, p) for run, cut in zip(group, cuts)) for p in points}
        rows.append([key, searcher, len(group), num_samples, epochs, f"{budget:.0f}",
                     mean_sd([float(cut.sum()) for cut in cuts], 1), mean_sd(hvs), mean_sd(fronts, 1),
                     *(f"{beaten[p['name']]}/{len(group)}" for p in points)])
        records += [{"space": key, "searcher": searcher, "seed": run.seed, "trials_in_cut": int(cut.sum()),
                     "hv": hv, "front": front, "wall_s": run.wall_s, "total_trial_epochs": run.total,
                     "dominates": {p["name"]: dominated(run, cut, p) for p in points}}
                    for run, cut, hv, front in zip(group, cuts, hvs, fronts)]
    first = next(run for group in runs.values() for run in group)
    return {"rows": rows, "records": records, "baselines": points, "budget": budget, "failed": failed,
            "metric": first.metric, "teacher": {"params": first.teacher_params, "score": first.teacher_score}}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/search_quality.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spaces", nargs="+", choices=tuple(SPACES), help="default: demo, and classification when present")
    parser.add_argument("--searchers", nargs="+", choices=SEARCHERS, default=list(SEARCHERS))
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (default 3)")
    parser.add_argument("--num-samples", type=int, help="trials per search (default: demo 12, classification 12)")
    parser.add_argument("--epochs", type=int, help="distill.epochs of trials and baselines (default: demo 3, classification 2)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/plugkd-bench"))
    args = parser.parse_args(argv)
    for name in ("seeds", "num_samples", "epochs"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise InputError(f"--{name.replace('_', '-')}: expected an integer >= 1, got {getattr(args, name)}")
    args.out = args.out.resolve()
    args.spaces = args.spaces or [key for key, path in SPACES.items() if path.is_file()]
    started = time.monotonic()
    log = lambda line: print(line, flush=True)  # noqa: E731
    results = {key: bench_space(key, args, log) for key in args.spaces}
    lines = []
    for key, result in results.items():
        points = result["baselines"]
        head = ["space", "searcher", "seeds", "trials", "epochs", "cut (trial-epochs)", "trials in cut",
                "hypervolume", "front size", *(f"dominates {p['name']}" for p in points)]
        teacher = result["teacher"]
        lines += [markdown(head, result["rows"]), "",
                  markdown(["baseline", "layers", "params (of teacher)", result["metric"], "within budget"],
                           [[p["name"], p["layers"], f"{p['params'] / p['teacher_params']:.1%}", f"{p['score']:.4f}",
                             "yes" if p["within_budget"] else "no"] for p in points]),
                  f"{key}: teacher {teacher['params'] / 1e6:.3f}M params, {result['metric']} {teacher['score']:.4f}"
                  + (f"; failed searches: {', '.join(result['failed'])}" if result["failed"] else ""), ""]
    elapsed = time.monotonic() - started
    lines.append(f"total {elapsed:.0f}s")
    report = "\n".join(lines)
    print("\n" + report)
    folder = args.out / "search_quality"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "search_quality.md").write_text(report + "\n")
    (folder / "search_quality.json").write_text(json.dumps(
        {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "wall_s": elapsed,
         **{key: {k: v for k, v in result.items() if k != "rows"} for key, result in results.items()}}, indent=2, default=str))
    print(f"wrote {folder / 'search_quality.md'} and search_quality.json")
    return 0


if __name__ == "__main__":
    run_cli(main)
