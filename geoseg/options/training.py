"""Options of training: how labelled images are cut into chips (:class:`ChipOptions`) and how a
model is trained on them (:class:`TrainOptions`)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from geoseg.errors import OptionError
from geoseg.options.fields import Device, check_fields, option_help, options_from_keywords

#: Class names (and colours) by value, as the API takes them: a name, or (name, colour or None).
ClassNames = Mapping[int, "str | tuple[str, tuple[int, int, int] | None]"]


@dataclass(frozen=True)
class ChipOptions:
    """How labelled images are cut into chips and split: ``geoseg.chip`` / ``make_chips``
    keywords, ``geoseg chip`` options (``--classes`` for ``class_names``) and the keys of a
    recipe's ``chip`` step. ``value_map`` and ``class_names`` may be given as the command
    line's text; they are parsed here, so a bad one fails before any work."""

    size: int | None = field(
        default=None,
        metadata=option_help(
            "Chip size in pixels (default: the largest of 256/128/64/32 that fits 24 chips in the labelled "
            "area; a grown folder keeps its size).",
            min=8,
        ),
    )
    stride: int | None = field(
        default=None, metadata=option_help("Step between chips (default: --size).", min=1)
    )
    bands: str | tuple[int, ...] | None = field(
        default=None,
        metadata=option_help("Image bands to keep, in order (default: all).", metavar="1,2,3"),
    )
    label_field: str | None = field(
        default=None, metadata=option_help("Attribute holding the class, for vector labels.")
    )
    value_map: str | Mapping[str, int] | None = field(
        default=None,
        metadata=option_help("Map label-field values to class numbers.", metavar="NAME=VALUE,..."),
    )
    background: int | None = field(
        default=None,
        metadata=option_help(
            "Class of pixels outside every polygon (vector labels); default: not labelled.",
            min=0,
            max=254,
        ),
    )
    label_nodata_is_class: bool = field(
        default=False,
        metadata=option_help(
            "Read a label raster's nodata value as a class (some rasters flag background as nodata)."
        ),
    )
    class_names: str | ClassNames | None = field(
        default=None,
        metadata=option_help(
            "Class names and colours, e.g. 1=farmland:#e6c84b,2=forest.",
            cli="classes",
            metavar="VALUE=NAME[:#RRGGBB],...",
        ),
    )
    ignore_value: int | None = field(
        default=None,
        metadata=option_help("Label value meaning 'not labelled' (default 255).", min=0, max=255),
    )
    min_labeled: float = field(
        default=0.0,
        metadata=option_help(
            "Least labelled fraction of a chip (0: any chip with a labelled pixel).", min=0, max=1
        ),
    )
    max_nodata: float = field(
        default=1.0,
        metadata=option_help(
            "Most image-nodata fraction of a chip (nodata pixels are never learned from).",
            min=0,
            max=1,
        ),
    )
    val_fraction: float = field(
        default=0.2, metadata=option_help("Share of split blocks for validation.", min=0, max=1)
    )
    test_fraction: float = field(
        default=0.0, metadata=option_help("Share of split blocks for testing.", min=0, max=1)
    )
    split_block: int | None = field(
        default=None,
        metadata=option_help(
            "Split block size in pixels (default: the largest of 4, 3 or 2 x --size that gives 6 blocks).",
            min=8,
        ),
    )
    seed: int = field(default=0, metadata=option_help("Seed of the split."))
    stratify: bool = field(
        default=True,
        metadata=option_help(
            "Draw validation and test blocks so that they hold every class (label rasters); --no-stratify "
            "draws them at random, as geoseg chip did before."
        ),
    )
    oversample_rare: float = field(
        default=0.0,
        metadata=option_help("Extra sampling weight of chips holding rare classes.", min=0),
    )

    def __post_init__(self) -> None:
        from geoseg.classes import parse_class_names, parse_value_map

        bands: Any = self.bands  # a job file gives a list
        if isinstance(bands, list):
            object.__setattr__(self, "bands", tuple(bands))
        if isinstance(self.value_map, str):
            object.__setattr__(self, "value_map", parse_value_map(self.value_map))
        if isinstance(self.class_names, str):
            object.__setattr__(self, "class_names", parse_class_names(self.class_names) or None)
        for name in (
            "min_labeled",
            "max_nodata",
            "val_fraction",
            "test_fraction",
            "oversample_rare",
        ):
            value: Any = getattr(self, name)
            if isinstance(value, int) and not isinstance(value, bool):
                object.__setattr__(self, name, float(value))
        check_fields(self)

    @property
    def value_mapping(self) -> dict[str, int] | None:
        """``value_map`` parsed (never text)."""
        assert not isinstance(self.value_map, str)  # parsed in __post_init__
        return None if self.value_map is None else dict(self.value_map)

    @property
    def class_spec(self) -> ClassNames | None:
        """``class_names`` parsed (never text)."""
        assert not isinstance(self.class_names, str)  # parsed in __post_init__
        return self.class_names

    @classmethod
    def from_keywords(cls, base: ChipOptions | None = None, **keywords: Any) -> ChipOptions:
        """``base`` (or the defaults) with ``keywords`` replaced; an unknown keyword is an error."""
        return options_from_keywords(cls, "chip", base, keywords)


#: Precision of training's forward and backward passes (``auto``: mixed on CUDA, fp32 on the CPU).
TrainPrecision = Literal["auto", "fp32", "bf16"]
Schedule = Literal["cosine", "poly"]
ClassWeighting = Literal["sqrt", "inverse", "none"]


@dataclass(frozen=True)
class TrainOptions:
    """How a model is trained: ``geoseg.train`` keywords, ``geoseg train`` options
    (``--arch-args`` for ``arch_kwargs``, ``--class-weights`` for ``class_weighting``) and the
    keys of a recipe's ``train`` step. Fields marked ``api_only`` have no command-line option."""

    arch: str = field(
        default="unet-small", metadata=option_help("Architecture from 'geoseg models'.")
    )
    arch_kwargs: str | Mapping[str, Any] | None = field(
        default=None,
        metadata=option_help(
            "Architecture arguments, e.g. '{\"depth\": 4}'.", cli="arch_args", metavar="JSON"
        ),
    )
    epochs: int | None = field(
        default=None,
        metadata=option_help(
            "Most epochs (default: about 1000 optimizer steps, 15 to 150 epochs).", min=1
        ),
    )
    patience: int | None = field(
        default=None,
        metadata=option_help(
            "Stop after this many epochs without a better validation mIoU, once a third of the epochs ran "
            "(default: max(10, epochs/6); 0: never).",
            min=0,
        ),
    )
    batch_size: int | None = field(
        default=None,
        metadata=option_help(
            "Default: 16 on the CPU, 32 on CUDA, less for small chip sets (at least 4 steps an epoch).",
            min=1,
        ),
    )
    lr: float = field(default=2e-3, metadata=option_help(None, min=0, min_open=True))
    weight_decay: float = field(default=1e-4, metadata=option_help(None, min=0))
    warmup_epochs: float = field(
        default=1.0,
        metadata=option_help("Epochs of linear learning-rate warm-up.", min=0, api_only=True),
    )
    schedule: Schedule = field(default="cosine", metadata=option_help(None))
    class_weighting: ClassWeighting = field(
        default="sqrt", metadata=option_help(None, cli="class_weights")
    )
    dice_weight: float | None = field(
        default=None,
        metadata=option_help(
            "Weight of the Dice term beside cross-entropy (default: 0.5 for two classes, 1 for more).",
            min=0,
        ),
    )
    ema: float | None = field(
        default=None,
        metadata=option_help(
            "Validate and keep a moving average of the weights with this half-life in epochs (default: 3; "
            "0: the raw weights).",
            min=0,
            metavar="EPOCHS",
        ),
    )
    device: Device = field(
        default="auto", metadata=option_help("Where the network runs; auto uses CUDA when present.")
    )
    precision: TrainPrecision = field(
        default="auto",
        metadata=option_help(
            "auto: mixed precision on CUDA, fp32 on the CPU; bf16: bf16 autocast anywhere (CPUs with AMX / "
            "AVX-512 BF16)."
        ),
    )
    channels_last: bool = field(
        default=False,
        metadata=option_help(
            "Channels-last memory layout (faster convolutions on recent CPUs and GPUs)."
        ),
    )
    seed: int = field(default=0, metadata=option_help(None))
    workers: int = field(default=0, metadata=option_help("Data-loading processes.", min=0))
    pretrained: str | None = field(
        default=None,
        metadata=option_help(
            "Start the encoder from torchvision's ImageNet weights (downloaded once) or a local state dict "
            "(torchvision, torchgeo or timm layout); first convolution adapted to the bands by name.",
            metavar="imagenet|PATH",
        ),
    )
    pretrained_bands: str | tuple[str, ...] | None = field(
        default=None,
        metadata=option_help(
            "Band names of the --pretrained PATH weights' input, in order (ImageNet: red,green,blue).",
            metavar="NAME,...",
        ),
    )
    amp: bool = field(
        default=True,
        metadata=option_help("Allow mixed precision where --precision asks for it.", api_only=True),
    )

    def __post_init__(self) -> None:
        if isinstance(self.arch_kwargs, str):
            try:
                value = json.loads(self.arch_kwargs) if self.arch_kwargs else {}
            except json.JSONDecodeError as exc:
                raise OptionError(f"--arch-args is not JSON: {exc}") from None
            if not isinstance(value, dict):
                raise OptionError("--arch-args: give a JSON object, e.g. '{\"depth\": 4}'")
            object.__setattr__(self, "arch_kwargs", value)
        bands: Any = self.pretrained_bands
        if isinstance(bands, str):
            bands = tuple(b.strip() for b in bands.split(",")) if bands else None
        object.__setattr__(self, "pretrained_bands", tuple(bands) if bands is not None else None)
        for name in ("lr", "weight_decay", "warmup_epochs", "dice_weight", "ema"):
            value = getattr(self, name)
            if isinstance(value, int) and not isinstance(value, bool):
                object.__setattr__(self, name, float(value))
        check_fields(self)
        if self.ema is not None and not math.isfinite(self.ema):
            raise OptionError(f"--ema {self.ema} must be 0 (off) or a half-life in epochs above 0")

    @property
    def architecture_arguments(self) -> dict[str, Any]:
        """``arch_kwargs`` parsed (never text), empty when not given."""
        assert not isinstance(self.arch_kwargs, str)  # parsed in __post_init__
        return dict(self.arch_kwargs or {})

    @property
    def pretrained_band_names(self) -> tuple[str, ...] | None:
        """``pretrained_bands`` parsed (never text)."""
        assert not isinstance(self.pretrained_bands, str)  # parsed in __post_init__
        return self.pretrained_bands

    @classmethod
    def from_keywords(cls, base: TrainOptions | None = None, **keywords: Any) -> TrainOptions:
        """``base`` (or the defaults) with ``keywords`` replaced; an unknown keyword is an error."""
        return options_from_keywords(cls, "train", base, keywords)
