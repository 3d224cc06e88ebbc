"""Fully-connected CRF post-processing (DeepLab v1), as a truncated-window mean field.

The dense CRF of Krähenbühl & Koltun couples every pair of pixels through a Gaussian kernel
on position (smoothness) and a bilateral kernel on position and colour (edges). Here the
kernel is truncated to a (2r+1)^2 window, as in ConvCRF (Teichmann & Cipolla 2018): exact
mean-field updates, written in PyTorch, local, so that ``iterations * r`` added to the tile
margin keeps tiled prediction seamless. Messages are normalised by the kernel's sum at each
pixel (like pydensecrf's default normalisation), so the weights are on the logit scale.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from geoseg.options import CRFParams

__all__ = ["CRFParams", "dense_crf"]


def _shift(x: torch.Tensor, dy: int, dx: int, r: int) -> torch.Tensor:
    """``x`` (N x C x H x W) moved so that pixel (i, j) holds (i + dy, j + dx); zeros outside."""
    h, w = x.shape[-2:]
    padded = F.pad(x, (r, r, r, r))
    return padded[..., r + dy : r + dy + h, r + dx : r + dx + w]


def dense_crf(
    logits: torch.Tensor, image: torch.Tensor, params: CRFParams = CRFParams()
) -> torch.Tensor:
    """Log-probabilities after ``params.iterations`` mean-field updates (N x K x H x W).

    ``logits`` are the network's unary scores, ``image`` the normalised input (N x C x H x W).
    Pixels outside the tile contribute nothing; the margin absorbs that edge effect.
    """
    r = params.radius
    logits = logits.float()
    image = image.float()
    ones = torch.ones_like(image[:, :1])
    offsets = [(dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1) if (dy, dx) != (0, 0)]
    kernels = []
    total = torch.zeros_like(ones)
    for dy, dx in offsets:
        d2 = float(dy * dy + dx * dx)
        colour = (image - _shift(image, dy, dx, r)).pow(2).mean(1, keepdim=True)
        k = params.w_bilateral * torch.exp(
            -d2 / (2 * params.theta_alpha**2) - colour / (2 * params.theta_beta**2)
        )
        k = k + params.w_gaussian * math.exp(-d2 / (2 * params.theta_gamma**2))
        k = k * _shift(ones, dy, dx, r)
        kernels.append(k)
        total += k
    weight_sum = params.w_bilateral + params.w_gaussian
    scale = weight_sum / total.clamp_min(1e-6)
    q = torch.softmax(logits, dim=1)
    for _ in range(params.iterations):
        message = torch.zeros_like(q)
        for (dy, dx), k in zip(offsets, kernels):
            message += k * _shift(q, dy, dx, r)
        q = torch.softmax(logits + message * scale, dim=1)
    return torch.log(q.clamp_min(1e-12))
