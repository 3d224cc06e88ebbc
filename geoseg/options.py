"""Options of predict (and its polygons): the one source for API keywords, CLI options and
the job-file schema.

:class:`PredictOptions` lists every knob of the tiled inference with its type, default and
help. ``geoseg.predict`` takes its fields as keywords, ``geoseg predict`` makes one Click option
per field (:func:`geoseg.cli.options.predict_options`), and ``batch.SCHEMA["predict"]`` is derived
from it (:func:`job_schema`), so a new field appears in all three. Fields typed with a
``Literal`` are checked against its values. Importing this module imports neither torch nor dask.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import json
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Union

from geoseg.errors import OptionError

if TYPE_CHECKING:
    import torch

Auto = Literal["auto"]
Tta = Literal["none", "flip", "d4"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]
#: ``auto``: ONNX Runtime on the CPU, PyTorch on CUDA (see :mod:`geoseg.engines`).
EngineName = Literal["auto", "torch", "onnx"]
OnError = Literal["fail", "skip"]
Device = Literal["auto", "cpu", "cuda"]
#: Codec of the rasters predict writes (see docs/outputs.md for which readers know which).
Compress = Literal["deflate", "zstd", "lzw", "none"]
#: GDAL resampling of band files / STAC assets coarser than the finest band (VRT source resampling).
Resampling = Literal["bilinear", "nearest", "cubic", "cubicspline", "lanczos", "average", "mode"]


def choices(literal: Any) -> tuple[Any, ...]:
    """The values of a ``Literal`` type, for ``click.Choice`` and error messages."""
    return typing.get_args(literal)


def _help(text: str | None, **extra: Any) -> dict[str, Any]:
    return {"help": text, **extra}


@dataclass(frozen=True)
class CRFParams:
    """Dense-CRF mean-field settings. Positions are in pixels; colour is in normalised band
    units (band values minus mean over std), its squared distance averaged over the bands."""

    iterations: int = field(default=5, metadata=_help("Mean-field iterations.", min=1))
    radius: int = field(default=4, metadata=_help("Kernel window radius (pixels).", min=1))
    theta_alpha: float = field(
        default=8.0,
        metadata=_help("Bilateral kernel: position scale (pixels).", min=0, min_open=True),
    )
    theta_beta: float = field(
        default=0.5,
        metadata=_help(
            "Bilateral kernel: colour scale (normalized band units).", min=0, min_open=True
        ),
    )
    theta_gamma: float = field(
        default=2.0,
        metadata=_help("Gaussian kernel: position scale (pixels).", min=0, min_open=True),
    )
    w_bilateral: float = field(
        default=5.0, metadata=_help("Weight of the bilateral kernel.", min=0)
    )
    w_gaussian: float = field(default=3.0, metadata=_help("Weight of the Gaussian kernel.", min=0))

    def __post_init__(self) -> None:
        if self.iterations < 1 or self.radius < 1:
            raise OptionError("CRF iterations and radius must be at least 1")
        if min(self.theta_alpha, self.theta_beta, self.theta_gamma) <= 0:
            raise OptionError("CRF theta values must be positive")
        if min(self.w_bilateral, self.w_gaussian) < 0:
            raise OptionError("CRF weights must be non-negative")

    @property
    def reach(self) -> int:
        """How far (pixels) information travels: what the tile margin must add."""
        return self.iterations * self.radius


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
            raise OptionError(
                f"unknown --precision {self.precision!r}; use {', '.join(PRECISIONS)}"
            )
        if self.tta not in TTA_MODES:
            raise OptionError(f"unknown --tta {self.tta!r}; use {', '.join(TTA_MODES)}")
        if not self.scales:
            raise OptionError("--scales needs at least one scale, e.g. 1 or 0.75,1,1.25")
        from geoseg.tiling import scale_fractions

        scale_fractions(self.scales)

    @property
    def plain(self) -> bool:
        return self.tta == "none" and tuple(self.scales) == (1.0,) and self.crf is None

    @property
    def dtype(self) -> "torch.dtype | None":
        """The autocast dtype, or None for float32 (``auto``: see :meth:`dtype_on`)."""
        import torch

        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)

    def dtype_on(self, device: "torch.device") -> "torch.dtype | None":
        """The autocast dtype on ``device``: ``auto`` is bf16 on CUDA devices that support it."""
        import torch

        if self.precision == "auto":
            if device.type == "cuda" and torch.cuda.is_bf16_supported():
                return torch.bfloat16
            return None
        return self.dtype

    def alignment(self, stride: int) -> int:
        """Tile origins and sizes must be multiples of this (the stride, more with scales)."""
        from geoseg.tiling import scales_alignment

        return scales_alignment(stride, self.scales)

    def context(self, receptive_field: int) -> int:
        """Pixels of context one output pixel needs: the tile margin that keeps tiling exact."""
        from geoseg.tiling import context_radius

        return context_radius(receptive_field, self.scales, self.crf.reach if self.crf else 0)


@dataclass(frozen=True)
class PredictOptions:
    """How a scene is tiled and inferred; every field is a ``geoseg.predict`` keyword, a
    ``geoseg predict`` option (``--batch-size`` for ``batch_size``) and a job-file key."""

    tile: int | Auto = field(
        default="auto",
        metadata=_help(
            "Network input size in pixels, margins included; auto = the tile of least work (overlap x the "
            "engine's measured time per pixel) within --memory-budget.",
            min=1,
        ),
    )
    margin: int | Auto = field(
        default="auto",
        metadata=_help(
            "Context pixels on each side of a tile's core; auto = receptive field.", min=0
        ),
    )
    memory_budget: str | int | None = field(
        default=None,
        metadata=_help(
            "Memory one tile's forward pass may use when --tile is auto, e.g. 2GB or 1500MB; default: a "
            "quarter of the memory per worker thread (on CUDA: most of the GPU's free memory).",
            metavar="SIZE",
            min=1,
        ),
    )
    batch_size: int = field(default=4, metadata=_help("Tiles per forward pass.", min=1))
    device: Device = field(
        default="auto", metadata=_help("Where the network runs; auto uses CUDA when present.")
    )
    bands: str | tuple[int, ...] | None = field(
        default=None,
        metadata=_help("Scene bands that feed the model, in order (1-based).", metavar="1,2,3"),
    )
    tta: Tta = field(
        default="none",
        metadata=_help("Test-time augmentation: average logits over flips (d4: and rotations)."),
    )
    scales: tuple[float, ...] = field(
        default=(1.0,),
        metadata=_help("Average logits over these input scales.", metavar="0.75,1,1.25"),
    )
    crf: CRFParams | None = field(
        default=None,
        metadata=_help(
            "Refine with the dense CRF (DeepLab v1); margin grows by iterations x radius."
        ),
    )
    engine: EngineName = field(
        default="auto",
        metadata=_help(
            "Inference engine: onnx (ONNX Runtime), torch, or auto (ONNX Runtime on the CPU, PyTorch on CUDA)."
        ),
    )
    precision: Precision = field(
        default="auto",
        metadata=_help(
            "Autocast precision of the PyTorch forward pass; auto = bf16 on CUDA GPUs that have it, else fp32."
        ),
    )
    channels_last: bool = field(
        default=False,
        metadata=_help("Channels-last memory format (faster convolutions on recent GPUs)."),
    )
    compile: bool = field(
        default=False,
        metadata=_help("torch.compile the network on each worker (falls back to eager)."),
    )
    on_error: OnError = field(
        default="fail",
        metadata=_help(
            "A tile that cannot be read or inferred: fail the run, or write nodata there and list it in OUTPUT.skipped.json."
        ),
    )
    resampling: Resampling = field(
        default="bilinear",
        metadata=_help(
            "How band files / STAC assets at a coarser resolution are resampled onto the finest band's grid."
        ),
    )
    compress: Compress = field(
        default="deflate",
        metadata=_help(
            "Codec of the rasters written: deflate (every GIS reads it), zstd (smaller and faster; GDAL "
            ">= 2.3 built with it, as QGIS 3 packages are), lzw, none."
        ),
    )
    compress_level: int | None = field(
        default=None,
        metadata=_help(
            "Codec level (deflate 1-12, zstd 1-22); default: the measured choice (docs/outputs.md).",
            min=1,
        ),
    )
    cells: int | None = field(
        default=None,
        metadata=_help(
            "Write OUTPUT as a folder of N x N pixel COG cells, each written by the worker that computed it, "
            "with a VRT mosaic per raster and a STAC collection; a rerun keeps finished cells.",
            min=1,
        ),
    )

    def __post_init__(self) -> None:
        # normalise the forms a job file or a caller gives (lists, True, a dict of CRF settings)
        if isinstance(self.scales, (list, tuple)):
            try:
                object.__setattr__(self, "scales", tuple(float(s) for s in self.scales))
            except (TypeError, ValueError):
                raise OptionError(
                    f"--scales takes numbers, e.g. 0.75,1,1.25; got {self.scales!r}"
                ) from None
        bands: Any = self.bands  # a job file gives a list
        if isinstance(bands, list):
            object.__setattr__(self, "bands", tuple(bands))
        object.__setattr__(self, "crf", _crf(self.crf))
        for name in ("tile", "margin"):
            if getattr(self, name) is None:
                object.__setattr__(self, name, "auto")
        _check_fields(self)
        if not self.scales:
            raise OptionError("--scales needs at least one scale, e.g. 1 or 0.75,1,1.25")
        if self.memory_budget is not None:
            if self.tile != "auto":
                raise OptionError("--memory-budget chooses the automatic tile; drop it, or --tile")
            from geoseg.memory import parse_size

            try:
                parse_size(self.memory_budget)
            except ValueError as exc:
                raise OptionError(f"--memory-budget: {exc}") from None

    @property
    def memory_budget_bytes(self) -> int | None:
        """``memory_budget`` in bytes (None: the default, see :func:`geoseg.prediction.tile_budget.default_budget`)."""
        from geoseg.memory import parse_size

        return None if self.memory_budget is None else parse_size(self.memory_budget)

    @classmethod
    def from_keywords(cls, base: PredictOptions | None = None, **keywords: Any) -> PredictOptions:
        """``base`` (or the defaults) with ``keywords`` replaced; an unknown keyword is an error
        that lists the known ones."""
        return _from_keywords(cls, "predict", base, keywords)


OptionsT = typing.TypeVar("OptionsT")


def take_fields(values: dict[str, Any], cls: type) -> dict[str, Any]:
    """Remove the fields of the options dataclass ``cls`` from ``values`` (keywords given to the
    API, or a command's parameters) and return them, as ``cls``'s keywords."""
    return {f.name: values.pop(f.name) for f in dataclasses.fields(cls) if f.name in values}


def _from_keywords(
    cls: type[OptionsT], what: str, base: OptionsT | None, keywords: dict[str, Any]
) -> OptionsT:
    """``base`` (or ``cls``'s defaults) with ``keywords`` replaced; an unknown keyword is an
    error that lists the known ones."""
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(keywords) - known)
    if unknown:
        raise OptionError(f"unknown {what} option(s) {unknown}; known: {', '.join(sorted(known))}")
    if base is None:
        return cls(**keywords)
    return dataclasses.replace(base, **keywords)  # type: ignore[type-var]


def _crf(value: Any) -> CRFParams | None:
    """CRF settings from True (defaults), a dict of :class:`CRFParams` fields, or None/False."""
    if value is None or value is False:
        return None
    if value is True:
        return CRFParams()
    if isinstance(value, dict):
        try:
            return CRFParams(**value)
        except TypeError as exc:
            raise OptionError(f"bad CRF settings {value}: {exc}") from None
    if isinstance(value, CRFParams):
        return value
    raise OptionError(f"crf: give true, false or a mapping of CRF settings, not {value!r}")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _check_fields(options: Any) -> None:
    """Check every field of an options dataclass against its type (Literal values, int minimums)."""
    hints = typing.get_type_hints(type(options))
    for f in dataclasses.fields(options):
        _check_value(
            f.metadata.get("cli", f.name), getattr(options, f.name), hints[f.name], f.metadata
        )


def _check_value(name: str, value: Any, hint: Any, meta: Any) -> None:
    """Check ``value`` against a field's type: Literal values, numbers (with ``min``), tuples."""
    if value is None:
        return
    union = typing.get_origin(hint) in (Union, types.UnionType)
    parts = typing.get_args(hint) if union else (hint,)
    allowed = tuple(v for p in parts if typing.get_origin(p) is Literal for v in typing.get_args(p))
    if any(value == v and type(value) is type(v) for v in allowed):
        return
    for p in parts:
        if typing.get_origin(p) is tuple and isinstance(value, tuple):
            for v in value:
                _check_value(name, v, typing.get_args(p)[0], {})
            return
        if (
            p in (int, float)
            and isinstance(value, (int, float))
            and not isinstance(value, bool)
            and (p is float or isinstance(value, int))
        ):
            low, high = meta.get("min"), meta.get("max")
            if low is not None and (value < low or (meta.get("min_open") and value == low)):
                raise OptionError(
                    f"{_flag(name)} must be {'above' if meta.get('min_open') else 'at least'} "
                    f"{low}, got {value}"
                )
            if high is not None and value > high:
                raise OptionError(f"{_flag(name)} must be at most {high}, got {value}")
            return
        if typing.get_origin(p) in (dict, collections.abc.Mapping) and isinstance(
            value, collections.abc.Mapping
        ):
            return
        if p in (str, bool) and type(value) is p:
            return
        if isinstance(p, type) and dataclasses.is_dataclass(p) and isinstance(value, p):
            return
    if allowed and not {int, float} & set(parts):
        raise OptionError(f"unknown {_flag(name)} {value!r}; use {', '.join(map(str, allowed))}")
    what = " or ".join(
        [repr(v) for v in allowed]
        + [
            {int: "a whole number", float: "a number", str: "text", bool: "true or false"}.get(
                p,
                "a mapping"
                if typing.get_origin(p) in (dict, collections.abc.Mapping)
                else getattr(p, "__name__", str(p)),
            )
            for p in parts
            if typing.get_origin(p) is not Literal and p is not type(None)
        ]
    )
    raise OptionError(f"{_flag(name)} must be {what}, got {value!r}")


#: Polygon file formats by extension: (OGR driver, holds any CRS). What ``geoseg vectorize``
#: writes; a driver's first extension is its name in a job file's ``vector.format``.
VECTOR_FORMATS: dict[str, tuple[str, bool]] = {
    ".gpkg": ("GPKG", True),
    ".fgb": ("FlatGeobuf", True),
    ".geojson": ("GeoJSON", False),
    ".json": ("GeoJSON", False),
    ".shp": ("ESRI Shapefile", True),
    ".parquet": ("Parquet", True),
    ".geoparquet": ("Parquet", True),
}


def _format_names() -> tuple[str, ...]:
    names: dict[str, str] = {}
    for ext, (driver, _) in VECTOR_FORMATS.items():
        names.setdefault(driver, ext[1:])
    return tuple(names.values())


#: One name per polygon format (gpkg, fgb, geojson, shp, parquet): job files' ``vector.format``.
VECTOR_FORMAT_NAMES: tuple[str, ...] = _format_names()
#: The formats for help texts: ".gpkg .fgb .geojson .shp .parquet".
VECTOR_FORMAT_HELP = " ".join(f".{n}" for n in VECTOR_FORMAT_NAMES)


@dataclass(frozen=True)
class VectorOptions:
    """How a class raster becomes polygons: ``geoseg.vector.vectorize`` keywords, ``geoseg vectorize``
    options and the job file's ``vector`` keys (plus ``format``)."""

    connectivity: Literal[4, 8] = field(
        default=4, metadata=_help("Pixel neighbourhood of a region (GDAL's default is 4).")
    )
    skip_classes: tuple[int, ...] = field(
        default=(),
        metadata=_help(
            "Class value to leave out (repeatable), e.g. background.", flag="skip_class"
        ),
    )
    min_area: float = field(
        default=0.0,
        metadata=_help(
            "Merge regions smaller than this (square CRS units) into a neighbour.", min=0
        ),
    )
    simplify: float | None = field(
        default=None,
        metadata=_help("Simplify the layer as a coverage with this tolerance (CRS units).", min=0),
    )
    block_size: int | None = field(
        default=None, metadata=_help("Block size in pixels (default ~1024).", min=64)
    )
    dst_crs: str | None = field(
        default=None,
        metadata=_help(
            "Write polygons in this CRS (e.g. EPSG:4326); areas stay measured in the raster's CRS.",
            metavar="CRS",
        ),
    )
    style: bool = field(
        default=True,
        metadata=_help(
            "Add QGIS's default style, categorized by class in the model's colours "
            "(GeoPackage: layer_styles table; other formats: a .qml sidecar)."
        ),
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "skip_classes", tuple(self.skip_classes))
        _check_fields(self)


#: Which scene wins where a map's scenes overlap (see :mod:`geoseg.mapping`).
MapOrder = Literal["given", "newest"]


@dataclass(frozen=True)
class MapOptions:
    """A map's output grid, overlap priority and area: ``geoseg.map`` keywords, ``geoseg map``
    options and the keys of a job's ``map`` section (besides ``scenes`` and ``output``)."""

    crs: str | None = field(
        default=None,
        metadata=_help(
            "Output CRS (EPSG:32633, PROJ or WKT); default: the scenes' own, when they share one.",
            metavar="CRS",
        ),
    )
    resolution: float | None = field(
        default=None,
        metadata=_help(
            "Output pixel size in CRS units; default: the scenes' own, when they share one.",
            min=0,
            min_open=True,
        ),
    )
    order: MapOrder = field(
        default="given",
        metadata=_help(
            "Which scene wins where scenes overlap: the first given, or the newest (STAC datetime, else "
            "the file's ACQUISITIONDATETIME or TIFFTAG_DATETIME tag)."
        ),
    )
    aoi: str | None = field(
        default=None,
        metadata=_help(
            "Vector file (any format and CRS): output cut to its bounding box, nodata outside its polygons.",
            metavar="FILE",
        ),
    )

    def __post_init__(self) -> None:
        value: Any = self.resolution  # a job file or a caller may give a whole number
        if isinstance(value, int) and not isinstance(value, bool):
            object.__setattr__(self, "resolution", float(value))
        _check_fields(self)

    @classmethod
    def from_keywords(cls, base: MapOptions | None = None, **keywords: Any) -> MapOptions:
        """``base`` (or the defaults) with ``keywords`` replaced; an unknown keyword is an error."""
        return _from_keywords(cls, "map", base, keywords)


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
        metadata=_help(
            "Chip size in pixels (default: the largest of 256/128/64/32 that fits 24 chips in the labelled "
            "area; a grown folder keeps its size).",
            min=8,
        ),
    )
    stride: int | None = field(
        default=None, metadata=_help("Step between chips (default: --size).", min=1)
    )
    bands: str | tuple[int, ...] | None = field(
        default=None,
        metadata=_help("Image bands to keep, in order (default: all).", metavar="1,2,3"),
    )
    label_field: str | None = field(
        default=None, metadata=_help("Attribute holding the class, for vector labels.")
    )
    value_map: str | Mapping[str, int] | None = field(
        default=None,
        metadata=_help("Map label-field values to class numbers.", metavar="NAME=VALUE,..."),
    )
    background: int | None = field(
        default=None,
        metadata=_help(
            "Class of pixels outside every polygon (vector labels); default: not labelled.",
            min=0,
            max=254,
        ),
    )
    label_nodata_is_class: bool = field(
        default=False,
        metadata=_help(
            "Read a label raster's nodata value as a class (some rasters flag background as nodata)."
        ),
    )
    class_names: str | ClassNames | None = field(
        default=None,
        metadata=_help(
            "Class names and colours, e.g. 1=farmland:#e6c84b,2=forest.",
            cli="classes",
            metavar="VALUE=NAME[:#RRGGBB],...",
        ),
    )
    ignore_value: int | None = field(
        default=None,
        metadata=_help("Label value meaning 'not labelled' (default 255).", min=0, max=255),
    )
    min_labeled: float = field(
        default=0.0,
        metadata=_help(
            "Least labelled fraction of a chip (0: any chip with a labelled pixel).", min=0, max=1
        ),
    )
    max_nodata: float = field(
        default=1.0,
        metadata=_help(
            "Most image-nodata fraction of a chip (nodata pixels are never learned from).",
            min=0,
            max=1,
        ),
    )
    val_fraction: float = field(
        default=0.2, metadata=_help("Share of split blocks for validation.", min=0, max=1)
    )
    test_fraction: float = field(
        default=0.0, metadata=_help("Share of split blocks for testing.", min=0, max=1)
    )
    split_block: int | None = field(
        default=None,
        metadata=_help(
            "Split block size in pixels (default: the largest of 4, 3 or 2 x --size that gives 6 blocks).",
            min=8,
        ),
    )
    seed: int = field(default=0, metadata=_help("Seed of the split."))
    stratify: bool = field(
        default=True,
        metadata=_help(
            "Draw validation and test blocks so that they hold every class (label rasters); --no-stratify "
            "draws them at random, as geoseg chip did before."
        ),
    )
    oversample_rare: float = field(
        default=0.0, metadata=_help("Extra sampling weight of chips holding rare classes.", min=0)
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
        _check_fields(self)

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
        return _from_keywords(cls, "chip", base, keywords)


#: Precision of training's forward and backward passes (``auto``: mixed on CUDA, fp32 on the CPU).
TrainPrecision = Literal["auto", "fp32", "bf16"]
Schedule = Literal["cosine", "poly"]
ClassWeighting = Literal["sqrt", "inverse", "none"]


@dataclass(frozen=True)
class TrainOptions:
    """How a model is trained: ``geoseg.train`` keywords, ``geoseg train`` options
    (``--arch-args`` for ``arch_kwargs``, ``--class-weights`` for ``class_weighting``) and the
    keys of a recipe's ``train`` step. Fields marked ``api_only`` have no command-line option."""

    arch: str = field(default="unet-small", metadata=_help("Architecture from 'geoseg models'."))
    arch_kwargs: str | Mapping[str, Any] | None = field(
        default=None,
        metadata=_help(
            "Architecture arguments, e.g. '{\"depth\": 4}'.", cli="arch_args", metavar="JSON"
        ),
    )
    epochs: int | None = field(
        default=None,
        metadata=_help(
            "Most epochs (default: about 1000 optimizer steps, 15 to 150 epochs).", min=1
        ),
    )
    patience: int | None = field(
        default=None,
        metadata=_help(
            "Stop after this many epochs without a better validation mIoU, once a third of the epochs ran "
            "(default: max(10, epochs/6); 0: never).",
            min=0,
        ),
    )
    batch_size: int | None = field(
        default=None,
        metadata=_help(
            "Default: 16 on the CPU, 32 on CUDA, less for small chip sets (at least 4 steps an epoch).",
            min=1,
        ),
    )
    lr: float = field(default=2e-3, metadata=_help(None, min=0, min_open=True))
    weight_decay: float = field(default=1e-4, metadata=_help(None, min=0))
    warmup_epochs: float = field(
        default=1.0, metadata=_help("Epochs of linear learning-rate warm-up.", min=0, api_only=True)
    )
    schedule: Schedule = field(default="cosine", metadata=_help(None))
    class_weighting: ClassWeighting = field(
        default="sqrt", metadata=_help(None, cli="class_weights")
    )
    dice_weight: float | None = field(
        default=None,
        metadata=_help(
            "Weight of the Dice term beside cross-entropy (default: 0.5 for two classes, 1 for more).",
            min=0,
        ),
    )
    ema: float | None = field(
        default=None,
        metadata=_help(
            "Validate and keep a moving average of the weights with this half-life in epochs (default: 3; "
            "0: the raw weights).",
            min=0,
            metavar="EPOCHS",
        ),
    )
    device: Device = field(
        default="auto", metadata=_help("Where the network runs; auto uses CUDA when present.")
    )
    precision: TrainPrecision = field(
        default="auto",
        metadata=_help(
            "auto: mixed precision on CUDA, fp32 on the CPU; bf16: bf16 autocast anywhere (CPUs with AMX / "
            "AVX-512 BF16)."
        ),
    )
    channels_last: bool = field(
        default=False,
        metadata=_help(
            "Channels-last memory layout (faster convolutions on recent CPUs and GPUs)."
        ),
    )
    seed: int = field(default=0, metadata=_help(None))
    workers: int = field(default=0, metadata=_help("Data-loading processes.", min=0))
    pretrained: str | None = field(
        default=None,
        metadata=_help(
            "Start the encoder from torchvision's ImageNet weights (downloaded once) or a local state dict "
            "(torchvision, torchgeo or timm layout); first convolution adapted to the bands by name.",
            metavar="imagenet|PATH",
        ),
    )
    pretrained_bands: str | tuple[str, ...] | None = field(
        default=None,
        metadata=_help(
            "Band names of the --pretrained PATH weights' input, in order (ImageNet: red,green,blue).",
            metavar="NAME,...",
        ),
    )
    amp: bool = field(
        default=True,
        metadata=_help("Allow mixed precision where --precision asks for it.", api_only=True),
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
        _check_fields(self)
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
        return _from_keywords(cls, "train", base, keywords)


def key_of(f: dataclasses.Field[Any]) -> str:
    """A field's name in the job file and on the command line (``skip_class`` for ``skip_classes``)."""
    return str(f.metadata.get("flag", f.name))


def job_schema(cls: type) -> dict[str, Any]:
    """The job-file schema of an options dataclass: each field's key and the YAML types it takes."""
    hints = typing.get_type_hints(cls)
    return {key_of(f): _yaml_types(hints[f.name]) for f in dataclasses.fields(cls)}


def _yaml_types(hint: Any) -> Any:
    """YAML types for a field type: 'int|auto' for ``int | Literal['auto']``, else a type or tuple."""
    union = typing.get_origin(hint) in (Union, types.UnionType)
    parts = typing.get_args(hint) if union else (hint,)
    if CRFParams in parts:
        return (bool, dict)
    out: list[type] = []
    auto = False
    for p in parts:
        if p is type(None):
            continue
        if typing.get_origin(p) is Literal:
            values = typing.get_args(p)
            if values == ("auto",):
                auto = True
            else:
                out.extend(t for t in dict.fromkeys(type(v) for v in values) if t not in out)
        elif typing.get_origin(p) is tuple:
            out.append(list)
        elif typing.get_origin(p) in (dict, collections.abc.Mapping):
            out.append(dict)
        elif p is float:
            out.extend(t for t in (int, float) if t not in out)
        elif isinstance(p, type):
            out.append(p)
    if auto and out == [int]:
        return "int|auto"
    return out[0] if len(out) == 1 else tuple(out)
