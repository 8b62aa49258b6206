"""How much of a real teacher's accuracy plugkd's default distillation keeps, beside a plain reference loop.

Models (`--models`): `resnet20` and `resnet32` of ../shared/real (their published weights; distilled on the
2,300 real unlabeled CIFAR-10 images, scored by top-1 on the 400 labeled val images), and `demo` (the demo's
DeepWV3Plus on its synthetic street scenes, scored by mIoU; data and teacher as `make demo` writes them,
generated under `--out` when missing). Three policies per model: `dws` on the last stage's second convs
(ResNets: layer3's `conv2`; demo: mod6's and mod7's), `dws` on every 3x3 conv of the later stages (ResNets:
layer2 and layer3; demo: mod4 to mod7 and the ASPP), and a `lowrank` mix near half the teacher's params.

Rows, for each model and policy, on the same unlabeled images, augmentation, batch size and val images:

- `default`: every distill setting at its default, plugs from the space's plug library: exactly what
  `python search/retrain.py --space S --policy P --epochs E` runs (`search.retrain.distill_policy`);
- `train=<set>`: the default with another trainable set (`distill.train`; the default's own is `downstream`);
- `init=scratch`: the default without the library (the ops' own data-free start from the teacher's weights);
- with `--variants KEY=VALUE ...`, one row per variant: the default with that one setting changed, on the first
  policy only (the second command below: the evidence for the recipe's BatchNorm, lr and KD weight);
- `reference`: a plain loop written below, with no plugkd recipe in it, training the default's set (everything
  from the first plug on, in forward order): PyTorch's own initialisation of the plug convs, normalised-MSE hint
  at each plug (mean over plugs) + T^2 KL at T = 4, both weighted 1, AdamW (weight decay 1e-4), cosine schedule,
  lr 1e-3 (3e-3 from 20 epochs on, as ../shared/real/README.md's reference figures), BatchNorm in train mode
  from the first plug on.

Every row runs at the smallest epoch count (`--epochs`, default 4 and 20); at the larger ones `default` and
`reference` run for the first policy of the models in `--long` (default: resnet20, whose target is at 20 epochs),
which keeps the whole benchmark within 30 minutes on 2 cores. Each row prints the metric, its share of the
teacher's, seconds per epoch and training images per second. Targets: `default` at least matches `reference` at
equal epochs on every (model, policy); ResNet-20 with `dws` on layer3's `conv2` keeps at least 95% of its
teacher's top-1 within 20 epochs.

It also prints, per model: the plug library's build (its training rate against the teacher's forward alone
over the same images, target at least 0.5 on the ResNets) and, for the models in `--rank` (default resnet20 and
demo), how well each solo measure of the library ranks measured drops: `--rank-policies` random policies over
the model's layers are each distilled for `--rank-epochs` epochs with the defaults, and Spearman's rho of each
measure summed over a policy's plugs against the policy's measured drop (target at least 0.6 for the measure
the solver uses).

    python benchmarks/recovery.py                                    # all of it (25 min on 2 cores)
    python benchmarks/recovery.py --models resnet20 demo --epochs 4 --policies 1 --long --rank \
        --variants bn=frozen bn=recalibrate lr=0.003 lr=0.001 w_kd=0 w_kd=1   # the variants (6 min)
    python benchmarks/recovery.py --models resnet20 --epochs 1 2 --rank-policies 3 --rank-epochs 1   # a smoke run
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from search_cost import markdown, prepare_inputs, write_space  # noqa: E402

from analysis.agreement import SOLO_MEASURES, spearman  # noqa: E402
from data.errors import InputError, run_cli  # noqa: E402
from data.names import KEEP  # noqa: E402
from search.choices import resolve_choices  # noqa: E402
from search.library import PREDICTOR, build_library, library_images  # noqa: E402
from search.retrain import distill_policy  # noqa: E402
from search.space import Space, load_space  # noqa: E402
from trainable import parts  # noqa: E402
from trainable.config import DistillSettings  # noqa: E402
from trainable.inventory import convs, count_params, output_classes  # noqa: E402
from trainable.library import teacher_forward_rate  # noqa: E402
from trainable.loaders import train_loader, unlabeled_set, val_loader  # noqa: E402
from trainable.ops import op_params  # noqa: E402
from trainable.losses import hint_loss, kd_loss  # noqa: E402
from trainable.surgery import apply_policy, plugged_layers  # noqa: E402

REAL = REPO.parent / "shared" / "real"
Log = Callable[[str], None]
TRAIN_SETS = ("plugged", "downstream", "all")
REFERENCE_T = 4.0


def variant(text: str) -> tuple[str, Any]:
    """A KEY=VALUE distill setting, its value parsed as YAML (a number stays a number)."""
    key, sep, value = text.partition("=")
    if not sep or key not in {f.name for f in fields(DistillSettings)}:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE with KEY a distill setting, got {text!r}")
    return key, yaml.safe_load(value)


@dataclass(frozen=True)
class Model:
    """A teacher to compress: how to write its space, its three policies' layer rules, its ranking layers."""

    name: str
    last: tuple[str, ...]  # the last stage(s): their second convs
    stages: tuple[str, ...]  # the stages whose every 3x3 conv the second policy plugs (and the ranking draws from)
    rank_ops: tuple[str, ...]  # ops of the ranking policies
    lowrank: tuple[str, ...]  # ranks tried for the lowrank mix


RESNET = dict(last=("layer3",), stages=("layer2", "layer3"), rank_ops=(KEEP, "dws", "lowrank8", "lowrank16"),
              lowrank=("lowrank4", "lowrank8", "lowrank16", "lowrank32"))
MODELS = {
    "resnet20": Model("resnet20", **RESNET),
    "resnet32": Model("resnet32", **RESNET),
    "demo": Model("demo", last=("mod6", "mod7"), stages=("mod4", "mod5", "mod6", "mod7", "aspp"),
                  rank_ops=(KEEP, "dws", "group4", "lowrank8"), lowrank=("lowrank4", "lowrank8", "lowrank16")),
}


# --- spaces and policies --------------------------------------------------------------------------
def real_space(name: str, folder: Path, layers: Sequence[str], ops: Sequence[str]) -> Path:
    """A space for a CIFAR ResNet of ../shared/real with the model file beside it (defaults for the rest)."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy2(REAL / "cifar_models.py", folder / "cifar_models.py")
    tree = {
        "teacher": {"arch": f"cifar_models:{name}", "args": {"num_classes": 10}, "task": "classification",
                    "checkpoint": str(REAL / f"{name}.th")},
        "data": {"dataset": "imagefolder", "root": str(REAL / "cifar10"), "val": "val", "unlabeled": ["unlabeled"],
                 "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "image_size": 32,
                 "augment": {"crop": "pad", "flip": True}, "batch_size": 64},
        "policy": {"groups": [{"layers": list(layers), "ops": list(ops), "per_layer": True}]},
        "distill": {},
        "library": {"cache": str(folder / "library")},
        "search": {"num_samples": 1},
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


def demo_space(folder: Path, layers: Sequence[str], ops: Sequence[str], log: Log) -> Path:
    """The demo space pointed at its data and teacher, its groups replaced by the ranking layers, defaults elsewhere."""
    overrides = prepare_inputs("demo", folder.parent, log)
    source = yaml.safe_load((REPO / "spaces/demo.yaml").read_text())
    return write_space(REPO / "spaces/demo.yaml", folder / "demo.yaml", {
        **overrides, "distill": {"epochs": 1}, "search": {"num_samples": 1}, "policy.budget": None,
        "policy.groups": [{"layers": list(layers), "ops": list(ops), "per_layer": True}],
        "library": {**source.get("library", {}), "cache": str(folder / "library")},
    })


def three_by_three(teacher: torch.nn.Module, prefixes: Sequence[str]) -> list[str]:
    """The 3x3 convs below the given prefixes, in the teacher's order."""
    return [name for name, conv in convs(teacher).items()
            if name.startswith(tuple(f"{p}." for p in prefixes)) and conv.kernel_size == (3, 3)]


def policies(model: Model, teacher: torch.nn.Module) -> dict[str, dict[str, str]]:
    """The three policies: dws on the last stage's conv2, dws on every 3x3 conv of the last two stages, a lowrank mix."""
    second = [n for n in three_by_three(teacher, model.last) if n.endswith("conv2")]
    every = three_by_three(teacher, model.stages)
    total = count_params(teacher)
    mix = _lowrank_mix(teacher, every, model.lowrank, 0.5 * total)
    return {f"dws {'+'.join(model.last)} conv2": {n: "dws" for n in second},
            f"dws {'+'.join(model.stages)} 3x3": {n: "dws" for n in every}, "lowrank mix": mix}


def _lowrank_mix(teacher: torch.nn.Module, layers: Sequence[str], ranks: Sequence[str], target: float) -> dict[str, str]:
    """Lowrank on the largest layers first, the rank per layer the largest that keeps the total near `target`."""
    named = convs(teacher)
    total = count_params(teacher)
    policy: dict[str, str] = {}
    for layer in sorted(layers, key=lambda n: -named[n].weight.numel()):
        if total <= target:
            break
        saving = {op: op_params(named[layer], KEEP) - op_params(named[layer], op) for op in ranks
                  if op_params(named[layer], op) < op_params(named[layer], KEEP)}
        if not saving:
            continue
        op = min(saving, key=lambda o: abs(total - saving[o] - target))
        policy[layer], total = op, total - saving[op]
    return policy


# --- the reference loop ---------------------------------------------------------------------------
def reference_loop(space: Space, teacher: torch.nn.Module, policy: dict[str, str], train: str, epochs: int,
                   seed: int = 0) -> tuple[float, float, float]:
    """A plain hint + KD loop (see the module docstring): (the task's score, seconds per epoch, images per second)."""
    torch.manual_seed(seed)
    task, data = space.task, space.data
    student = apply_policy(teacher, policy)
    plugs = plugged_layers(policy)
    for layer in plugs:  # PyTorch's own initialisation, as a plain loop gets it
        for conv in student.get_submodule(layer).children():
            conv.reset_parameters()
    calls = parts.record_calls(student, torch.zeros(1, 3, *space.input_size))
    parts.configure(student, train, plugs, calls)
    batchnorms = [] if train == "plugged" else parts.affected_batchnorms(student, train, plugs, calls)
    outputs: dict[tuple[str, str], torch.Tensor] = {}
    hooks = [model.get_submodule(layer).register_forward_hook(lambda m, a, o, k=(who, layer): outputs.__setitem__(k, o))
             for who, model in (("teacher", teacher), ("student", student)) for layer in plugs]
    trainable = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-3 if epochs < 20 else 3e-3, weight_decay=1e-4)
    unlabeled = unlabeled_set(data)
    steps = len(unlabeled) // data.batch_size
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs * steps)
    seen, started = 0, time.perf_counter()
    for epoch in range(epochs):
        student.eval()
        for name in batchnorms:
            student.get_submodule(name).train()
        for images in train_loader(unlabeled, data, seed * 100_003 + epoch):
            with torch.no_grad():
                target = task.logits(teacher, images)
            logits = task.logits(student, images)
            hint = sum(hint_loss(outputs[("student", l)], outputs[("teacher", l)]) for l in plugs) / len(plugs)
            loss = hint + kd_loss(logits, target, REFERENCE_T)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            seen += images.shape[0]
    seconds = time.perf_counter() - started
    for hook in hooks:
        hook.remove()
    return _score(space, student), seconds / epochs, seen / seconds


def _score(space: Space, model: torch.nn.Module) -> float:
    task = space.task
    loader = val_loader(space.data, task.eval_batch_size(space.data))
    return task.evaluate(model, loader, space.data, output_classes(model, space.input_size),
                         torch.device("cpu")).values[space.search.score]


# --- plugkd rows ----------------------------------------------------------------------------------
def plugkd_row(space: Space, teacher: torch.nn.Module, policy: dict[str, str], epochs: int,
               **overrides: Any) -> tuple[float, float, float]:
    """The default distillation with `overrides`: (score, seconds per epoch, images per second)."""
    settings = replace(space.distill, epochs=epochs, **overrides)
    run = distill_policy(space, policy, settings, torch.device("cpu"), teacher=teacher, log=lambda line: None)
    train_s = sum(m["epoch_s"] for m in run.history)
    rate = sum(m["images_per_s"] for m in run.history) / len(run.history)
    return run.last_eval[space.search.score], train_s / epochs, rate


def random_policies(layers: Sequence[str], ops: Sequence[str], count: int, seed: int) -> list[dict[str, str]]:
    rng = random.Random(seed)
    found: list[dict[str, str]] = []
    while len(found) < count:
        policy = {layer: rng.choice(ops) for layer in layers}
        if any(op != KEEP for op in policy.values()) and policy not in found:
            found.append(policy)
    return found


# --- one model ------------------------------------------------------------------------------------
def bench_model(model: Model, args: argparse.Namespace, log: Log) -> dict[str, Any]:
    folder = args.out / "recovery" / model.name
    if model.name == "demo":
        probe = demo_space(folder, ["mod7.*"], [KEEP], log)
    else:
        probe = real_space(model.name, folder, ["layer3.*"], [KEEP])
    teacher = load_space(probe).teacher.build()
    layers = three_by_three(teacher, model.stages)
    ops = list(dict.fromkeys(model.rank_ops + model.lowrank))
    path = demo_space(folder, layers, ops, log) if model.name == "demo" else real_space(model.name, folder, layers, ops)
    space = load_space(path)
    metric = space.search.score
    teacher_score = _score(space, teacher)
    log(f"{model.name}: teacher {metric} {teacher_score:.4f}, {count_params(teacher):,} params")

    shutil.rmtree(folder / "library", ignore_errors=True)  # a fresh build: its rate is the figure
    started = time.monotonic()
    library = build_library(space, teacher, resolve_choices(space, teacher), torch.device("cpu"), progress=False)
    build_s = time.monotonic() - started
    forward = teacher_forward_rate(teacher, library_images(space), torch.device("cpu"))
    log(f"{model.name}: plug library {len(library.table)} plugs in {build_s:.0f}s, training at "
        f"{library.build.images_per_s:.0f} images/s; teacher forward alone {forward:.0f} images/s")
    typical = build_rate(model, folder / "rate", teacher, layers, log)

    rows: list[list[Any]] = []
    share = lambda v: f"{v / teacher_score:.1%}"  # noqa: E731
    total = count_params(teacher)
    default = DistillSettings()
    verdicts = []
    for index, (label, policy) in enumerate(list(policies(model, teacher).items())[:args.policies]):
        params = sum(p.numel() for p in apply_policy(teacher, policy).parameters()) / total
        for epochs in args.epochs:
            found: dict[str, tuple[float, float, float]] = {}
            if epochs == args.epochs[0]:
                found["default"] = plugkd_row(space, teacher, policy, epochs)
                for train in TRAIN_SETS:
                    if train != default.train:
                        found[f"train={train}"] = plugkd_row(space, teacher, policy, epochs, train=train)
                found["init=scratch"] = plugkd_row(space, teacher, policy, epochs, init="scratch")
                for key, value in (args.variants if index == 0 else []):
                    found[f"{key}={value}"] = plugkd_row(space, teacher, policy, epochs, **{key: value})
            elif index == 0 and model.name in args.long:
                found["default"] = plugkd_row(space, teacher, policy, epochs)
            else:
                continue
            found["reference"] = reference_loop(space, teacher, policy, default.train, epochs)
            verdicts.append((model.name, label, epochs, found["default"][0], found["reference"][0]))
            for row, (score, s_epoch, rate) in found.items():
                rows.append([model.name, label, f"{params:.1%}", epochs, row, f"{score:.4f}", share(score),
                             f"{s_epoch:.1f}", f"{rate:.0f}"])
                log(" | ".join(map(str, rows[-1])))
    ranking = (rank_measures(space, teacher, layers, model, library, teacher_score, args, log)
               if model.name in args.rank else {})
    return {"rows": rows, "verdicts": verdicts, "ranking": ranking, "teacher": teacher_score, "metric": metric,
            "forward_rate": forward, "build_rate": library.build.images_per_s, "plugs": len(library.table),
            "typical": typical}


def build_rate(model: Model, folder: Path, teacher: torch.nn.Module, layers: Sequence[str], log: Log) -> tuple[int, float]:
    """A typical space's library, two ops per layer (`dws` and a lowrank), built afresh: (plugs, images/s)."""
    ops = (KEEP, "dws", model.lowrank[-2])
    shutil.rmtree(folder, ignore_errors=True)
    path = demo_space(folder, layers, ops, log) if model.name == "demo" else real_space(model.name, folder, layers, ops)
    space = load_space(path)
    library = build_library(space, teacher, resolve_choices(space, teacher), torch.device("cpu"), progress=False)
    log(f"{model.name}: a library of {len(library.table)} plugs ({', '.join(ops[1:])}) trains at "
        f"{library.build.images_per_s:.0f} images/s")
    return len(library.table), library.build.images_per_s


def rank_measures(space: Space, teacher: torch.nn.Module, layers: Sequence[str], model: Model, library: Any,
                  teacher_score: float, args: argparse.Namespace, log: Log) -> dict[str, float]:
    """Spearman's rho of each solo measure summed over a random policy's plugs against its measured drop."""
    table = library.table
    drops, sums = [], {m: [] for m in SOLO_MEASURES}
    for policy in random_policies(layers, model.rank_ops, args.rank_policies, seed=1):
        score = plugkd_row(space, teacher, policy, args.rank_epochs)[0]
        drops.append(teacher_score - score)
        keys = [(l, op) for l, op in policy.items() if op != KEEP]
        for measure in SOLO_MEASURES:
            value = {(r.layer, r.op): float(getattr(r, measure)) for r in table.itertuples(index=False)}
            sums[measure].append(sum(value[k] for k in keys))
    rho = {m: spearman(sums[m], drops) for m in SOLO_MEASURES}
    log(f"{model.name}: ranking of {len(drops)} random policies ({args.rank_epochs} epochs each): "
        + ", ".join(f"{m} {r:.2f}" for m, r in rho.items()))
    return rho


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/recovery.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=tuple(MODELS), default=list(MODELS))
    parser.add_argument("--epochs", nargs="+", type=int, default=[4, 20], help="epoch counts (default 4 20)")
    parser.add_argument("--policies", type=int, default=3, choices=(1, 2, 3), help="the first N policies (default 3)")
    parser.add_argument("--variants", nargs="*", type=variant, default=[],
                        help="KEY=VALUE distill settings, each a row on the first policy (default: none)")
    parser.add_argument("--long", nargs="*", choices=tuple(MODELS), default=["resnet20"],
                        help="models whose first policy also runs at the larger epoch counts (default resnet20)")
    parser.add_argument("--rank", nargs="*", choices=tuple(MODELS), default=["resnet20", "demo"],
                        help="models whose solo measures are ranked against measured drops (default resnet20 demo)")
    parser.add_argument("--rank-policies", type=int, default=8, help="random policies for the ranking (default 8)")
    parser.add_argument("--rank-epochs", type=int, default=2, help="epochs of each ranking policy (default 2)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/plugkd-bench"))
    args = parser.parse_args(argv)
    if min(args.epochs) < 1 or args.rank_policies < 3 or args.rank_epochs < 1:
        raise InputError("--epochs and --rank-epochs: integers >= 1; --rank-policies: an integer >= 3")
    args.epochs = sorted(set(args.epochs))
    args.out = args.out.resolve()
    torch.set_num_threads(2)
    started = time.monotonic()
    log = lambda line: print(line, flush=True)  # noqa: E731
    results = {name: bench_model(MODELS[name], args, log) for name in args.models}
    head = ["model", "policy", "params", "epochs", "row", "metric", "of teacher", "s/epoch", "images/s"]
    lines = [markdown(head, [row for r in results.values() for row in r["rows"]]), ""]
    for name, r in results.items():
        for model, label, epochs, default, reference in r["verdicts"]:
            lines.append(f"- {model}, {label}, {epochs} epochs: default {default:.4f} vs reference {reference:.4f}: "
                         f"{'met' if default >= reference else 'NOT met'}")
        if name == "resnet20":
            kept = max((float(row[5]) / r["teacher"] for row in r["rows"]
                        if row[1] == "dws layer3 conv2" and row[4] == "default" and row[3] <= 20), default=0.0)
            lines.append(f"- resnet20, dws layer3 conv2: default keeps {kept:.1%} of the teacher's top-1 within 20 epochs "
                         f"(target >= 95%): {'met' if kept >= 0.95 else 'NOT met'}")
        if r["ranking"]:
            lines.append(f"- {name}: ranking of measured drops (Spearman): " + ", ".join(
                f"{m} {v:.2f}" + (" (the solver's)" if m == PREDICTOR else "") for m, v in r["ranking"].items()))
        plugs, rate = r["typical"]
        lines.append(f"- {name}: plug library build, {r['plugs']} plugs: {r['build_rate']:.0f} images/s, {plugs} plugs: "
                     f"{rate:.0f} images/s, against the teacher's forward alone {r['forward_rate']:.0f} "
                     f"({r['build_rate'] / r['forward_rate']:.2f} and {rate / r['forward_rate']:.2f}; "
                     "target >= 0.5 on the ResNets)")
    lines.append(f"\ntotal {time.monotonic() - started:.0f}s")
    report = "\n".join(lines)
    print("\n" + report)
    folder = args.out / "recovery"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "recovery.md").write_text(report + "\n")
    (folder / "recovery.json").write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    run_cli(main)
