"""DeepLab v1 LargeFOV (Chen et al. 2015) and DeepLab v3+ (Chen et al. 2018).

v1: VGG-16 with pool4 and pool5 at stride 1 (3x3 pooling), conv5 dilated, fc6 a dilated 3x3
convolution (LargeFOV: 1024 filters, rate 12), output stride 8 and bilinear upsampling of the
scores; optional multi-scale (MSc) heads on the input and pool1..pool4.

v3+: a ResNet-50 or MobileNetV3 backbone at output stride 16 (or 8), ASPP with rates 6, 12, 18
(doubled at stride 8) and an image-level pooling branch, and a decoder that fuses stride-4
low-level features. The pooling branch (and MobileNetV3's squeeze-and-excitation) comes in
three forms: ``global`` (the paper: the mean over the whole input, so a tile's output depends
on the tile), ``window`` (the default: the global mean while training on chips, a sliding mean
over ``pool_window`` input pixels when predicting, which keeps tiled prediction seamless) and
``none``.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from geoseg.models.dilation import resolve_schedule
from geoseg.models.vgg import stage_convs, stage_out_channels, vgg16_stages

IMAGE_POOLING = ("window", "global", "none")


def _conv_bn_relu(cin: int, cout: int, k: int = 3, dilation: int = 1) -> nn.Sequential:
    pad = dilation * (k // 2)
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, padding=pad, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class DeepLabV1(nn.Module):
    """DeepLab-LargeFOV on VGG-16 (output stride 8), optionally with MSc heads."""

    output_stride = 8

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        width: float = 1.0,
        fc_channels: int = 1024,
        fc6_rate: int = 12,
        dilations: str | Sequence[int] = (2, 2, 2),
        msc: bool = False,
        msc_channels: int = 128,
        batch_norm: bool = True,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        self.stages = vgg16_stages(in_channels, width, batch_norm)
        for stage in self.stages[3:]:
            stage[-1] = nn.MaxPool2d(3, stride=1, padding=1)
        rates = resolve_schedule(dilations, 3, stage="DeepLab v1 conv5")
        self.dilations = list(rates)
        for conv, rate in zip(stage_convs(self.stages[4]), rates):
            conv.dilation = (rate, rate)
            conv.padding = (rate, rate)
        c5 = stage_out_channels(self.stages[4])
        self.fc = nn.Sequential(
            nn.Conv2d(c5, fc_channels, 3, padding=fc6_rate, dilation=fc6_rate),
            nn.ReLU(inplace=True),
            nn.Dropout2d(dropout),
            nn.Conv2d(fc_channels, fc_channels, 1),
            nn.ReLU(inplace=True),
            nn.Dropout2d(dropout),
        )
        self.msc = msc
        head_in = fc_channels
        if msc:
            sources = [in_channels] + [stage_out_channels(s) for s in self.stages[:4]]
            strides = [8, 4, 2, 1, 1]
            self.msc_heads = nn.ModuleList(
                nn.Sequential(
                    nn.Conv2d(c, msc_channels, 3, stride=s, padding=1),
                    nn.ReLU(inplace=True),
                    nn.Dropout2d(dropout),
                    nn.Conv2d(msc_channels, msc_channels, 1),
                    nn.ReLU(inplace=True),
                    nn.Dropout2d(dropout),
                )
                for c, s in zip(sources, strides)
            )
            head_in += len(sources) * msc_channels
        self.score = nn.Conv2d(head_in, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        taps = [x]
        for stage in self.stages:
            x = stage(x)
            taps.append(x)
        feats = self.fc(x)
        if self.msc:
            feats = torch.cat([feats] + [h(t) for h, t in zip(self.msc_heads, taps[:5])], dim=1)
        return F.interpolate(self.score(feats), size=size, mode="bilinear", align_corners=False)


class SlidingMean(nn.Module):
    """Mean over a ``window`` x ``window`` neighbourhood (odd), same size out: local context
    that, unlike a global mean, does not depend on where a tile starts and ends.

    While training (``use_global``) it is the global mean of the paper, which trains stably on
    chips; chips no larger than the window see the same numbers either way.
    """

    def __init__(self, window: int) -> None:
        super().__init__()
        self.window = window | 1
        self.use_global = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_global:
            return x.mean(dim=(2, 3), keepdim=True)
        k = self.window
        return F.avg_pool2d(x, k, stride=1, padding=k // 2, count_include_pad=False)


class ImagePooling(nn.Module):
    """ASPP's image-level branch: a mean over the input (global) or a sliding window, 1x1 conv."""

    def __init__(self, cin: int, cout: int, mode: str, window: int) -> None:
        super().__init__()
        self.mode = mode
        self.window = SlidingMean(window)
        self.project = nn.Sequential(
            nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "global":
            pooled = x.mean(dim=(2, 3), keepdim=True)
        else:
            pooled = self.window(x)
        return self.project(pooled).expand(-1, -1, x.shape[2], x.shape[3])


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: 1x1, three dilated 3x3 and image pooling, fused by 1x1."""

    def __init__(
        self, cin: int, cout: int, rates: Sequence[int], pooling: str, window: int
    ) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            [_conv_bn_relu(cin, cout, 1)] + [_conv_bn_relu(cin, cout, 3, r) for r in rates]
        )
        self.pooling = ImagePooling(cin, cout, pooling, window) if pooling != "none" else None
        n = len(self.branches) + (1 if self.pooling is not None else 0)
        self.fuse = nn.Sequential(_conv_bn_relu(n * cout, cout, 1), nn.Dropout(0.1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [b(x) for b in self.branches]
        if self.pooling is not None:
            outs.append(self.pooling(x))
        return self.fuse(torch.cat(outs, dim=1))


class _ResNetBackbone(nn.Module):
    """torchvision ResNet-50 returning (stride-4 features, final features)."""

    def __init__(
        self, in_channels: int, output_stride: int, dilations: str | Sequence[int]
    ) -> None:
        super().__init__()
        from torchvision.models import resnet50

        net = resnet50(weights=None, replace_stride_with_dilation=[False, output_stride == 8, True])
        if in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        scale = 16 // output_stride  # the schedule is in units of the stride-16 rate
        rates = resolve_schedule(dilations, len(net.layer4), stage="ResNet layer4")
        for block, r in zip(net.layer4, rates):
            block.conv2.dilation = block.conv2.padding = (r * scale, r * scale)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            net.layer1,
            net.layer2,
            net.layer3,
            net.layer4,
        )
        self.low_channels, self.high_channels = 256, 2048

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        low = self.layer1(self.stem(x))
        return low, self.layer4(self.layer3(self.layer2(low)))


class _MobileNetBackbone(nn.Module):
    """torchvision MobileNetV3-Large, last stage dilated (output stride 16).

    Its squeeze-and-excitation blocks take a global mean; with ``pooling`` other than
    ``global`` that mean becomes a sliding window of ``pool_window`` input pixels (same
    weights), or the blocks are left out (``none``), so tiled prediction stays seamless.
    """

    def __init__(self, in_channels: int, width_mult: float, pooling: str, pool_window: int) -> None:
        super().__init__()
        from torchvision.models import mobilenet_v3_large

        net = mobilenet_v3_large(weights=None, dilated=True, width_mult=width_mult)
        features = net.features
        first = features[0][0]
        if in_channels != 3:
            features[0][0] = nn.Conv2d(
                in_channels, first.out_channels, 3, stride=2, padding=1, bias=False
            )
        features.eval()  # the probe below must not move batch-norm statistics
        with torch.no_grad():
            x = torch.zeros(1, in_channels, 64, 64)
            split = 0
            for i, f in enumerate(features):
                stride = 64 // x.shape[-1]
                if pooling != "global":
                    _localize_se(f, pooling, max(1, pool_window // stride))
                x = f(x)
                if x.shape[-1] == 16:
                    split, self.low_channels = i + 1, x.shape[1]
            self.high_channels = x.shape[1]
        features.train()
        self.low = features[:split]
        self.high = features[split:]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        low = self.low(x)
        return low, self.high(low)


def _localize_se(block: nn.Module, pooling: str, window: int) -> None:
    """Replace the global mean of the squeeze-and-excitation modules in ``block``."""
    from torchvision.ops.misc import SqueezeExcitation

    for name, child in block.named_children():
        if isinstance(child, SqueezeExcitation):
            if pooling == "none":
                setattr(block, name, nn.Identity())
            else:
                child.avgpool = SlidingMean(window)
        else:
            _localize_se(child, pooling, window)


class DeepLabV3Plus(nn.Module):
    """DeepLab v3+ with ASPP and the low-level decoder; output stride 16 (or 8 for ResNet-50)."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        backbone: str = "resnet50",
        output_stride: int = 16,
        aspp_rates: Sequence[int] = (6, 12, 18),
        dilations: str | Sequence[int] = (1, 2, 2),
        image_pooling: str = "window",
        pool_window: int = 128,
        aspp_channels: int = 256,
        width_mult: float = 1.0,
    ) -> None:
        super().__init__()
        if image_pooling not in IMAGE_POOLING:
            raise ValueError(
                f"image_pooling must be one of {', '.join(IMAGE_POOLING)}, got {image_pooling!r}"
            )
        if output_stride not in (8, 16):
            raise ValueError(f"output_stride must be 8 or 16, got {output_stride}")
        if backbone == "resnet50":
            self.backbone: nn.Module = _ResNetBackbone(in_channels, output_stride, dilations)
        elif backbone == "mobilenetv3":
            if output_stride != 16:
                raise ValueError("the MobileNetV3 backbone runs at output stride 16 only")
            self.backbone = _MobileNetBackbone(in_channels, width_mult, image_pooling, pool_window)
        else:
            raise ValueError(f"backbone must be resnet50 or mobilenetv3, got {backbone!r}")
        self.output_stride = output_stride
        self.image_pooling = image_pooling
        scale = 16 // output_stride
        window = max(1, pool_window // output_stride) | 1
        self.aspp = ASPP(
            self.backbone.high_channels,
            aspp_channels,
            [r * scale for r in aspp_rates],
            image_pooling,
            window,
        )
        self.reduce = _conv_bn_relu(self.backbone.low_channels, 48, 1)
        self.decoder = nn.Sequential(
            _conv_bn_relu(aspp_channels + 48, aspp_channels, 3),
            _conv_bn_relu(aspp_channels, aspp_channels, 3),
            nn.Conv2d(aspp_channels, num_classes, 1),
        )

    def train(self, mode: bool = True) -> "DeepLabV3Plus":
        """Global means while training, sliding windows when predicting (``window`` pooling)."""
        super().train(mode)
        for m in self.modules():
            if isinstance(m, SlidingMean):
                m.use_global = mode
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        low, high = self.backbone(x)
        y = self.aspp(high)
        y = F.interpolate(y, size=low.shape[-2:], mode="bilinear", align_corners=False)
        y = self.decoder(torch.cat([y, self.reduce(low)], dim=1))
        return F.interpolate(y, size=size, mode="bilinear", align_corners=False)
