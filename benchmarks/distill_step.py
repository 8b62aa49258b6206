"""What one distillation step costs against its necessary parts and against a supervised step.

For a student with `dws` plugs, on a fixed random batch (the data loader is not timed):

- a: `Distillation.step(images, None, active, update=True)` inside `_training_mode`, as `train_epoch` runs it;
- b: the sum of the parts no distillation step can avoid, each timed on its own with the same modules:
  the teacher forward without grad, the student forward and a loss-free backward
  (`student(images).float().mean().backward()`), and the optimizer step;
- c: `trainable.supervised.supervised_step` of the same student (same trainable weights, same
  optimizer) on random labels.

a/b is the loop's overhead (hooks, losses, copies) and drops below 1 when the student reuses the
teacher's frozen prefix; a/c compares with plain supervised training. Cases: 1) dws on every 3x3
conv of mod2-mod7; 2) dws on the 3x3 convs of mod6-mod7, the frozen prefix shared; 3) as 2 with
sharing switched off (`prefix = []`). Measurements are interleaved repeat by repeat, so a change in
the machine's load hits a, b and c alike; each figure is the median of the repeats.

Peak memory is the peak over the resident memory just before the call: on CPU the process's
resident-set high-water mark (VmHWM, reset through /proc/self/clear_refs, freed heap returned to
the system first), on CUDA `torch.cuda.max_memory_allocated`; the CUDA table also gives the
absolute peak (weights and optimizer state included).

    python benchmarks/distill_step.py                  # CPU: deepwv3plus width 0.125 at 128x256, 0.25 at 256x512
    python benchmarks/distill_step.py --device cuda    # full width, 768x768, batch 2, bf16, channels_last
"""
from __future__ import annotations

import os

# Before torch loads OpenMP: spinning worker threads on a CPU shared with other processes make every
# parallel kernel wait for a descheduled spinner (two orders of magnitude on a busy 2-core machine).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import ctypes  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Callable, ContextManager, Sequence  # noqa: E402

import torch  # noqa: E402

from data.errors import InputError, run_cli  # noqa: E402
from data.labels import NUM_CLASSES  # noqa: E402
from data.synthetic import generate  # noqa: E402
from trainable.config import DistillSettings, TeacherSettings  # noqa: E402
from data.settings import DataSettings  # noqa: E402
from trainable.distill import Distillation  # noqa: E402
from trainable.inventory import convs  # noqa: E402
from trainable.supervised import supervised_step  # noqa: E402

ARCH = "deepwv3plus"
MIB = 1 << 20
# name: (width, (height, width) of the crop)
SIZES: dict[str, tuple[float, tuple[int, int]]] = {
    "small": (0.125, (128, 256)),
    "large": (0.25, (256, 512)),
    "full": (1.0, (768, 768)),
}
ALL_STAGES = ("mod2", "mod3", "mod4", "mod5", "mod6", "mod7")
DEEP_STAGES = ("mod6", "mod7")
PARTS = ("teacher", "student", "optimizer")


@dataclass(frozen=True)
class Case:
    label: str
    stages: tuple[str, ...]
    share_prefix: bool


CASES = (
    Case("1 mod2-7", ALL_STAGES, True),
    Case("2 mod6-7 shared", DEEP_STAGES, True),
    Case("3 mod6-7 unshared", DEEP_STAGES, False),
)


@dataclass
class Measure:
    """One timed call, run inside `context` (entered and left outside the timing)."""

    name: str
    call: Callable[[], object]
    context: Callable[[], ContextManager[object]]
    seconds: list[float] = field(default_factory=list)
    peak: int = 0
    absolute_peak: int = 0


@dataclass(frozen=True)
class Row:
    case: str
    size: str
    batch: int
    a: float
    parts: tuple[float, ...]
    c: float
    mem_a: int
    mem_b: int
    mem_c: int
    absolute_a: int

    @property
    def b(self) -> float:
        return sum(self.parts)


# --- memory ---------------------------------------------------------------------------------------
def _status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    raise InputError(f"/proc/self/status: no {key} line; CPU peak memory needs Linux")


class CpuPeak:
    """Resident-set high-water mark above the resident set at `start`."""

    def __init__(self) -> None:
        libc = ctypes.CDLL(None)
        self._trim = getattr(libc, "malloc_trim", None)
        self.base = 0

    def start(self) -> None:
        if self._trim is not None:
            self._trim(0)
        self.base = _status_kib("VmRSS") * 1024
        Path("/proc/self/clear_refs").write_text("5")

    def stop(self) -> tuple[int, int]:
        """(peak above the start, absolute peak) in bytes."""
        peak = _status_kib("VmHWM") * 1024
        return peak - self.base, peak


class CudaPeak:
    """`torch.cuda.max_memory_allocated` above the memory allocated at `start`."""

    def __init__(self) -> None:
        self.base = 0

    def start(self) -> None:
        torch.cuda.synchronize()
        self.base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()

    def stop(self) -> tuple[int, int]:
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
        return peak - self.base, peak


# --- the measured calls ---------------------------------------------------------------------------
def dws_policy(teacher: torch.nn.Module, stages: Sequence[str]) -> dict[str, str]:
    """`dws` on every 3x3 conv of the given stages."""
    prefixes = tuple(f"{stage}." for stage in stages)
    return {name: "dws" for name, conv in convs(teacher).items()
            if name.startswith(prefixes) and conv.kernel_size == (3, 3)}


def build(size: str, stages: Sequence[str], batch: int, root: Path, device: torch.device) -> Distillation:
    width, crop = SIZES[size]
    teacher_settings = TeacherSettings(ARCH, width=width)
    teacher = teacher_settings.build(load=False)
    data = DataSettings(root=root, unlabeled=("leftImg8bit/train_extra",), crop=crop, batch_size=batch)
    settings = DistillSettings(train="plugged", bn="frozen")  # the plugs alone: the step's floor is well defined
    return Distillation(teacher, teacher_settings, dws_policy(teacher, stages), data, settings, device=device,
                        teacher_metrics={"miou": 0.0}, log=lambda line: None)


def measures(d: Distillation, images: torch.Tensor, labels: torch.Tensor, sharing: dict[str, bool]) -> list[Measure]:
    """a for each prefix setting in `sharing` (name: share), the parts of b, and c."""
    prefix = list(d.prefix)

    def distilling(share: bool) -> Callable[[], ContextManager[object]]:
        @contextlib.contextmanager
        def context():
            d.prefix = prefix if share else []
            try:
                with d._training_mode(d.plugged):
                    yield
            finally:
                d.prefix = prefix

        return context

    @contextlib.contextmanager
    def plain():
        """The student in the step's mode, outside `_training_mode`: no teacher hooks, nothing replayed."""
        d.student.train(d.settings.train == "all")
        try:
            yield
        finally:
            d.student.eval()
            d._student_out.clear()

    def teacher_forward() -> None:
        with d._autocast(), torch.no_grad():
            d.teacher(images)

    def student_pass() -> None:
        with d._autocast():
            out = d.student(images)
        out.float().mean().backward()

    def optimizer_step() -> None:
        d.optimizer.step()
        d.optimizer.zero_grad(set_to_none=True)

    def supervised() -> None:
        with d._autocast():
            supervised_step(d.student, d.optimizer, images, labels)

    return [
        *(Measure(name, lambda: d.step(images, None, d.plugged, update=True), distilling(share))
          for name, share in sharing.items()),
        Measure("teacher", teacher_forward, plain),
        Measure("student", student_pass, plain),
        Measure("optimizer", optimizer_step, plain),
        Measure("c", supervised, plain),
    ]


def run_measures(items: list[Measure], device: torch.device, warmup: int, repeats: int) -> None:
    """Warm up, then time every measure once per repeat, in turn."""
    peak = CudaPeak() if device.type == "cuda" else CpuPeak()
    for repeat in range(warmup + repeats):
        for item in items:
            with item.context():
                peak.start()
                started = time.perf_counter()
                item.call()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                elapsed = time.perf_counter() - started
                above, absolute = peak.stop()
            if repeat >= warmup:
                item.seconds.append(elapsed)
                item.peak, item.absolute_peak = max(item.peak, above), max(item.absolute_peak, absolute)


def bench_size(size: str, batch: int, root: Path, device: torch.device, warmup: int, repeats: int,
               log: Callable[[str], None]) -> list[Row]:
    width, crop = SIZES[size]
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, *crop, generator=generator)
    labels = torch.randint(0, NUM_CLASSES, (batch, *crop), generator=generator).to(device)
    rows: list[Row] = []
    for stages, cases in ((ALL_STAGES, CASES[:1]), (DEEP_STAGES, CASES[1:])):
        d = build(size, stages, batch, root, device)
        log(f"{size}: width {width}, {crop[0]}x{crop[1]}, batch {batch}, {len(d.plugged)} plugged, "
            f"frozen prefix shared: {', '.join(sorted(d.prefix)) or 'none'}")
        items = measures(d, d._to_device(images), labels, {case.label: case.share_prefix for case in cases})
        run_measures(items, device, warmup, repeats)
        by_name = {item.name: item for item in items}
        median = {name: statistics.median(item.seconds) for name, item in by_name.items()}
        rows += [
            Row(case.label, size, batch, median[case.label], tuple(median[part] for part in PARTS), median["c"],
                by_name[case.label].peak, max(by_name[part].peak for part in PARTS), by_name["c"].peak,
                by_name[case.label].absolute_peak)
            for case in cases
        ]
        del d, items, by_name
    return rows


# --- report ---------------------------------------------------------------------------------------
def table(rows: list[Row], device: torch.device) -> str:
    memory = "GPU MiB" if device.type == "cuda" else "RSS MiB"
    head = (f"{'case':<17} {'size':<5} {'a':>6} {'b':>6} {'= T':>6} {'+ S':>6} {'+ O':>6} {'c':>6} {'a/b':>5} "
            f"{'a/c':>5} {'img/s a':>8} {'img/s T':>8} {'peak a':>7} {'peak b':>7} {'peak c':>7} {'abs a':>7}")
    lines = [
        "a: distillation step; b: its necessary parts, T teacher forward + S student forward/backward + O optimizer;",
        f"c: supervised step. Seconds per step (median); peak {memory} above the memory before the call; "
        "abs a: absolute peak of a",
        head, "-" * len(head),
    ]
    for r in rows:
        lines.append(
            f"{r.case:<17} {r.size:<5} {r.a:6.3f} {r.b:6.3f} " + " ".join(f"{part:6.3f}" for part in r.parts)
            + f" {r.c:6.3f} {r.a / r.b:5.2f} {r.a / r.c:5.2f} "
            f"{r.batch / r.a:8.2f} {r.batch / r.parts[0]:8.2f} {r.mem_a / MIB:7.0f} {r.mem_b / MIB:7.0f} "
            f"{r.mem_c / MIB:7.0f} {r.absolute_a / MIB:7.0f}"
        )
    return "\n".join(lines)


def summary(rows: list[Row]) -> str:
    lines = []
    for size in dict.fromkeys(r.size for r in rows):
        by_case = {r.case: r for r in rows if r.size == size}
        first, shared, unshared = (by_case[case.label] for case in CASES)
        saved = unshared.a - shared.a
        lines += [
            f"{size}: sharing the frozen prefix (case 2 vs 3) saves {saved:.3f} s per step, "
            f"{saved / unshared.a:.0%} of the unshared step",
            f"{size}: case 1 a/b = {first.a / first.b:.2f} (at most 1.10: {'yes' if first.a / first.b <= 1.1 else 'NO'}); "
            f"case 2 a/b = {shared.a / shared.b:.2f} (below 1: {'yes' if shared.a < shared.b else 'NO'})",
        ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/distill_step.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--sizes", nargs="+", choices=tuple(SIZES),
                        help="default: small large on CPU, full on CUDA")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=None, help="default: 1 on CPU, 3 on CUDA")
    parser.add_argument("--repeats", type=int, default=None, help="default: 5 on CPU, 10 on CUDA")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="torch CPU threads")
    args = parser.parse_args(argv)
    for name in ("batch", "threads", "repeats"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise InputError(f"--{name}: expected an integer >= 1, got {getattr(args, name)}")
    if args.warmup is not None and args.warmup < 0:
        raise InputError(f"--warmup: expected an integer >= 0, got {args.warmup}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device is available")
    cuda = args.device == "cuda"
    device = torch.device(args.device)
    sizes = args.sizes or (["full"] if cuda else ["small", "large"])
    warmup = args.warmup if args.warmup is not None else (3 if cuda else 1)
    repeats = args.repeats or (10 if cuda else 5)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {device}"
          + (f" ({torch.cuda.get_device_name()}), bf16 autocast, channels_last" if cuda else
             f", {args.threads} threads, OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}")
          + f"; warm-up {warmup}, median of {repeats}")
    started = time.perf_counter()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp), train=2, val=1, size=(64, 64), extra=2)
        for size in sizes:
            rows += bench_size(size, args.batch, Path(tmp), device, warmup, repeats, print)
    print(table(rows, device))
    print(summary(rows))
    print(f"total {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    run_cli(main)
