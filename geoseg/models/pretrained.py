"""Pretrained encoder weights: torchvision's ImageNet weights or a local state dict.

The encoders keep torchvision's layers, so a torchvision (or torchgeo / timm) state dict maps
onto them key for key. The first convolution is adapted to the model's bands by name: a band
the weights know takes its own channel's filters, a panchromatic band the sum of the visible
ones (the response the RGB filters give a grey image). Every check happens before training,
and each mismatch is one line.
"""

from __future__ import annotations

import os
import re
import urllib.error
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from geoseg.errors import ModelError, TrainingError, first_line

#: torchvision weights enum per backbone, for ``--pretrained imagenet``.
IMAGENET_WEIGHTS = {
    "resnet18": "ResNet18_Weights.IMAGENET1K_V1",
    "resnet34": "ResNet34_Weights.IMAGENET1K_V1",
    "resnet50": "ResNet50_Weights.IMAGENET1K_V2",
    "mobilenet_v3_large": "MobileNet_V3_Large_Weights.IMAGENET1K_V1",
    "vgg16": "VGG16_Weights.IMAGENET1K_V1",
    "vgg16_bn": "VGG16_BN_Weights.IMAGENET1K_V1",
}
#: The input bands of ImageNet weights, in order.
IMAGENET_BANDS = ("red", "green", "blue")
#: Names a band goes by (lower case), to match model bands with the weights' bands.
BAND_ALIASES = {
    "red": ("red", "r", "b04"),
    "green": ("green", "g", "b03"),
    "blue": ("blue", "b", "b02"),
    "nir": ("nir", "nir08", "b08"),
}
PANCHROMATIC = ("pan", "panchromatic", "gray", "grey")
#: Parts of a torchvision network that are not the encoder (never loaded, never an error).
HEAD_PREFIXES = ("fc.", "classifier.")


@dataclass(frozen=True)
class Backbone:
    """Where a network's torchvision encoder sits: the torchvision name, its first convolution
    and each torchvision key's place in the network."""

    name: str
    first_conv: str
    keys: dict[str, str]


def find_backbone(network: nn.Module, arch: str) -> Backbone:
    """The torchvision encoder inside ``network``; an architecture without one is a one-line error."""
    from geoseg.models.deeplab import DeepLabV3Plus, _MobileNetBackbone, _ResNetBackbone

    encoder = getattr(network, "encoder", None)
    if encoder is not None and hasattr(encoder, "layer4"):
        keys = {k: f"encoder.{k}" for k in encoder.state_dict()}
        return Backbone(encoder.name, "conv1.weight", keys)
    if isinstance(network, DeepLabV3Plus) and isinstance(network.backbone, _ResNetBackbone):
        keys = {}
        for k in network.backbone.state_dict():
            tv = re.sub(r"^stem\.0\.", "conv1.", re.sub(r"^stem\.1\.", "bn1.", k))
            keys[tv] = f"backbone.{k}"
        return Backbone("resnet50", "conv1.weight", keys)
    if isinstance(network, DeepLabV3Plus) and isinstance(network.backbone, _MobileNetBackbone):
        keys = {
            re.sub(r"^(low|high)\.", "features.", k): f"backbone.{k}"
            for k in network.backbone.state_dict()
        }
        return Backbone("mobilenet_v3_large", "features.0.0.weight", keys)
    stages = getattr(network, "stages", None)
    if isinstance(stages, nn.ModuleList):  # VGG-16 in FCN and DeepLab v1
        keys, index = {}, 0
        for s, stage in enumerate(stages):
            for j, layer in enumerate(stage):
                for k in layer.state_dict():
                    keys[f"features.{index}.{k}"] = f"stages.{s}.{j}.{k}"
                index += 1
        bn = any(isinstance(m, nn.BatchNorm2d) for m in stages.modules())
        return Backbone("vgg16_bn" if bn else "vgg16", "features.0.weight", keys)
    raise ModelError(
        f"{arch} has no torchvision encoder to start from pretrained weights; use unet with "
        '--arch-args \'{"encoder": "resnet34"}\', deeplabv3plus, fcn8s/16s/32s or deeplabv1'
    )


def imagenet_state_dict(backbone: Backbone) -> dict[str, torch.Tensor]:
    """torchvision's ImageNet weights for ``backbone`` (downloaded once into torch's hub cache)."""
    from torchvision.models import get_weight

    weights = get_weight(IMAGENET_WEIGHTS[backbone.name])
    try:
        return dict(weights.get_state_dict(progress=False, check_hash=True))
    except (urllib.error.URLError, OSError, RuntimeError) as exc:
        reason = first_line(str(getattr(exc, "reason", "") or "") or exc)[:100]
        raise TrainingError(
            f"cannot download the ImageNet weights of {backbone.name} ({reason}); offline, fetch "
            f"{weights.url} on a machine with internet and pass --pretrained PATH"
        ) from None


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Tensors from a weights file, loaded without executing code (a bare state dict, or one
    under ``state_dict`` / ``model``, as torchvision, torchgeo, timm and geoseg write them)."""
    p = Path(path)
    if not p.is_file():
        raise TrainingError(
            f"pretrained weights {path} not found; give a state dict file or 'imagenet'"
        )
    try:
        blob: Any = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickled code, a truncated file, not a torch file: several kinds
        first = first_line(exc)[:120]
        raise TrainingError(
            f"cannot read pretrained weights {path} without executing code ({first})"
        ) from None
    for key in ("state_dict", "model"):
        if isinstance(blob, dict) and isinstance(blob.get(key), dict):
            blob = blob[key]
    if (
        not isinstance(blob, dict)
        or not blob
        or not all(isinstance(v, torch.Tensor) for v in blob.values())
    ):
        raise TrainingError(
            f"{path} holds no state dict (names -> tensors); give torchvision-style weights"
        )
    return blob


def _strip_prefix(
    state: dict[str, torch.Tensor], first_conv: str, backbone: Backbone, source: str
) -> dict[str, torch.Tensor]:
    """The part of ``state`` under the prefix its first convolution has (``module.``, ``encoder.``...)."""
    hits = sorted((k for k in state if k == first_conv or k.endswith("." + first_conv)), key=len)
    if not hits:
        raise ModelError(
            f"{source} holds no {backbone.name} weights (no {first_conv}); give weights of a "
            f"torchvision {backbone.name}"
        )
    prefix = hits[0][: -len(first_conv)]
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def _canonical(name: str) -> str:
    low = name.strip().lower()
    for canon, names in BAND_ALIASES.items():
        if low in names:
            return canon
    return low


def band_sources(
    model_bands: Sequence[str], weight_bands: Sequence[str] | None, n_weights: int, source: str
) -> list[list[int]]:
    """For each model band, the channels of the weights' first convolution it takes."""
    generic = all(re.fullmatch(r"band\d+", b.strip().lower()) for b in model_bands)
    if weight_bands is None:
        if n_weights == len(model_bands):
            return [[i] for i in range(n_weights)]
        raise ModelError(
            f"{source} takes {n_weights} bands and the model {len(model_bands)}; name the weights' "
            "bands in order with --pretrained-bands (for example B01,B02,...)"
        )
    if len(weight_bands) != n_weights:
        raise ModelError(
            f"--pretrained-bands names {len(weight_bands)} bands, but {source} takes {n_weights}"
        )
    if generic and len(model_bands) == n_weights:
        return [[i] for i in range(n_weights)]  # unnamed bands, same count: in order
    known = [_canonical(b) for b in weight_bands]
    out: list[list[int]] = []
    for band in model_bands:
        c = _canonical(band)
        if c in known:
            out.append([known.index(c)])
        elif c in PANCHROMATIC and any(k in ("red", "green", "blue") for k in known):
            out.append([i for i, k in enumerate(known) if k in ("red", "green", "blue")])
        else:
            raise ModelError(
                f"model band {band!r} has no weights in {source} (its bands: {', '.join(weight_bands)}); "
                "name the image bands like those (band descriptions), or choose bands with 'geoseg chip --bands'"
            )
    return out


def load_pretrained(
    network: nn.Module,
    arch: str,
    source: str,
    model_bands: Sequence[str],
    weight_bands: Sequence[str] | None = None,
) -> str:
    """Load ``source`` (``imagenet`` or a state-dict path) into ``network``'s encoder, first
    convolution adapted to ``model_bands``; returns a line saying what was loaded."""
    backbone = find_backbone(network, arch)
    if source == "imagenet":
        state = imagenet_state_dict(backbone)
        weight_bands = list(IMAGENET_BANDS) if weight_bands is None else weight_bands
        label = f"ImageNet weights of {backbone.name}"
    else:
        state = read_state_dict(source)
        label = f"weights in {Path(source).name}"
    state = _strip_prefix(state, backbone.first_conv, backbone, label)
    own = network.state_dict()
    loaded: dict[str, torch.Tensor] = {}
    for tv_key, key in backbone.keys.items():
        if tv_key not in state:
            raise ModelError(
                f"{label} lack {tv_key}: they are not weights of a torchvision {backbone.name}"
            )
        value = state[tv_key]
        if tv_key == backbone.first_conv and value.ndim == 4:
            sources = band_sources(model_bands, weight_bands, value.shape[1], label)
            value = torch.stack([value[:, idx].sum(dim=1) for idx in sources], dim=1)
        if value.shape != own[key].shape:
            raise ModelError(
                f"{label} do not fit {arch}'s {backbone.name}: {tv_key} is "
                f"{'x'.join(map(str, value.shape))} there, {'x'.join(map(str, own[key].shape))} here"
            )
        loaded[key] = value.to(own[key].dtype)
    extra = [k for k in state if k not in backbone.keys and not k.startswith(HEAD_PREFIXES)]
    if extra:
        raise ModelError(
            f"{label} hold {extra[0]}, which {arch}'s {backbone.name} has no place for; "
            "they are weights of another network"
        )
    network.load_state_dict(loaded, strict=False)
    return f"{label} ({len(loaded)} tensors, bands {', '.join(model_bands)})"
