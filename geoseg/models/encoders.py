"""ResNet encoders (torchvision's layers, random initialisation) for the U-Net.

The encoder keeps torchvision's module names (``conv1``, ``bn1``, ``layer1`` .. ``layer4``), so
torchvision's and torchgeo's ResNet state dicts load into it key for key; its average pooling
and classifier are left out, which keeps it local (tiling-safe).
"""

from __future__ import annotations

import torch
from torch import nn

RESNET_ENCODERS = ("resnet18", "resnet34", "resnet50")


class ResNetEncoder(nn.Module):
    """ResNet-18/34/50 returning the features at strides 2, 4, 8, 16 and 32."""

    def __init__(self, name: str, in_channels: int) -> None:
        super().__init__()
        if name not in RESNET_ENCODERS:
            raise ValueError(
                f"unknown encoder {name!r}; choose one of {', '.join(RESNET_ENCODERS)}"
            )
        from torchvision import models  # 160 MB and 3 s: only when building one

        net = getattr(models, name)(weights=None)
        self.name = name
        self.conv1 = (
            net.conv1
            if in_channels == 3
            else nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        )
        self.bn1, self.relu, self.maxpool = net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            net.layer1,
            net.layer2,
            net.layer3,
            net.layer4,
        )
        expansion = 4 if name == "resnet50" else 1
        self.channels = [64, 64 * expansion, 128 * expansion, 256 * expansion, 512 * expansion]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x0 = self.relu(self.bn1(self.conv1(x)))
        x1 = self.layer1(self.maxpool(x0))
        x2 = self.layer2(x1)
        x3 = self.layer3(x2)
        return [x0, x1, x2, x3, self.layer4(x3)]
