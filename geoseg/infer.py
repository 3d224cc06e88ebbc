"""A batch of raw tiles in, logits out: device choice, normalization, test-time augmentation
(D4 flips and rotations, input scales) and the dense CRF."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from geoseg.crf import dense_crf
from geoseg.errors import ModelError, OptionError
from geoseg.options import CRFParams, Precision, Tta, choices
from geoseg.tiling import context_radius, scale_fractions, scales_alignment

#: A forward pass: normalized float32 N x C x H x W -> logits N x K x H x W (any engine).
LogitsFn = Callable[[torch.Tensor], torch.Tensor]

TTA_MODES = choices(Tta)
PRECISIONS = choices(Precision)


@dataclass(frozen=True)
class InferenceOptions:
    """What happens to a normalized batch besides one forward pass; part of every tile task.

    ``tta``: ``flip`` averages logits over the identity and a horizontal flip, ``d4`` over the
    eight flips and rotations. ``scales``: logits averaged over rescaled inputs. ``crf``: dense
    CRF mean-field on the averaged scores.
    """

    tta: Tta = "none"
    scales: tuple[float, ...] = (1.0,)
    crf: CRFParams | None = None
    precision: Precision = "auto"
    channels_last: bool = False
    compile: bool = False

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise OptionError(f"unknown --precision {self.precision!r}; use {', '.join(PRECISIONS)}")
        if self.tta not in TTA_MODES:
            raise OptionError(f"unknown --tta {self.tta!r}; use {', '.join(TTA_MODES)}")
        if not self.scales:
            raise OptionError("--scales needs at least one scale, e.g. 1 or 0.75,1,1.25")
        scale_fractions(self.scales)

    @property
    def plain(self) -> bool:
        return self.tta == "none" and tuple(self.scales) == (1.0,) and self.crf is None

    @property
    def dtype(self) -> torch.dtype | None:
        """The autocast dtype, or None for float32 (``auto``: see :meth:`dtype_on`)."""
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)

    def dtype_on(self, device: torch.device) -> torch.dtype | None:
        """The autocast dtype on ``device``: ``auto`` is bf16 on CUDA devices that support it."""
        if self.precision == "auto":
            if device.type == "cuda" and torch.cuda.is_bf16_supported():
                return torch.bfloat16
            return None
        return self.dtype

    def alignment(self, stride: int) -> int:
        """Tile origins and sizes must be multiples of this (the stride, more with scales)."""
        return scales_alignment(stride, self.scales)

    def context(self, receptive_field: int) -> int:
        """Pixels of context one output pixel needs: the tile margin that keeps tiling exact."""
        return context_radius(receptive_field, self.scales, self.crf.reach if self.crf else 0)


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
    raise OptionError(f"unknown device {spec!r}; use auto, cpu or cuda")


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
def forward(
    network: nn.Module, batch: np.ndarray, device: torch.device, options: InferenceOptions | None = None
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
        out = torch.cat([dense_crf(lg[None], xi[None], options.crf) for lg, xi in zip(out, x.float())])
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
            xs = F.interpolate(x, size=scaled, mode="bilinear", align_corners=False, antialias=p < q)
        for k, flip in _transforms(options.tta):
            y = _d4_inverse(network(_d4(xs, k, flip)).float(), k, flip)
            if y.shape[-2:] != size:
                y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
            total = y if total is None else total + y
            count += 1
    assert total is not None
    return total / count
