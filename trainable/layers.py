"""Print a teacher's conv inventory, and with --policy the student's cost beside it.

python -m trainable.layers --teacher ARCH [--num-classes C] [--width W] [--input-size H W] [--policy FILE] [--json]
python -m trainable.layers --teacher module:callable [--args JSON] [--task T] [--search-path DIR] [--input-size H W] ...

A module:callable's module is imported from --search-path first (a space's teacher: the space file's folder), then
from sys.path. `command(teacher, input_size)` is this command for a space's teacher, as a space's errors print it.

The teacher is built on the meta device (no weights are allocated), so even a full-width teacher
at 1024x2048 is inspected in well under a second.
"""
from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from data.errors import InputError, run_cli
from data.names import KEEP
from trainable import tasks
from trainable.config import TeacherSettings
from trainable.inventory import Layer, count_params, layers_from, measure
from trainable.models import build, info, is_zoo
from trainable.surgery import apply_policy, read_policy


def _measure(model: nn.Module, input_size: tuple[int, int], what: str) -> tuple[int, list[Layer]]:
    try:
        total, per_conv = measure(model, input_size)
    except RuntimeError as err:
        size = f"{input_size[0]} {input_size[1]}"
        raise InputError(f"--input-size {size}: the {what} cannot run on it ({str(err).splitlines()[0]})") from None
    return total, layers_from(model, per_conv)


def _si(value: float) -> str:
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.2f}{unit}"
    return f"{value:.0f}"


def _pair(values: tuple[int, int] | str) -> str:
    return values if isinstance(values, str) else "x".join(map(str, values))


def _student_costs(
    layers: list[Layer], policy: dict[str, str], student_layers: list[Layer]
) -> dict[str, tuple[str, int, int]]:
    """Per teacher conv: (op, student params, student FLOPs)."""
    costs = {}
    for layer in layers:
        op = policy.get(layer.name, KEEP)
        parts = [s for s in student_layers if s.name == layer.name or s.name.startswith(layer.name + ".")]
        costs[layer.name] = (op, sum(s.params for s in parts), sum(s.flops for s in parts))
    return costs


def _table(report: dict[str, Any], costs: dict[str, tuple[str, int, int]] | None) -> str:
    head = ["name", "in", "out", "kernel", "stride", "dilation", "groups", "params", "FLOPs"]
    if costs is not None:
        head += ["op", "s_params", "s_FLOPs"]
    rows = []
    for layer in report["layers"]:
        row = [layer.name, str(layer.in_channels), str(layer.out_channels), _pair(layer.kernel), _pair(layer.stride),
               _pair(layer.dilation), str(layer.groups), _si(layer.params), _si(layer.flops)]
        if costs is not None:
            op, params, flops = costs[layer.name]
            row += [op, _si(params), _si(flops)]
        rows.append(row)
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = [
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in [head, *rows]
    ]
    conv_params = sum(layer.params for layer in report["layers"])
    conv_flops = sum(layer.flops for layer in report["layers"])
    lines += [
        "",
        f"{report['arch']} at {report['input_size'][0]}x{report['input_size'][1]}: {len(rows)} convs",
        f"teacher  params {report['params']:,} ({_si(report['params'])})  FLOPs {report['flops']:,} ({_si(report['flops'])})",
        f"convs    params {conv_params:,} ({_si(conv_params)})  FLOPs {conv_flops:,} ({_si(conv_flops)})",
    ]
    if costs is not None:
        student = report["student"]
        lines.append(
            f"student  params {student['params']:,} ({_si(student['params'])}, "
            f"{student['params'] / report['params']:.3f} of teacher)"
            f"  FLOPs {student['flops']:,} ({_si(student['flops'])}, {student['flops'] / report['flops']:.3f} of teacher)"
        )
    return "\n".join(lines)


def command(teacher: TeacherSettings, input_size: tuple[int, int]) -> str:
    """The shell command, run from the current folder, that prints `teacher`'s inventory at `input_size`."""
    words = ["python", "-m", "trainable.layers", "--teacher", teacher.arch]
    if is_zoo(teacher.arch):
        for flag, value in (("--num-classes", teacher.num_classes), ("--width", teacher.width)):
            words += [flag, str(value)] if value is not None else []
    else:
        words += ["--args", json.dumps(dict(teacher.args))] if teacher.args else []
        if teacher.search_path is not None:
            here = Path.cwd().resolve()
            folder = teacher.search_path.resolve()
            words += ["--search-path", str(folder.relative_to(here) if folder.is_relative_to(here) else folder)]
    return shlex.join([*words, "--input-size", str(input_size[0]), str(input_size[1])])


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trainable.layers", description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", required=True,
                        help="arch name in the zoo, or module:callable (imported from --search-path, then sys.path)")
    parser.add_argument("--num-classes", type=int, help="classes of the teacher's head (zoo default if omitted)")
    parser.add_argument("--width", type=float, help="channel width multiplier of a zoo arch (default 1.0)")
    parser.add_argument("--args", type=json.loads, default={}, help="JSON keyword arguments of a module:callable teacher")
    parser.add_argument("--search-path", type=Path, default=Path.cwd(), metavar="DIR",
                        help="folder a module:callable's module is imported from first, e.g. a space file's folder "
                             "(default: the current folder)")
    parser.add_argument("--task", choices=tasks.names(), default=tasks.Classification.name,
                        help="task of a module:callable teacher (sets the default input size; default %(default)s)")
    parser.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"), help="default " + " or ".join(
        f"{task.inventory_size[0]} {task.inventory_size[1]} ({task.name})" for task in tasks.registered()))
    parser.add_argument("--policy", type=Path, help="JSON {layer: op}: show the student beside the teacher")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)

    task = tasks.get(info(args.teacher).task if is_zoo(args.teacher) else args.task)
    input_size = tuple(args.input_size) if args.input_size else task.inventory_size
    if min(input_size) < 1:
        raise InputError(f"--input-size must be two positive integers, got {input_size[0]} {input_size[1]}")
    if args.num_classes is not None and args.num_classes < 1:
        raise InputError(f"--num-classes must be >= 1, got {args.num_classes}")
    policy = read_policy(args.policy) if args.policy else None
    kwargs = dict(args.args)
    if args.width is not None:
        kwargs["width"] = args.width
    if args.num_classes is not None:
        kwargs["num_classes"] = args.num_classes
    with torch.device("meta"):
        teacher = build(args.teacher, args.search_path, **kwargs)
    flops, layers = _measure(teacher, input_size, "teacher")
    report: dict[str, Any] = {"arch": args.teacher, "input_size": list(input_size), "params": count_params(teacher),
                              "flops": flops, "layers": layers}
    costs = None
    if policy is not None:
        try:
            student = apply_policy(teacher, policy)
        except InputError as err:
            raise InputError(f"{args.policy}: {err}") from None
        student_flops, student_layers = _measure(student, input_size, "student")
        costs = _student_costs(layers, policy, student_layers)
        report["student"] = {
            "params": count_params(student), "flops": student_flops, "policy": policy,
            "layers": [{"name": name, "op": op, "params": p, "flops": f} for name, (op, p, f) in costs.items()],
        }
    if args.json:
        print(json.dumps(report | {"layers": [layer.to_dict() for layer in layers]}, indent=1))
    else:
        print(_table(report, costs))
    return 0


if __name__ == "__main__":
    run_cli(main)
