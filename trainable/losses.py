"""Distillation losses: hint loss at plugged layers and pixel-wise logit KD."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def hint_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """Mean squared error normalised by the teacher output's mean square, so layers of any scale compare."""
    teacher = teacher.float()
    return F.mse_loss(student.float(), teacher) / teacher.pow(2).mean().clamp_min(1e-6)


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """T² · KL(teacher ‖ student) of the softened class distributions, summed over classes, mean over pixels."""
    log_s = F.log_softmax(student_logits.float() / temperature, dim=1)
    log_t = F.log_softmax(teacher_logits.float() / temperature, dim=1)
    positions = log_s.numel() // log_s.shape[1]
    return F.kl_div(log_s, log_t, log_target=True, reduction="sum") / positions * temperature**2


def depth_weights(depths: list[int]) -> list[float]:
    """Weights proportional to each plugged layer's depth (1-based position among the teacher's convs), summing to 1."""
    total = float(sum(depths))
    return [d / total for d in depths]


def agreement(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """Fraction of pixels (or samples) where the student's argmax equals the teacher's, as a 0-d tensor."""
    with torch.no_grad():
        return (student_logits.max(1).indices == teacher_logits.max(1).indices).float().mean()
