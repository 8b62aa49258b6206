"""`in_mode`: train or eval mode for a block, then every submodule back in its own mode; tasks evaluate under it."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from data.settings import DataSettings
from trainable import tasks
from trainable.modes import in_mode


def _net() -> nn.Sequential:
    """A training network whose BatchNorm is frozen (eval mode): the mode a submodule may hold apart from its parent."""
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)).train()
    net[1].eval()
    return net


def _modes(net: nn.Module) -> list[bool]:
    return [module.training for module in net.modules()]


@pytest.mark.parametrize("training", [False, True])
def test_in_mode_sets_every_submodule_then_restores_each(training):
    net = _net()
    before = _modes(net)
    with in_mode(net, training=training):
        assert _modes(net) == [training] * len(before)
    assert _modes(net) == before


def test_in_mode_restores_after_an_exception():
    net = _net()
    before = _modes(net)
    with pytest.raises(RuntimeError), in_mode(net, training=False):
        raise RuntimeError("boom")
    assert _modes(net) == before


def test_in_mode_of_several_modules_leaves_the_others():
    net = nn.Sequential(nn.BatchNorm2d(2), nn.BatchNorm2d(2), nn.BatchNorm2d(2)).eval()
    with in_mode(net[0], net[2], training=True):
        assert _modes(net) == [False, True, False, True]
    assert _modes(net) == [False] * 4


class _Fixed(nn.Module):
    """Logits that rank the classes 0, 1, 2, ... for every image, whatever the input."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.scores = nn.Parameter(torch.arange(num_classes, 0, -1, dtype=torch.float32))
        self.norm = nn.BatchNorm1d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scores.expand(x.shape[0], -1)


def test_classification_counts_top_k_over_batches_and_restores_modes(tmp_path):
    model = _Fixed(6).train()
    model.norm.eval()
    target = torch.tensor([0, 1, 4, 5, 0, 2, 3])  # top-1 hits: the two 0s; top-5 (classes 0-4): all but the 5
    loader = [(torch.zeros(4, 3, 2, 2), target[:4]), (torch.zeros(3, 3, 2, 2), target[4:])]
    result = tasks.get(tasks.Classification.name).evaluate(model, loader, DataSettings(root=tmp_path), num_classes=6)
    assert result.values == pytest.approx({"top1": 2 / 7, "top5": 6 / 7})
    assert result.details == {"images": 7}
    assert model.training and not model.norm.training


def test_an_empty_val_split_scores_nan(tmp_path):
    for name, num_classes in ((tasks.Classification.name, 3), (tasks.Segmentation.name, 3)):
        task = tasks.get(name)
        result = task.evaluate(_Fixed(num_classes), [], DataSettings(root=tmp_path), num_classes)
        assert all(value != value for value in result.values.values())  # NaN
        assert list(result.values) == list(task.metrics(num_classes))
