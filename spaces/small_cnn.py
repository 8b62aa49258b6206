"""The classification demo's teacher, a model file of one's own (not in the zoo): spaces/demo_classification.yaml
names it `small_cnn:small_cnn`, imported from this folder.

`small_cnn(num_classes, width)`: three stages of two 3x3 conv-BatchNorm-ReLU blocks (widths w, 2w, 4w), a 2x2
max-pool after the first two stages, global average pooling and a linear classifier (a small VGG).
"""
from __future__ import annotations

from torch import Tensor, nn


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class SmallCNN(nn.Module):
    def __init__(self, num_classes: int, width: int) -> None:
        super().__init__()
        widths = (width, 2 * width, 4 * width)
        self.stage1 = nn.Sequential(_block(3, widths[0]), _block(widths[0], widths[0]))
        self.stage2 = nn.Sequential(_block(widths[0], widths[1]), _block(widths[1], widths[1]))
        self.stage3 = nn.Sequential(_block(widths[1], widths[2]), _block(widths[2], widths[2]))
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(widths[2], num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stage3(self.pool(self.stage2(self.pool(self.stage1(x)))))
        return self.fc(x.mean((2, 3)))


def small_cnn(num_classes: int = 8, width: int = 16) -> SmallCNN:
    return SmallCNN(num_classes, width)
