"""Plain supervised training (cross-entropy on labels): how the demo gets its teacher, and the benchmark's baseline step."""
from __future__ import annotations

import time
from dataclasses import replace
from typing import Callable

import torch
from torch import Tensor, nn

from data.settings import DataSettings
from trainable.config import DistillSettings
from trainable.loaders import labeled_train_set, train_loader, val_loader
from trainable.optim import make_optimizer, make_scheduler
from trainable.tasks import Task


def supervised_step(task: Task, model: nn.Module, optimizer: torch.optim.Optimizer, images: Tensor, target: Tensor) -> float:
    loss = task.ce_loss(task.logits(model, images), target)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item()


def train_supervised(
    model: nn.Module,
    task: Task,
    data: DataSettings,
    epochs: int,
    lr: float,
    batch_size: int,
    num_classes: int,
    device: torch.device,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> dict[str, float]:
    """Train `model` on the labeled train split; returns its val metrics after the last epoch."""
    data = replace(data, batch_size=batch_size)
    settings = DistillSettings(epochs=epochs, lr=lr, optimizer="adamw", lr_schedule="poly", warmup_steps=0)
    dataset = labeled_train_set(data)
    steps = max(1, len(dataset) // batch_size)
    optimizer = make_optimizer(model.parameters(), settings)
    scheduler = make_scheduler(optimizer, settings, epochs * steps)
    model.to(device)
    scores: dict[str, float] = {}
    for epoch in range(epochs):
        torch.manual_seed(seed * 100_003 + epoch)
        model.train()
        started, total = time.perf_counter(), 0.0
        for images, target in train_loader(dataset, data, seed * 100_003 + epoch):
            total += supervised_step(task, model, optimizer, images.to(device), target.to(device))
            scheduler.step()
        model.eval()
        scored = epoch + 1 == epochs or (epoch + 1) % 5 == 0
        if scored:
            scores = task.evaluate(model, val_loader(data, task.eval_batch_size(data)), data, num_classes, device).values
        shown = "".join(f"val {name} {value:.4f}  " for name, value in scores.items()) if scored else ""
        log(f"teacher epoch {epoch + 1}/{epochs}  loss {total / steps:.4f}  {shown}({time.perf_counter() - started:.1f}s)")
    return scores
