"""A batch of raw tiles in, logits out: device choice, normalization, test-time augmentation
(D4 flips and rotations, input scales) and the dense CRF."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from geoseg.engines.crf import dense_crf
from geoseg.errors import ModelError, OptionError
from geoseg.normalize import normalize
from geoseg.options import PRECISIONS, TTA_MODES, InferenceOptions
from geoseg.tiling import scale_fractions

#: InferenceOptions (and the choices) live in :mod:`geoseg.options`, which imports no torch.
__all__ = [
    "PRECISIONS",
    "TTA_MODES",
    "InferenceOptions",
    "LogitsFn",
    "forward",
    "normalize",
    "resolve_device",
    "scores",
]

#: A forward pass: normalized float32 N x C x H x W -> logits N x K x H x W (any engine).
LogitsFn = Callable[[torch.Tensor], torch.Tensor]


def resolve_device(spec: str | torch.device = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else the CPU; ``cuda`` without CUDA is an error."""
    if isinstance(spec, torch.device):
        return spec
    spec = str(spec).lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError(
            "--device cuda asked for, but this machine has no CUDA device; use --device cpu"
        )
    if spec.startswith("cuda") or spec == "cpu":
        return torch.device(spec)
    raise OptionError(f"unknown device {spec!r}; use auto, cpu or cuda")


@torch.inference_mode()
def forward(
    network: nn.Module,
    batch: np.ndarray,
    device: torch.device,
    options: InferenceOptions | None = None,
) -> torch.Tensor:
    """Logits (float32, on the CPU) for a normalized N x C x H x W batch; with a CRF, its
    log-probabilities (same argmax and softmax semantics)."""
    options = options or InferenceOptions()
    x = torch.from_numpy(batch)
    if device.type == "cuda":
        x = x.pin_memory().to(device, non_blocking=True)
    if options.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)

    dtype = options.dtype_on(device)

    def run(t: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            return network(t).float()

    return scores(run, x, options).cpu()


def scores(logits: LogitsFn, x: torch.Tensor, options: InferenceOptions) -> torch.Tensor:
    """What the class decision is taken on, for any engine's forward pass ``logits``: the logits,
    averaged over test-time augmentations and scales, then refined by the CRF (which returns
    log-probabilities: same argmax and softmax semantics)."""
    if options.plain:
        return logits(x).float()
    out = _scales_tta(logits, x, options)
    if options.crf is not None:
        out = torch.cat(
            [dense_crf(lg[None], xi[None], options.crf) for lg, xi in zip(out, x.float())]
        )
    return out


def _d4(x: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    x = torch.rot90(x, k, (2, 3))
    return torch.flip(x, (3,)) if flip else x


def _d4_inverse(y: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    if flip:
        y = torch.flip(y, (3,))
    return torch.rot90(y, -k, (2, 3))


def _transforms(tta: str) -> list[tuple[int, bool]]:
    if tta == "d4":
        return [(k, f) for k in range(4) for f in (False, True)]
    if tta == "flip":
        return [(0, False), (0, True)]
    return [(0, False)]


def _scales_tta(network: LogitsFn, x: torch.Tensor, options: InferenceOptions) -> torch.Tensor:
    """Mean logits over every (scale, D4 transform) pair, at the input's resolution."""
    size = x.shape[-2:]
    total: torch.Tensor | None = None
    count = 0
    for p, q in scale_fractions(options.scales):
        if (p, q) == (1, 1):
            xs = x
        else:
            scaled = (size[0] * p // q, size[1] * p // q)
            xs = F.interpolate(
                x, size=scaled, mode="bilinear", align_corners=False, antialias=p < q
            )
        for k, flip in _transforms(options.tta):
            y = _d4_inverse(network(_d4(xs, k, flip)).float(), k, flip)
            if y.shape[-2:] != size:
                y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
            total = y if total is None else total + y
            count += 1
    assert total is not None
    return total / count
