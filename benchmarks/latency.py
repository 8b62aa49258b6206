"""Where fewer parameters do not mean faster: a DeepWV3Plus teacher against the same network with `dws` on every
3x3 conv, timed by `trainable.latency.measure_latency` through PyTorch and onnxruntime.

Both networks have deterministic random weights (latency does not depend on their values). Per input size and
backend, `--rounds` rounds of `--runs` timed forwards (after warm-up) each, teacher and student alternating round
by round so that a change of machine load hits both; each figure is the best round's median (the least disturbed).
Batch 1; `--threads` intra-op threads for both backends.

    python benchmarks/latency.py                                  # CPU, width 0.125, 64x128 and 256x512, 1 thread
    python benchmarks/latency.py --device cuda --width 1 --sizes 1024x2048 --backends torch   # a GPU, full width
"""
from __future__ import annotations

import argparse
from typing import Sequence

import torch

from data.errors import InputError, run_cli
from trainable.config import describe_device
from trainable.inventory import convs, count_params
from trainable.latency import measure_latency
from trainable.models import build
from trainable.surgery import apply_policy

ARCH = "deepwv3plus"


def size(text: str) -> tuple[int, int]:
    try:
        height, width = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW such as 64x128, got {text!r}") from None
    return height, width


def dws_everywhere(teacher: torch.nn.Module) -> dict[str, str]:
    """`dws` on every dense 3x3 conv of the network."""
    return {name: "dws" for name, conv in convs(teacher).items() if conv.kernel_size == (3, 3) and conv.groups == 1}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/latency.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=float, default=0.125)
    parser.add_argument("--sizes", type=size, nargs="+", default=[(64, 128), (256, 512)], metavar="HxW")
    parser.add_argument("--backends", nargs="+", choices=("torch", "onnxruntime"), default=["torch", "onnxruntime"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args(argv)
    if min(args.threads, args.rounds, args.runs) < 1 or args.warmup < 0:
        raise InputError("--threads, --rounds and --runs must be >= 1, --warmup >= 0")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    teacher = build(ARCH, num_classes=19, width=args.width).eval()
    policy = dws_everywhere(teacher)
    student = apply_policy(teacher, policy).eval()
    params = {"teacher": count_params(teacher), "student": count_params(student)}
    print(f"{ARCH} width {args.width:g} on {describe_device(device)}, batch 1; student: dws on {len(policy)} 3x3 convs")
    print(f"| input | backend | teacher ({params['teacher'] / 1e6:.2f}M params) ms | "
          f"all-dws student ({params['student'] / 1e6:.2f}M params) ms | ratio |")
    print("|---|---|---|---|---|")
    for height, width in args.sizes:
        for backend in args.backends:
            best = {"teacher": float("inf"), "student": float("inf")}
            for _ in range(args.rounds):
                for name, model in (("teacher", teacher), ("student", student)):
                    timed = measure_latency(model, (height, width), 1, device, args.warmup, args.runs, backend)
                    best[name] = min(best[name], timed.median_ms)
            print(f"| {height}x{width} | {backend} | {best['teacher']:.1f} | {best['student']:.1f} | "
                  f"{best['student'] / best['teacher']:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    run_cli(main)
