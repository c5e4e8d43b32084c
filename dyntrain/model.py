"""The paper's network (Table 1): 14 3x3 convolutions with ReLU, three max pools, global average pool, FC.

Table 1 goes from 8x8x64 to 4x4x128 with no pooling in between; read literally, the first
64->128 convolution has stride 2, and that is how it is built here. `batchnorm=True` adds a
BatchNorm after every convolution (not in the paper). The network returns logits: the paper's
softmax lives in the cross-entropy loss.
"""

from __future__ import annotations

import torch
from torch import nn

# (in_channels, out_channels, stride) per convolution; "M" = 2x2 max pool.
TABLE_1 = [
    (3, 32, 1), (32, 32, 1), (32, 32, 1), "M",  # 32x32x32 -> 16x16x32
    (32, 64, 1), (64, 64, 1), (64, 64, 1), (64, 64, 1), "M",  # 16x16x64 -> 8x8x64
    (64, 128, 2), (128, 128, 1), (128, 128, 1), (128, 128, 1), "M",  # 4x4x128 -> 2x2x128
    (128, 128, 1), (128, 128, 1), (128, 128, 1),  # 2x2x128
]


class PaperNet(nn.Module):
    def __init__(self, num_classes: int = 10, batchnorm: bool = False):
        super().__init__()
        layers: list[nn.Module] = []
        for spec in TABLE_1:
            if spec == "M":
                layers.append(nn.MaxPool2d(2))
                continue
            cin, cout, stride = spec
            layers.append(nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=not batchnorm))
            if batchnorm:
                layers.append(nn.BatchNorm2d(cout))
            layers.append(nn.ReLU(inplace=True))
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, num_classes)]
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)
