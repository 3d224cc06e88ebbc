"""The PyTorch engine: the network in eval mode on the model's device, with the forward-pass
tuning options (autocast precision, channels-last, ``torch.compile``)."""

from __future__ import annotations

import torch
from torch import nn

from geoseg.engines.base import Engine
from geoseg.models.config import ModelConfig
from geoseg.options import InferenceOptions


class TorchEngine(Engine):
    """``network`` (already on ``device``, in channels-last and compiled when asked) under autocast."""

    name = "torch"

    def __init__(
        self,
        network: nn.Module,
        config: ModelConfig,
        device: torch.device,
        options: InferenceOptions,
    ) -> None:
        super().__init__(config, device, options)
        self.network = network
        self.autocast = options.dtype_on(device)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        if self.options.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        dtype = self.autocast
        with torch.autocast(
            self.device.type, dtype=dtype or torch.float32, enabled=dtype is not None
        ):
            return self.network(x).float()
