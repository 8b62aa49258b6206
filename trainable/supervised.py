"""Plain supervised training (cross-entropy on labels): how the demo gets its teacher, and the benchmark's baseline step."""
from __future__ import annotations

import time
from dataclasses import replace
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from data.labels import IGNORE_INDEX
from trainable.config import DistillSettings
from data.settings import DataSettings
from trainable.evaluate import evaluate
from trainable.loaders import labeled_train_set, train_loader, val_loader
from trainable.optim import make_optimizer, make_scheduler


def supervised_step(model: nn.Module, optimizer: torch.optim.Optimizer, images: Tensor, target: Tensor) -> float:
    loss = F.cross_entropy(model(images), target, ignore_index=IGNORE_INDEX)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item()


def train_supervised(
    model: nn.Module,
    data: DataSettings,
    epochs: int,
    lr: float,
    batch_size: int,
    num_classes: int,
    device: torch.device,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> float:
    """Train `model` on the labeled train split; returns its val mIoU after the last epoch."""
    data = replace(data, batch_size=batch_size)
    settings = DistillSettings(epochs=epochs, lr=lr, optimizer="adamw", lr_schedule="poly", warmup_steps=0)
    dataset = labeled_train_set(data)
    steps = max(1, len(dataset) // batch_size)
    optimizer = make_optimizer(model.parameters(), settings)
    scheduler = make_scheduler(optimizer, settings, epochs * steps)
    model.to(device)
    miou = float("nan")
    for epoch in range(epochs):
        torch.manual_seed(seed * 100_003 + epoch)
        model.train()
        started, total = time.perf_counter(), 0.0
        for images, target in train_loader(dataset, data, seed * 100_003 + epoch):
            total += supervised_step(model, optimizer, images.to(device), target.to(device))
            scheduler.step()
        model.eval()
        last = epoch + 1 == epochs
        if last or (epoch + 1) % 5 == 0:
            miou = evaluate(model, val_loader(data), data.eval, num_classes, device).miou
        log(
            f"teacher epoch {epoch + 1}/{epochs}  loss {total / steps:.4f}  "
            + (f"val mIoU {miou:.4f}  " if last or (epoch + 1) % 5 == 0 else "")
            + f"({time.perf_counter() - started:.1f}s)"
        )
    return miou
