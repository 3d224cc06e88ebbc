"""Options of predict: how a scene is tiled and inferred (:class:`PredictOptions`), what happens
to each batch besides the forward pass (:class:`InferenceOptions`) and the dense CRF's settings
(:class:`CRFParams`). Imports neither torch nor dask."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from geoseg.errors import OptionError
from geoseg.options.fields import (
    Device,
    check_fields,
    choices,
    option_help,
    options_from_keywords,
)

if TYPE_CHECKING:
    import torch

Auto = Literal["auto"]
Tta = Literal["none", "flip", "d4"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]
#: ``auto``: ONNX Runtime on the CPU, PyTorch on CUDA (see :mod:`geoseg.engines`).
EngineName = Literal["auto", "torch", "onnx"]
OnError = Literal["fail", "skip"]
#: Codec of the rasters predict writes (see docs/outputs.md for which readers know which).
Compress = Literal["deflate", "zstd", "lzw", "none"]
#: GDAL resampling of band files / STAC assets coarser than the finest band (VRT source resampling).
Resampling = Literal["bilinear", "nearest", "cubic", "cubicspline", "lanczos", "average", "mode"]


@dataclass(frozen=True)
class CRFParams:
    """Dense-CRF mean-field settings. Positions are in pixels; colour is in normalised band
    units (band values minus mean over std), its squared distance averaged over the bands."""

    iterations: int = field(default=5, metadata=option_help("Mean-field iterations.", min=1))
    radius: int = field(default=4, metadata=option_help("Kernel window radius (pixels).", min=1))
    theta_alpha: float = field(
        default=8.0,
        metadata=option_help("Bilateral kernel: position scale (pixels).", min=0, min_open=True),
    )
    theta_beta: float = field(
        default=0.5,
        metadata=option_help(
            "Bilateral kernel: colour scale (normalized band units).", min=0, min_open=True
        ),
    )
    theta_gamma: float = field(
        default=2.0,
        metadata=option_help("Gaussian kernel: position scale (pixels).", min=0, min_open=True),
    )
    w_bilateral: float = field(
        default=5.0, metadata=option_help("Weight of the bilateral kernel.", min=0)
    )
    w_gaussian: float = field(
        default=3.0, metadata=option_help("Weight of the Gaussian kernel.", min=0)
    )

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
        metadata=option_help(
            "Network input size in pixels, margins included; auto = the tile of least work (overlap x the "
            "engine's measured time per pixel) within --memory-budget.",
            min=1,
        ),
    )
    margin: int | Auto = field(
        default="auto",
        metadata=option_help(
            "Context pixels on each side of a tile's core; auto = receptive field.", min=0
        ),
    )
    memory_budget: str | int | None = field(
        default=None,
        metadata=option_help(
            "Memory one tile's forward pass may use when --tile is auto, e.g. 2GB or 1500MB; default: a "
            "quarter of the memory per worker thread (on CUDA: most of the GPU's free memory).",
            metavar="SIZE",
            min=1,
        ),
    )
    batch_size: int = field(default=4, metadata=option_help("Tiles per forward pass.", min=1))
    device: Device = field(
        default="auto", metadata=option_help("Where the network runs; auto uses CUDA when present.")
    )
    bands: str | tuple[int, ...] | None = field(
        default=None,
        metadata=option_help(
            "Scene bands that feed the model, in order (1-based).", metavar="1,2,3"
        ),
    )
    tta: Tta = field(
        default="none",
        metadata=option_help(
            "Test-time augmentation: average logits over flips (d4: and rotations)."
        ),
    )
    scales: tuple[float, ...] = field(
        default=(1.0,),
        metadata=option_help("Average logits over these input scales.", metavar="0.75,1,1.25"),
    )
    crf: CRFParams | None = field(
        default=None,
        metadata=option_help(
            "Refine with the dense CRF (DeepLab v1); margin grows by iterations x radius."
        ),
    )
    engine: EngineName = field(
        default="auto",
        metadata=option_help(
            "Inference engine: onnx (ONNX Runtime), torch, or auto (ONNX Runtime on the CPU, PyTorch on CUDA)."
        ),
    )
    precision: Precision = field(
        default="auto",
        metadata=option_help(
            "Autocast precision of the PyTorch forward pass; auto = bf16 on CUDA GPUs that have it, else fp32."
        ),
    )
    channels_last: bool = field(
        default=False,
        metadata=option_help("Channels-last memory format (faster convolutions on recent GPUs)."),
    )
    compile: bool = field(
        default=False,
        metadata=option_help("torch.compile the network on each worker (falls back to eager)."),
    )
    on_error: OnError = field(
        default="fail",
        metadata=option_help(
            "A tile that cannot be read or inferred: fail the run, or write nodata there and list it in OUTPUT.skipped.json."
        ),
    )
    resampling: Resampling = field(
        default="bilinear",
        metadata=option_help(
            "How band files / STAC assets at a coarser resolution are resampled onto the finest band's grid."
        ),
    )
    compress: Compress = field(
        default="deflate",
        metadata=option_help(
            "Codec of the rasters written: deflate (every GIS reads it), zstd (smaller and faster; GDAL "
            ">= 2.3 built with it, as QGIS 3 packages are), lzw, none."
        ),
    )
    compress_level: int | None = field(
        default=None,
        metadata=option_help(
            "Codec level (deflate 1-12, zstd 1-22); default: the measured choice (docs/outputs.md).",
            min=1,
        ),
    )
    cells: int | None = field(
        default=None,
        metadata=option_help(
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
        check_fields(self)
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
        return options_from_keywords(cls, "predict", base, keywords)


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
