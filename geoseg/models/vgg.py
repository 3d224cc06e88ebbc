"""VGG-16 (torchvision's configuration "D") cut into the stages FCN and DeepLab tap.

torchvision builds the layers (random initialisation: nothing can be downloaded); ``width``
scales every stage's filters so the same network can be trained on a CPU, and ``batch_norm``
selects VGG-16-BN, which trains from scratch where plain VGG-16 needs ImageNet weights.
"""

from __future__ import annotations

from torch import nn


def scaled_widths(width: float) -> list[int]:
    """Filters of the five VGG-16 stages (64, 128, 256, 512, 512 at ``width`` 1)."""
    if width <= 0:
        raise ValueError(f"width must be positive, got {width}")
    return [max(4, int(round(c * width))) for c in (64, 128, 256, 512, 512)]


def vgg16_stages(in_channels: int, width: float = 1.0, batch_norm: bool = True) -> nn.ModuleList:
    """Five stages, each ending in its 2x2 max pooling (pool1 .. pool5)."""
    from torchvision.models.vgg import cfgs, make_layers  # 160 MB and 3 s: only when building one

    widths = iter(scaled_widths(width))
    cfg: list[int | str] = []
    stage_width = next(widths)
    for item in cfgs["D"]:
        if item == "M":
            cfg.append("M")
            stage_width = next(widths, stage_width)
        else:
            cfg.append(stage_width)
    layers = list(make_layers(cfg, batch_norm=batch_norm))
    first = layers[0]
    assert isinstance(first, nn.Conv2d)
    if in_channels != first.in_channels:
        layers[0] = nn.Conv2d(in_channels, first.out_channels, 3, padding=1)
    stages: list[nn.Sequential] = []
    current: list[nn.Module] = []
    for layer in layers:
        current.append(layer)
        if isinstance(layer, nn.MaxPool2d):
            stages.append(nn.Sequential(*current))
            current = []
    return nn.ModuleList(stages)


def stage_convs(stage: nn.Sequential) -> list[nn.Conv2d]:
    """The 3x3 convolutions of a stage, in order."""
    return [m for m in stage if isinstance(m, nn.Conv2d)]


def stage_out_channels(stage: nn.Sequential) -> int:
    return stage_convs(stage)[-1].out_channels
