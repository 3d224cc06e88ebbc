"""Model registry: ``create_model(arch, in_channels, num_classes, **kwargs)`` and ``list_models()``.

The built-in architectures (and torch) are imported on first use of the registry, not with this
package: reading a model's config or an ONNX model needs no torch (see :mod:`geoseg.models.config`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from geoseg.errors import ModelError

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class Architecture:
    """A registered architecture: its builder, default arguments and a one-line summary."""

    name: str
    build: Callable[..., nn.Module]
    defaults: dict[str, Any]
    summary: str


_REGISTRY: dict[str, Architecture] = {}
_BUILTIN_LOADED: list[bool] = []


def _registry() -> dict[str, Architecture]:
    """The registry, with the built-in architectures (imported here, once)."""
    if not _BUILTIN_LOADED:
        _BUILTIN_LOADED.append(True)
        _register_builtin()
    return _REGISTRY


def register(
    name: str, build: Callable[..., nn.Module], defaults: dict[str, Any], summary: str
) -> None:
    """Add an architecture to the registry under ``name``."""
    _registry()[name] = Architecture(
        name, build, dict(defaults), summary
    )  # built-ins first: ours win


def list_models() -> list[Architecture]:
    """Registered architectures, sorted by name."""
    registry = _registry()
    return [registry[k] for k in sorted(registry)]


def get_architecture(name: str) -> Architecture:
    """The registered architecture ``name``; an unknown name lists the valid ones."""
    registry = _registry()
    try:
        return registry[name]
    except KeyError:
        raise ModelError(
            f"unknown architecture {name!r}; choose one of {', '.join(sorted(registry))}"
        ) from None


def create_model(arch: str, in_channels: int, num_classes: int, **kwargs: Any) -> nn.Module:
    """Build an untrained network; ``kwargs`` override the architecture's defaults."""
    spec = get_architecture(arch)
    args = {**spec.defaults, **kwargs}
    try:
        return spec.build(in_channels=in_channels, num_classes=num_classes, **args)
    except (TypeError, ValueError) as exc:
        raise ModelError(f"cannot build {arch} with {args}: {exc}") from exc


def output_stride(network: nn.Module) -> int:
    """The factor by which the network's coarsest features are smaller than its input."""
    return int(getattr(network, "output_stride", 1))


def _register_builtin() -> None:
    """Register the built-in architectures (the registry's first use does, once)."""
    from geoseg.models.deeplab import DeepLabV1, DeepLabV3Plus
    from geoseg.models.fcn import FCN
    from geoseg.models.unet import UNet

    register(
        "unet",
        UNet,
        {"depth": 4, "base_width": 32, "upsample": "transpose"},
        "U-Net, skip concatenation; upsample = transpose | unpool | bilinear; "
        "encoder = resnet18 | resnet34 | resnet50 (torchvision ResNet, pretrainable)",
    )
    register(
        "unet-small",
        UNet,
        {"depth": 3, "base_width": 16, "upsample": "transpose"},
        "U-Net sized to train on a CPU in minutes (depth 3, 16 base filters)",
    )
    for variant in (32, 16, 8):
        register(
            f"fcn{variant}s",
            FCN,
            {"variant": variant, "width": 1.0, "fc_channels": 4096, "batch_norm": True},
            f"FCN-{variant}s on VGG-16(-BN), fc6/fc7 as convolutions"
            + (
                ""
                if variant == 32
                else ", score fusion of " + ("pool4" if variant == 16 else "pool4 and pool3")
            )
            + ", bilinear-initialised transposed convolutions",
        )
    register(
        "deeplabv1",
        DeepLabV1,
        {"width": 1.0, "fc_channels": 1024, "fc6_rate": 12, "dilations": [2, 2, 2], "msc": False},
        "DeepLab v1 LargeFOV on VGG-16(-BN): stride-1 pool4/pool5, dilated conv5 and fc6 (rate 12); "
        "msc = multi-scale heads; use with predict --crf",
    )
    register(
        "deeplabv3plus",
        DeepLabV3Plus,
        {
            "backbone": "resnet50",
            "output_stride": 16,
            "aspp_rates": [6, 12, 18],
            "dilations": [1, 2, 2],
            "image_pooling": "window",
            "pool_window": 128,
        },
        "DeepLab v3+: ResNet-50 or MobileNetV3 backbone, ASPP (6, 12, 18) with image pooling over "
        "a sliding window (tiling-safe; 'global' is the paper's), low-level decoder",
    )
