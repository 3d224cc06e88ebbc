"""A batch of raw tiles in, logits out: device choice, normalization, inference mode."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from geoseg.errors import ModelError


def resolve_device(spec: str | torch.device = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else the CPU; ``cuda`` without CUDA is an error."""
    if isinstance(spec, torch.device):
        return spec
    spec = str(spec).lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError("--device cuda asked for, but this machine has no CUDA device; use --device cpu")
    if spec.startswith("cuda") or spec == "cpu":
        return torch.device(spec)
    raise ModelError(f"unknown device {spec!r}; use auto, cpu or cuda")


def normalize(
    data: np.ndarray, valid: np.ndarray, mean: Sequence[float], std: Sequence[float]
) -> np.ndarray:
    """``(x - mean) / std`` per band as float32; pixels without data become 0, the band mean.

    Filling nodata with the mean is a neutral input: it carries no edge or texture, so it does
    not paint its own class into valid neighbours the way a 0 or a -9999 would.
    """
    m = np.asarray(mean, dtype=np.float32)[:, None, None]
    s = np.asarray(std, dtype=np.float32)[:, None, None]
    out = (data.astype(np.float32) - m) / s
    out[:, ~valid] = 0.0
    if not np.isfinite(out).all():
        out[~np.isfinite(out)] = 0.0
    return out


@torch.inference_mode()
def forward(network: nn.Module, batch: np.ndarray, device: torch.device) -> torch.Tensor:
    """Logits (float32, on the CPU) for a normalized N x C x H x W batch."""
    x = torch.from_numpy(batch)
    if device.type == "cuda":
        x = x.pin_memory().to(device, non_blocking=True)
    logits = network(x)
    return logits.float().cpu()
