"""Distillation losses: hint loss at plugged layers, pixel-wise logit KD and binary KD of an edge output."""
from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def hint_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """Mean squared error normalised by the teacher output's mean square, so layers of any scale compare."""
    teacher = teacher.float()
    return F.mse_loss(student.float(), teacher) / teacher.pow(2).mean().clamp_min(1e-6)


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """KL(teacher ‖ student) of the class distributions softened by `temperature`, summed over classes, mean over
    images (classification) or pixels (segmentation).

    Without Hinton's T² factor: it is there to keep a soft term's gradients comparable to a hard-label loss's,
    and here it would put the logit term at T = 4 some 20 times above the normalised hint loss (measured on a
    real CIFAR ResNet-20 with `dws` plugs: 18 against 0.7 at the start). Without it both terms start near 1.
    """
    log_s = F.log_softmax(student_logits.float() / temperature, dim=1)
    log_t = F.log_softmax(teacher_logits.float() / temperature, dim=1)
    positions = log_s.numel() // log_s.shape[1]
    return F.kl_div(log_s, log_t, log_target=True, reduction="sum") / positions


def has_edge_output(model: nn.Module) -> bool:
    """Whether `model(x, return_edge=True)` gives (logits, edge probabilities N×1×H×W), as GSCNN's forward does."""
    return "return_edge" in inspect.signature(model.forward).parameters


def edge_kd_loss(student_edge: Tensor, teacher_edge: Tensor) -> Tensor:
    """Binary KL(teacher ‖ student) of the per-pixel boundary probabilities, mean over pixels.

    The binary cross-entropy with the teacher's probability as soft target, less the teacher's entropy
    (no gradient), so that it is 0 where the student agrees, like `kd_loss`. No temperature: the models
    return probabilities, and their logits cannot be recovered where a float32 sigmoid saturates at 0 or 1.
    Per pixel in float64 (the difference of two float32 terms of about 0.7 would round small divergences
    to 0), outside autocast (binary_cross_entropy is not autocast-safe; its logs clamp at -100).
    """
    with torch.autocast(student_edge.device.type, enabled=False):
        student, teacher = student_edge.double(), teacher_edge.double()
        entropy = -(torch.xlogy(teacher, teacher) + torch.xlogy(1 - teacher, 1 - teacher))
        return (F.binary_cross_entropy(student, teacher, reduction="none") - entropy).mean().float()


def depth_weights(depths: list[int]) -> list[float]:
    """Weights proportional to each plugged layer's depth (1-based position among the teacher's convs), summing to 1."""
    total = float(sum(depths))
    return [d / total for d in depths]


def agreement(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """Fraction of pixels (or samples) where the student's argmax equals the teacher's, as a 0-d tensor."""
    with torch.no_grad():
        return (student_logits.max(1).indices == teacher_logits.max(1).indices).float().mean()
