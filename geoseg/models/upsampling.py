"""Learned upsampling initialised to bilinear interpolation (FCN's deconvolution layers)."""

from __future__ import annotations

import torch
from torch import nn


def bilinear_kernel(channels: int, size: int) -> torch.Tensor:
    """A ``channels x channels x size x size`` transposed-convolution weight doing bilinear
    interpolation per channel (no mixing between channels), as in the FCN reference code."""
    factor = (size + 1) // 2
    centre = factor - 1 if size % 2 == 1 else factor - 0.5
    og = torch.arange(size, dtype=torch.float64)
    filt = 1 - (og - centre).abs() / factor
    kernel = (filt[:, None] * filt[None, :]).float()
    weight = torch.zeros(channels, channels, size, size)
    weight[range(channels), range(channels)] = kernel
    return weight


def bilinear_upsampler(channels: int, factor: int, learnable: bool = True) -> nn.ConvTranspose2d:
    """Transposed convolution upsampling by ``factor`` (output exactly ``factor`` x the input),
    its weights set to bilinear interpolation; trained further when ``learnable``."""
    size = 2 * factor
    up = nn.ConvTranspose2d(
        channels, channels, size, stride=factor, padding=factor // 2, bias=False
    )
    with torch.no_grad():
        up.weight.copy_(bilinear_kernel(channels, size))
    up.weight.requires_grad_(learnable)
    return up
