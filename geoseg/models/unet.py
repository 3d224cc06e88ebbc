"""U-Net (Ronneberger et al. 2015): contracting and expanding paths joined by skip concatenation.

Convolutions are 'same'-padded so any input that is a multiple of the output stride works; the
context the paper gets from 'valid' convolutions comes from geoseg's overlap tiles instead.
The expanding path upsamples by one of the three classic methods: learned transposed
convolution, max-unpooling with the encoder's pooling indices, or bilinear interpolation
followed by a convolution.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

UPSAMPLE_METHODS = ("transpose", "unpool", "bilinear")


class ConvBlock(nn.Sequential):
    """Two 3x3 convolutions, each followed by batch norm and ReLU."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class Up(nn.Module):
    """Upsample by 2 from ``in_channels`` to ``out_channels`` with the chosen method."""

    def __init__(self, in_channels: int, out_channels: int, method: str) -> None:
        super().__init__()
        self.method = method
        if method == "transpose":
            self.up = nn.ConvTranspose2d(in_channels, out_channels, 2, stride=2)
        elif method == "bilinear":
            self.up = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        elif method == "unpool":
            self.up = nn.Conv2d(in_channels, out_channels, 1)
        else:  # pragma: no cover - checked by UNet
            raise ValueError(method)

    def forward(self, x: torch.Tensor, indices: torch.Tensor | None) -> torch.Tensor:
        if self.method == "transpose":
            return self.up(x)
        if self.method == "bilinear":
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
            return self.up(x)
        x = self.up(x)
        assert indices is not None
        return F.max_unpool2d(x, indices, 2, 2)


class UNet(nn.Module):
    """U-Net with ``depth`` poolings (output stride 2**depth) and ``base_width`` first-level filters."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        depth: int = 4,
        base_width: int = 32,
        upsample: str = "transpose",
    ) -> None:
        super().__init__()
        if upsample not in UPSAMPLE_METHODS:
            raise ValueError(
                f"unknown upsample {upsample!r}; choose one of {', '.join(UPSAMPLE_METHODS)}"
            )
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self.depth = depth
        self.upsample = upsample
        self.output_stride = 2**depth
        widths = [base_width * 2**i for i in range(depth + 1)]
        self.encoders = nn.ModuleList(
            [ConvBlock(in_channels, widths[0])]
            + [ConvBlock(widths[i - 1], widths[i]) for i in range(1, depth + 1)]
        )
        self.ups = nn.ModuleList([Up(widths[i], widths[i - 1], upsample) for i in range(depth, 0, -1)])
        self.decoders = nn.ModuleList(
            [ConvBlock(2 * widths[i - 1], widths[i - 1]) for i in range(depth, 0, -1)]
        )
        self.head = nn.Conv2d(widths[0], num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips: list[torch.Tensor] = []
        indices: list[torch.Tensor | None] = []
        for i, enc in enumerate(self.encoders):
            x = enc(x)
            if i < self.depth:
                skips.append(x)
                if self.upsample == "unpool":
                    x, idx = F.max_pool2d(x, 2, 2, return_indices=True)
                    indices.append(idx)
                else:
                    x = F.max_pool2d(x, 2, 2)
                    indices.append(None)
        for up, dec in zip(self.ups, self.decoders):
            skip = skips.pop()
            x = up(x, indices.pop())
            x = dec(torch.cat([skip, x], dim=1))
        return self.head(x)
