"""FCN-32s / 16s / 8s (Long, Shelhamer & Darrell 2015) on a VGG-16.

VGG's classifier becomes convolutions (fc6 as 7x7, fc7 as 1x1), a 1x1 scorer gives class
scores at stride 32, and FCN-16s/8s fuse zero-initialised score layers on pool4 and pool3 by
summation after 2x transposed convolutions initialised to bilinear interpolation and
learned; the final upsampling stays fixed bilinear, as in the reference implementation. Padding is
'same' (not the paper's 100-pixel pad and crop): geoseg's overlap tiles provide the context,
so any input that is a multiple of 32 gives scores at input resolution.
"""

from __future__ import annotations

import torch
from torch import nn

from geoseg.models.upsampling import bilinear_upsampler
from geoseg.models.vgg import stage_out_channels, vgg16_stages

VARIANTS = (32, 16, 8)


class FCN(nn.Module):
    """FCN-``variant``s: 32 (no skips), 16 (pool4 skip) or 8 (pool4 and pool3 skips)."""

    output_stride = 32

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        variant: int = 8,
        width: float = 1.0,
        fc_channels: int = 4096,
        fc6_kernel: int = 7,
        batch_norm: bool = True,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"FCN variant must be one of {VARIANTS}, got {variant}")
        if fc6_kernel % 2 != 1:
            raise ValueError(f"fc6_kernel must be odd, got {fc6_kernel}")
        self.variant = variant
        self.stages = vgg16_stages(in_channels, width, batch_norm)
        c3, c4, c5 = (stage_out_channels(s) for s in self.stages[2:])
        self.classifier = nn.Sequential(
            nn.Conv2d(c5, fc_channels, fc6_kernel, padding=fc6_kernel // 2),
            nn.ReLU(inplace=True),
            nn.Dropout2d(dropout),
            nn.Conv2d(fc_channels, fc_channels, 1),
            nn.ReLU(inplace=True),
            nn.Dropout2d(dropout),
            nn.Conv2d(fc_channels, num_classes, 1),
        )
        if variant == 32:
            self.upscore = bilinear_upsampler(num_classes, 32, learnable=False)
        else:
            self.score_pool4 = nn.Conv2d(c4, num_classes, 1)
            self.upscore2 = bilinear_upsampler(num_classes, 2)
            if variant == 16:
                self.upscore = bilinear_upsampler(num_classes, 16, learnable=False)
            else:
                self.score_pool3 = nn.Conv2d(c3, num_classes, 1)
                self.upscore_pool4 = bilinear_upsampler(num_classes, 2)
                self.upscore = bilinear_upsampler(num_classes, 8, learnable=False)
            for score in (getattr(self, "score_pool4", None), getattr(self, "score_pool3", None)):
                if score is not None:
                    nn.init.zeros_(score.weight)
                    nn.init.zeros_(score.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        pool3, pool4, pool5 = feats[2], feats[3], feats[4]
        score = self.classifier(pool5)
        if self.variant == 32:
            return self.upscore(score)
        score = self.upscore2(score) + self.score_pool4(pool4)
        if self.variant == 16:
            return self.upscore(score)
        score = self.upscore_pool4(score) + self.score_pool3(pool3)
        return self.upscore(score)
