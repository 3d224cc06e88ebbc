"""Measure a network's receptive field from the network itself, not from a table.

The support of the input gradient of a few output pixels (one per stride phase) is the set of
input pixels they depend on; its half-width is the radius predict needs as a tile margin.
The networks here are isotropic (square kernels and pooling), so the radius is measured along
the width of a strip a few strides high, which makes very large receptive fields cheap to find.
"""

from __future__ import annotations

import torch
from torch import nn

from geoseg.errors import NonLocalError

__all__ = ["NonLocalError", "measure_receptive_field"]


def measure_receptive_field(
    network: nn.Module,
    in_channels: int,
    stride: int,
    trials: int = 2,
    start_size: int = 128,
    max_size: int = 8192,
    seed: int = 0,
) -> int:
    """Radius in input pixels of the receptive field of one output pixel (the worst stride phase)."""
    was_training = network.training
    network.eval()
    param = next(network.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    size = max(start_size, 8 * stride)
    size = -(-size // stride) * stride
    gen = torch.Generator().manual_seed(seed)
    try:
        while True:
            radius, touches = _support_radius(
                network, in_channels, stride, size, trials, gen, device
            )
            if not touches:
                return radius
            if size >= max_size:
                raise NonLocalError(
                    f"receptive field reaches past {max_size} pixels; the network is not local"
                )
            size *= 2
    finally:
        network.train(was_training)


def _support_radius(
    network: nn.Module,
    in_channels: int,
    stride: int,
    size: int,
    trials: int,
    gen: torch.Generator,
    device: torch.device,
) -> tuple[int, bool]:
    centre = (size // 2) // stride * stride
    height = max(64, 4 * stride)
    row = height // 2 // stride * stride
    phases = sorted({0, stride // 2, stride - 1})
    pixels = [(row + dy, centre + dx) for dy in phases for dx in phases]
    support = torch.zeros(size, dtype=torch.bool)
    for _ in range(trials):
        x = torch.randn(1, in_channels, height, size, generator=gen).to(device).requires_grad_(True)
        out = network(x)
        weights = torch.rand(len(pixels), out.shape[1], generator=gen).to(device) + 0.5
        target = sum((out[0, :, y, xx] * w).sum() for (y, xx), w in zip(pixels, weights))
        (grad,) = torch.autograd.grad(target, x)
        support |= (grad[0].abs().sum((0, 1)) > 0).cpu()
    (xs,) = torch.nonzero(support, as_tuple=True)
    if len(xs) == 0:
        return 0, False
    lo, hi = int(xs.min()), int(xs.max())
    first, last = centre + phases[0], centre + phases[-1]
    radius = max(first - lo, hi - last, 0)
    touches = lo == 0 or hi == size - 1
    return radius, touches
