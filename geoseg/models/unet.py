"""U-Net (Ronneberger et al. 2015): contracting and expanding paths joined by skip concatenation.

Convolutions are 'same'-padded so any input that is a multiple of the output stride works; the
context the paper gets from 'valid' convolutions comes from geoseg's overlap tiles instead.
The expanding path upsamples by one of the three classic methods: learned transposed
convolution, max-unpooling with the encoder's pooling indices, or bilinear interpolation
followed by a convolution.

With ``encoder`` (resnet18 | resnet34 | resnet50) the contracting path is a torchvision ResNet
(output stride 32, five skips) that can start from pretrained weights, and the expanding path
has ``8, 4, 2, 1, 1/2 x base_width`` filters; ``depth`` does not apply (a ResNet halves 5 times).
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
        encoder: str | None = None,
    ) -> None:
        super().__init__()
        self.encoder_name = encoder
        if encoder is not None:
            self._build_with_encoder(in_channels, num_classes, base_width, upsample, encoder)
            return
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
        self.ups = nn.ModuleList(
            [Up(widths[i], widths[i - 1], upsample) for i in range(depth, 0, -1)]
        )
        self.decoders = nn.ModuleList(
            [ConvBlock(2 * widths[i - 1], widths[i - 1]) for i in range(depth, 0, -1)]
        )
        self.head = nn.Conv2d(widths[0], num_classes, 1)

    def _build_with_encoder(
        self, in_channels: int, num_classes: int, base_width: int, upsample: str, encoder: str
    ) -> None:
        from geoseg.models.encoders import ResNetEncoder

        if upsample not in ("transpose", "bilinear"):
            raise ValueError(
                f"upsample {upsample!r} does not work with an encoder; use transpose or bilinear"
            )
        self.encoder = ResNetEncoder(encoder, in_channels)
        self.depth = 5
        self.upsample = upsample
        self.output_stride = 32
        skips = self.encoder.channels[:-1][::-1] + [0]  # strides 16, 8, 4, 2, then none at 1
        widths = [max(4, base_width * 8 // 2**i) for i in range(4)] + [max(4, base_width // 2)]
        cin = self.encoder.channels[-1]
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for skip, width in zip(skips, widths):
            self.ups.append(Up(cin, width, upsample))
            self.decoders.append(ConvBlock(width + skip, width))
            cin = width
        self.head = nn.Conv2d(cin, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.encoder_name is not None:
            feats = self.encoder(x)
            x = feats.pop()
            for up, dec in zip(self.ups, self.decoders):
                x = up(x, None)
                x = dec(torch.cat([feats.pop(), x], dim=1) if feats else x)
            return self.head(x)
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
