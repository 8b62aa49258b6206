"""One distillation run: a student (teacher + policy) learns from the frozen teacher on unlabeled images.

Per step: one teacher forward without grad that records the outputs of the plugged layers (and of the
shared frozen prefix, see `trainable.parts.shared_prefix`) with forward hooks, then one student forward
and backward. What trains and how BatchNorm behaves: `trainable.parts`. Usable without Ray;
`search.trial` wraps it for a search.
"""
from __future__ import annotations

import contextlib
import itertools
import math
import random
import time
from pathlib import Path
from typing import Callable, Iterator, Mapping

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.tensorboard import SummaryWriter

from data.errors import InputError
from data.kinds import kind
from data.settings import DataSettings
from trainable import losses, parts, tasks
from trainable.checkpoint import save_atomic
from trainable.config import DistillSettings, TeacherSettings, pick_device
from trainable.inventory import convs, count_flops, count_params, output_classes
from trainable.loaders import labeled_train_set, train_loader, unlabeled_set, val_loader
from trainable.optim import make_optimizer, make_scheduler
from trainable.precision import amp_dtype, autocast
from trainable.surgery import apply_policy, plugged_layers

EpochCallback = Callable[[dict, "Distillation"], None]
RECALIBRATION_IMAGES = 512  # unlabeled images over which `distill.bn: recalibrate` estimates BatchNorm statistics


class NonFiniteLoss(RuntimeError):
    """The distillation loss became NaN or infinite: the run cannot go on."""


class _Replay(nn.Module):
    """Stands in for a frozen student module whose output the teacher has just computed."""

    def __init__(self, cache: dict[str, Tensor], name: str):
        super().__init__()
        self.cache, self.name = cache, name

    def forward(self, *args, **kwargs) -> Tensor:
        return self.cache[self.name]


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


class Distillation:
    """State and loop of one run; `fit` trains epoch by epoch and can resume from `state_dict()`."""

    def __init__(
        self,
        teacher: nn.Module,
        teacher_settings: TeacherSettings,
        policy: Mapping[str, str],
        data: DataSettings,
        settings: DistillSettings,
        log_dir: Path | None = None,
        device: torch.device | str | None = None,
        teacher_metrics: Mapping[str, float] | None = None,
        log: Callable[[str], None] = print,
    ):
        self.device = torch.device(device) if device is not None else pick_device()
        amp_dtype(self.device, settings.precision)  # refuse bf16 on a GPU without it before anything is built
        self.settings, self.data, self.log = settings, data, log
        self.teacher_settings, self.policy = teacher_settings, dict(policy)
        self.task = tasks.get(teacher_settings.task)
        if settings.w_edge > 0 and not losses.has_edge_output(teacher):
            raise InputError(f"distill.w_edge: expected 0 for teacher {teacher_settings.arch}, whose forward has no "
                             f"return_edge (no edge output to distil), got {settings.w_edge:g}")
        input_size = kind(data.dataset).input_size(data)
        self.num_classes = output_classes(teacher, input_size)
        self.teacher = teacher.to(self.device).eval().requires_grad_(False)
        torch.manual_seed(settings.seed)  # the plugs' initial weights: a run is determined by its settings
        self.student = apply_policy(self.teacher, self.policy).to(self.device)
        if self.device.type == "cuda":
            self.teacher.to(memory_format=torch.channels_last)
            self.student.to(memory_format=torch.channels_last)
        sample = torch.zeros(1, 3, *input_size, device=self.device)
        calls = parts.record_calls(self.student, sample)  # the forward's order, once
        self.plugged = parts.in_forward_order(calls, plugged_layers(self.policy))
        depth = {name: i + 1 for i, name in enumerate(parts.in_forward_order(calls, convs(self.teacher)))}
        self.depth_weights = losses.depth_weights([depth[name] for name in self.plugged])
        parts.configure(self.student, settings.train, self.plugged, calls)
        self.batchnorms = parts.affected_batchnorms(self.student, settings.train, self.plugged, calls)
        start = parts.start_of(calls, self.plugged)
        shares = settings.train != "all" and start is not None
        self.prefix = parts.shared_prefix(self.student, calls, start) if shares else []

        self.labeled = settings.w_ce > 0
        self.train_set = labeled_train_set(data) if self.labeled else unlabeled_set(data)
        self.val = val_loader(data, self.task.eval_batch_size(data))
        self.steps_per_epoch = self._steps_per_epoch()
        total_steps = max(1, settings.epochs * self.steps_per_epoch // settings.accumulate)
        trainable = [p for p in self.student.parameters() if p.requires_grad]
        self.optimizer = make_optimizer(trainable, settings) if trainable else None
        self.scheduler = make_scheduler(self.optimizer, settings, total_steps) if self.optimizer else None

        self.student_params = count_params(self.student)
        self.teacher_params = count_params(self.teacher)
        self.student_flops = count_flops(self.student, input_size)
        self.teacher_flops = count_flops(self.teacher, input_size)
        self.teacher_metrics = dict(teacher_metrics) if teacher_metrics is not None else None
        self.epoch = 0
        self.history: list[dict] = []
        self.last_eval: tasks.TaskResult | None = None
        self.writer = SummaryWriter(str(log_dir)) if log_dir is not None else None

        self._teacher_out: dict[str, Tensor] = {}
        self._student_out: dict[str, Tensor] = {}
        for name in self.plugged:
            self.student.get_submodule(name).register_forward_hook(self._recorder(self._student_out, name))

    # --- set-up -----------------------------------------------------------------------------------
    def _steps_per_epoch(self) -> int:
        batches = max(1, len(self.train_set) // self.data.batch_size)
        if self.settings.steps_per_epoch is not None:
            batches = min(batches, self.settings.steps_per_epoch)
        return batches

    @staticmethod
    def _recorder(store: dict[str, Tensor], name: str):
        def hook(module: nn.Module, args, output: Tensor) -> None:
            store[name] = output

        return hook

    # --- the loop ---------------------------------------------------------------------------------
    def active_layers(self, epoch: int) -> list[str]:
        """Plugged layers trained in `epoch` (0-based): all for oneshot, earliest first for progressive."""
        if self.settings.schedule == "oneshot" or not self.plugged:
            return self.plugged
        stages = min(len(self.plugged), self.settings.epochs)
        count = math.ceil(len(self.plugged) * min(epoch + 1, stages) / stages)
        return self.plugged[:count]

    @contextlib.contextmanager
    def _bypass(self, active: list[str]) -> Iterator[None]:
        """Plugged layers not yet active (progressive schedule) return the teacher layer's output instead."""
        handles = [
            self.student.get_submodule(n).register_forward_hook(
                lambda m, args, out, t=self.teacher.get_submodule(n): t(*args)
            )
            for n in self.plugged
            if n not in active
        ]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    @contextlib.contextmanager
    def _training_mode(self, active: list[str]) -> Iterator[None]:
        """Student in eval mode but for the BatchNorm layers `distill.bn: batch` trains, frozen prefix replayed.

        The teacher's recording hooks live only inside this context: a teacher shared by several
        runs (one Ray worker, many trials) never keeps hooks of a finished run.
        """
        self.student.eval()
        replaced = {name: self.student.get_submodule(name) for name in self.prefix}
        for name in self.prefix:
            _set_submodule(self.student, name, _Replay(self._teacher_out, name))
        hooks = [self.teacher.get_submodule(n).register_forward_hook(self._recorder(self._teacher_out, n))
                 for n in self.plugged + self.prefix]
        batch = self.batchnorms if self.settings.bn == "batch" else []
        try:
            with self._bypass(active), parts.batch_statistics(self.student, batch):
                yield
        finally:
            for hook in hooks:
                hook.remove()
            for name, module in replaced.items():
                _set_submodule(self.student, name, module)
            self.student.eval()
            self._teacher_out.clear()
            self._student_out.clear()

    def _batches(self, epoch: int) -> Iterator[tuple[Tensor, Tensor | None]]:
        for step, batch in enumerate(train_loader(self.train_set, self.data, self.settings.seed * 100_003 + epoch)):
            if step >= self.steps_per_epoch:
                return
            yield batch if self.labeled else (batch, None)

    def _to_device(self, images: Tensor) -> Tensor:
        images = images.to(self.device, non_blocking=True)
        return images.contiguous(memory_format=torch.channels_last) if self.device.type == "cuda" else images

    def _outputs(self, model: nn.Module, images: Tensor) -> tuple[Tensor, Tensor | None]:
        """The logits, and the edge probabilities when the run distils them (`w_edge` > 0): one forward either way."""
        if self.settings.w_edge == 0:
            return self.task.logits(model, images), None
        logits, edge = model(images, return_edge=True)
        return logits, edge

    def step(self, images: Tensor, target: Tensor | None, active: list[str], update: bool) -> dict[str, Tensor]:
        """One teacher forward (no grad), one student forward and backward; optimizer step when `update`.

        Returns the loss parts and the agreement as detached 0-d tensors on the device: nothing waits
        for the device here; `train_epoch` reads them once per epoch.
        """
        s = self.settings
        self._teacher_out.clear()
        self._student_out.clear()
        with autocast(self.device, self.settings.precision):
            with torch.no_grad():
                teacher_logits, teacher_edge = self._outputs(self.teacher, images)
            student_logits, student_edge = self._outputs(self.student, images)
            hint = sum(
                (w * losses.hint_loss(self._student_out[n], self._teacher_out[n])
                 for n, w in zip(self.plugged, self.depth_weights) if n in active),
                torch.zeros((), device=self.device),
            )
            kd = self.task.kd_loss(student_logits, teacher_logits, s.temperature)
            ce = (
                self.task.ce_loss(student_logits, target.to(self.device))
                if target is not None
                else torch.zeros((), device=self.device)
            )
            edge = (
                losses.edge_kd_loss(student_edge, teacher_edge)
                if s.w_edge > 0
                else torch.zeros((), device=self.device)
            )
            loss = s.w_hint * hint + s.w_kd * kd + s.w_ce * ce + s.w_edge * edge
        if self.optimizer is not None and loss.requires_grad:
            (loss / s.accumulate).backward()
            if update:
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.scheduler.step()
        parts = {"loss": loss, "loss_hint": hint, "loss_kd": kd, "loss_ce": ce, "loss_edge": edge,
                 "agreement": losses.agreement(student_logits, teacher_logits)}
        return {key: value.detach().float() for key, value in parts.items()}

    def train_epoch(self) -> dict[str, float]:
        epoch = self.epoch
        self._seed(epoch)
        active = self.active_layers(epoch)
        per_step: list[dict[str, Tensor]] = []
        images_seen = 0
        started = time.perf_counter()
        with self._training_mode(active):
            for step, (images, target) in enumerate(self._batches(epoch)):
                update = (step + 1) % self.settings.accumulate == 0 or step + 1 == self.steps_per_epoch
                per_step.append(self.step(self._to_device(images), target, active, update))
                images_seen += images.shape[0]
        table = {key: torch.stack([parts[key] for parts in per_step]).cpu() for key in per_step[0]}
        bad = (~torch.isfinite(table["loss"])).nonzero()
        if len(bad):
            step = int(bad[0])
            raise NonFiniteLoss(f"loss {table['loss'][step].item()} at epoch {epoch + 1}, step {step + 1}")
        elapsed = time.perf_counter() - started
        if self.writer is not None:
            for step, loss in enumerate(table["loss"].tolist()):
                self.writer.add_scalar("train/loss", loss, epoch * self.steps_per_epoch + step)
        metrics = {key: values.double().mean().item() for key, values in table.items()}
        metrics["images_per_s"] = images_seen / elapsed if elapsed > 0 else 0.0
        metrics["active_layers"] = len(active)
        metrics["lr"] = self.optimizer.param_groups[0]["lr"] if self.optimizer else 0.0
        return metrics

    def _seed(self, epoch: int) -> None:
        seed = self.settings.seed * 100_003 + epoch
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        random.seed(seed)

    def recalibrate(self) -> int:
        """Running statistics of the affected BatchNorm layers estimated anew over up to RECALIBRATION_IMAGES
        training images (in epoch 0's order); returns how many images it saw."""
        loader = train_loader(self.train_set, self.data, self.settings.seed * 100_003)
        batches = (self._to_device(batch[0] if self.labeled else batch) for batch in loader)
        return parts.recalibrate(self.student, self.batchnorms, itertools.islice(
            batches, max(1, RECALIBRATION_IMAGES // self.data.batch_size)))

    def evaluate_student(self) -> tasks.TaskResult:
        self.last_eval = self.task.evaluate(self.student, self.val, self.data, self.num_classes, self.device)
        return self.last_eval

    def evaluate_teacher(self) -> dict[str, float]:
        """The teacher's val metrics, measured once (or given by the caller)."""
        if self.teacher_metrics is None:
            self.teacher_metrics = self.task.evaluate(self.teacher, self.val, self.data, self.num_classes, self.device).values
        return self.teacher_metrics

    def run_epoch(self) -> dict:
        """Train one epoch, evaluate, log; returns the epoch's metrics."""
        started = time.perf_counter()
        metrics = self.train_epoch()
        with self._bypass(self.active_layers(self.epoch)):
            if self.settings.bn == "recalibrate":
                self.recalibrate()
            scores = self.evaluate_student().values
        self.epoch += 1
        metrics.update(
            epoch=self.epoch,
            **scores,
            **{f"teacher_{name}": value for name, value in self.evaluate_teacher().items()},
            params=self.student_params,
            flops=self.student_flops,
            param_ratio=self.student_params / self.teacher_params,
            flop_ratio=self.student_flops / self.teacher_flops,
            epoch_s=time.perf_counter() - started,
        )
        self.history.append(metrics)
        self._log_epoch(metrics)
        return metrics

    def _log_epoch(self, m: dict) -> None:
        score = self.task.score
        self.log(
            f"epoch {m['epoch']}/{self.settings.epochs}  {self.task.label} {m[score]:.4f} (teacher {m[f'teacher_{score}']:.4f})  "
            f"loss {m['loss']:.4f} [hint {m['loss_hint']:.4f} kd {m['loss_kd']:.4f} ce {m['loss_ce']:.4f} "
            f"edge {m['loss_edge']:.4f}]  "
            f"agree {m['agreement']:.3f}  {m['images_per_s']:.1f} img/s  params {m['param_ratio']:.1%}"
        )
        if self.writer is None:
            return
        scalars = (score, f"teacher_{score}", "loss", "loss_hint", "loss_kd", "loss_ce", "loss_edge", "agreement",
                   "images_per_s", "lr")
        for key in scalars:
            self.writer.add_scalar(f"epoch/{key}", m[key], m["epoch"])
        images, _ = next(iter(self.val))
        with torch.no_grad(), self._bypass(self.active_layers(self.epoch - 1)):
            images = images[:1].to(self.device)
            grid = self.task.preview(images, self.task.logits(self.teacher, images), self.task.logits(self.student, images))
        if grid is not None:
            self.writer.add_image("val/input_teacher_student", grid, m["epoch"])
        self.writer.flush()

    def fit(self, on_epoch: EpochCallback | None = None) -> list[dict]:
        """Run the remaining epochs; `on_epoch(metrics, self)` after each, e.g. to save a checkpoint and report."""
        while self.epoch < self.settings.epochs:
            metrics = self.run_epoch()
            if on_epoch is not None:
                on_epoch(metrics, self)
        if self.writer is not None:
            self.writer.close()
        return self.history

    # --- checkpoints ------------------------------------------------------------------------------
    def trained_state(self) -> dict[str, Tensor]:
        """Student state that may differ from the teacher's: the plugged layers, the modules that train and the
        running statistics of the BatchNorm layers that `distill.bn` does not freeze (everything under `all`)."""
        state = self.student.state_dict()
        if self.settings.train == "all":
            return state
        changed = set(self.plugged)
        changed |= {name for name, module in self.student.named_modules()
                    if any(p.requires_grad for p in module.parameters(recurse=False))}
        if self.settings.bn != "frozen":
            changed |= set(self.batchnorms)
        prefixes = tuple(f"{name}." for name in changed)
        return {k: v for k, v in state.items() if k.startswith(prefixes)}

    def state_dict(self) -> dict:
        return {
            "policy": self.policy,
            "student": self.trained_state(),
            "optimizer": self.optimizer.state_dict() if self.optimizer else None,
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "epoch": self.epoch,
            "history": self.history,
            "teacher_metrics": self.teacher_metrics,
            "rng": torch.get_rng_state(),
        }

    def init_plugs(self, states: Mapping[str, Mapping[str, Tensor]]) -> None:
        """Start plugged layers from trained weights (the plug library's), before the first step."""
        for layer, state in states.items():
            self.student.get_submodule(layer).load_state_dict(state)

    def init_student(self, state: Mapping) -> None:
        """Take the student weights of a run checkpoint (e.g. a search trial's) and nothing else."""
        if dict(state["policy"]) != self.policy:
            raise InputError("checkpoint was written for another policy than this run's")
        missing = set(self.trained_state()) - set(state["student"])
        if missing:
            raise InputError(f"checkpoint lacks student weights (first: {sorted(missing)[0]})")
        self.student.load_state_dict(state["student"], strict=False)

    def load_state_dict(self, state: Mapping) -> None:
        """Resume exactly: student, optimizer, schedule, epoch, history and RNG state."""
        self.init_student(state)
        if self.optimizer is not None and state["optimizer"] is not None:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
        self.epoch = int(state["epoch"])
        self.history = list(state["history"])
        self.teacher_metrics = state["teacher_metrics"]
        torch.set_rng_state(state["rng"])

    def save(self, path: Path) -> None:
        save_atomic(self.state_dict(), path)
