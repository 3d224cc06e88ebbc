"""What every engine does around its forward pass, in torch on the engine's device: raw tiles
in, normalisation and nodata fill, augmentations and CRF, argmax to class values and softmax to
uint8 probabilities; only uint8 (and float logits when asked for) comes back to the host."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod

import numpy as np
import torch

from geoseg.classes import class_raster_dtype
from geoseg.engines import EngineOutput
from geoseg.engines.infer import InferenceOptions, scores
from geoseg.models.config import ModelConfig

_TORCH_DTYPES = {np.dtype(np.uint8): torch.uint8, np.dtype(np.uint16): torch.uint16}


class Engine(ABC):
    """A model ready to run on one device; subclasses supply only :meth:`logits`."""

    #: Engine name as ``--engine`` spells it.
    name: str = ""
    #: Whether the worker sets torch's threads for this engine (see :class:`geoseg.engines.onnx_cpu.CpuEngine`).
    uses_torch = True

    def __init__(
        self, config: ModelConfig, device: torch.device, options: InferenceOptions
    ) -> None:
        self.config = config
        self.device = device
        self.options = options
        self.mean = torch.tensor(config.mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(config.std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        values = [c.value for c in config.classes]
        np_dtype, nodata = class_raster_dtype(values)
        dtype = _TORCH_DTYPES[np.dtype(np_dtype)]
        self.lookup = torch.tensor(values, dtype=torch.int64, device=device).to(dtype)
        self.class_nodata = torch.tensor(nodata, dtype=dtype, device=device)
        self._pinned: dict[tuple[tuple[int, ...], np.dtype], torch.Tensor] = {}
        #: Held by a worker around :meth:`run`: one batch at a time uses the device (all of the
        #: worker's cores, or the GPU) while the worker's other tasks read their tiles.
        self.lock = threading.Lock()

    @abstractmethod
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """One forward pass: normalized float32 N x C x H x W on :attr:`device` -> logits N x K x H x W."""

    @torch.inference_mode()
    def run(
        self,
        raw: np.ndarray,
        valid: np.ndarray,
        probabilities: bool = False,
        keep_logits: bool = False,
    ) -> EngineOutput:
        """Classes (and uint8 probabilities) for raw N x C x H x W tiles in the scene's dtype,
        with ``valid`` (N x H x W, bool) saying which pixels hold data."""
        x = self.upload(raw)
        mask = self.upload(valid)
        x = self.normalize(x, mask)
        s = scores(self.logits, x, self.options)
        del x
        classes = torch.where(mask, self.lookup[channel_argmax(s)], self.class_nodata)
        probs = None
        if probabilities:
            p = torch.softmax(s, dim=1).mul_(255.0).round_().to(torch.uint8)
            probs = p.mul_(mask[:, None]).cpu().numpy()
        return EngineOutput(
            classes=classes.cpu().numpy(),
            probabilities=probs,
            logits=s.float().cpu().numpy() if keep_logits else None,
        )

    def upload(self, array: np.ndarray) -> torch.Tensor:
        """The array on the engine's device as is (raw dtype: fewer bytes to move than float32);
        through a reused pinned buffer and a non-blocking copy on CUDA."""
        if array.dtype not in (
            np.uint8,
            np.int8,
            np.int16,
            np.int32,
            np.int64,
            np.float32,
            np.float64,
            np.bool_,
            np.uint16,
            np.uint32,
        ):
            array = array.astype(np.float32)
        t = torch.from_numpy(np.ascontiguousarray(array))
        if self.device.type != "cuda":
            return t
        key = (tuple(array.shape), array.dtype)
        buf = self._pinned.get(key)
        if buf is None:
            if len(self._pinned) > 8:  # tile sizes vary at scene edges only; keep a few
                self._pinned.clear()
            buf = self._pinned[key] = torch.empty(t.shape, dtype=t.dtype).pin_memory()
        buf.copy_(t)
        return buf.to(self.device, non_blocking=True)

    def normalize(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``(x - mean) / std`` per band as float32; pixels without data (and non-finite values)
        become 0, the band mean: a neutral input without edges, so whatever lies under nodata
        cannot paint its class into valid neighbours (same as :func:`geoseg.engines.infer.normalize`).
        Two passes over the pixels for integer scenes without nodata, the common case."""
        floating = x.is_floating_point()
        if x.dtype not in (
            torch.float32,
            torch.uint8,
            torch.int8,
            torch.int16,
            torch.uint16,
            torch.int32,
        ):
            x = x.to(torch.float32)  # float64 and int64 would make the subtraction float64
        x = torch.sub(x, self.mean).div_(self.std)  # cast and subtract in one pass, in a new tensor
        if not bool(mask.all()):
            x.masked_fill_(~mask[:, None], 0.0)
        return torch.nan_to_num_(x, nan=0.0, posinf=0.0, neginf=0.0) if floating else x


#: Up to this many classes :func:`channel_argmax` compares channel by channel.
_LOOP_ARGMAX_MAX_CLASSES = 64


def channel_argmax(s: torch.Tensor) -> torch.Tensor:
    """Index of the largest score along dim 1 (the first one on ties, as ``argmax``), as one
    elementwise pass per class: torch's ``argmax(1)`` reduces across a strided axis and took
    2.6x the forward pass of a cheap network on the CPU (11x slower than this for 8 classes)."""
    k = s.shape[1]
    if k > _LOOP_ARGMAX_MAX_CLASSES:
        return s.argmax(1)
    best = s[:, 0].clone()
    index = torch.zeros(best.shape, dtype=torch.int64, device=s.device)
    for c in range(1, k):
        sc = s[:, c]
        index.masked_fill_(sc > best, c)
        torch.maximum(best, sc, out=best)
    return index
