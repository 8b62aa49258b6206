"""Score predictions of trainable.predict, as their task scores them (`Task.score_predictions`).

`python -m trainable.evaluate --pred-dir P --gt-dir G [--pred-format labelIds|trainIds] [--json]` gives the
same class IoUs as cityscapesscripts' evalPixelLevelSemanticLabeling (19 classes, ignore 255).
`python -m trainable.evaluate --pred-csv predictions.csv --val-dir VAL [--json]` gives the top-1 accuracy of a
classifier's predictions on an ImageFolder split: class = the sorted class folder names.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Sequence

from data.errors import run_cli
from trainable import tasks


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trainable.evaluate", description=__doc__.splitlines()[0])
    for task in tasks.registered():
        group = parser.add_argument_group(f"{task.name} predictions")
        for flag in task.score_inputs:
            group.add_argument(flag.name, help=flag.help)
        for flag in task.score_options:
            group.add_argument(flag.name, choices=flag.choices, default=flag.choices[0], help=flag.help)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    given = {flag.name for task in tasks.registered() for flag in task.score_inputs
             if getattr(args, flag.dest) is not None}
    chosen = [task for task in tasks.registered() if given == {flag.name for flag in task.score_inputs}]
    if not chosen:
        parser.error("give " + ", or ".join(f"{predictions.name} with {truth.name} ({task.name})"
                                             for task in tasks.registered()
                                             for predictions, truth in [task.score_inputs]))
    task = chosen[0]
    predictions, truth = (Path(getattr(args, flag.dest)) for flag in task.score_inputs)
    result = task.score_predictions(predictions, truth, **{flag.dest: getattr(args, flag.dest) for flag in task.score_options})
    print(json.dumps(result.to_json(), indent=2) if args.json else task.report(result))
    return 0


if __name__ == "__main__":
    run_cli(main)
