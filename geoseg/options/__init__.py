"""Options of predict, polygons, maps, chips and training: the one source for API keywords, CLI
options and the job-file schema.

Each options dataclass lists every knob of one step with its type, default and help.
:class:`PredictOptions`, for example: ``geoseg.predict`` takes its fields as keywords,
``geoseg predict`` makes one Click option per field (:func:`geoseg.cli.options.predict_options`),
and ``batch.SCHEMA["predict"]`` is derived from it (:func:`job_schema`), so a new field appears in
all three. Fields typed with a ``Literal`` are checked against its values. Importing this package
imports neither torch nor dask.

One module per concern, every name re-exported here: :mod:`~geoseg.options.fields` (the
machinery: field metadata, checks, keywords, job schema), :mod:`~geoseg.options.predict`
(``PredictOptions``, ``InferenceOptions``, ``CRFParams``), :mod:`~geoseg.options.vector` (the
vector formats, ``VectorOptions``), :mod:`~geoseg.options.mapping` (``MapOptions``) and
:mod:`~geoseg.options.training` (``ChipOptions``, ``TrainOptions``).
"""

from geoseg.options.fields import (
    Device,
    OptionsT,
    choices,
    job_schema,
    key_of,
    take_fields,
)
from geoseg.options.mapping import MapOptions, MapOrder
from geoseg.options.predict import (
    PRECISIONS,
    TTA_MODES,
    Auto,
    Compress,
    CRFParams,
    EngineName,
    InferenceOptions,
    OnError,
    Precision,
    PredictOptions,
    Resampling,
    Tta,
)
from geoseg.options.training import (
    ChipOptions,
    ClassNames,
    ClassWeighting,
    Schedule,
    TrainOptions,
    TrainPrecision,
)
from geoseg.options.vector import (
    VECTOR_FORMAT_HELP,
    VECTOR_FORMAT_NAMES,
    VECTOR_FORMATS,
    VectorOptions,
)

__all__ = [
    "PRECISIONS",
    "TTA_MODES",
    "VECTOR_FORMATS",
    "VECTOR_FORMAT_HELP",
    "VECTOR_FORMAT_NAMES",
    "Auto",
    "CRFParams",
    "ChipOptions",
    "ClassNames",
    "ClassWeighting",
    "Compress",
    "Device",
    "EngineName",
    "InferenceOptions",
    "MapOptions",
    "MapOrder",
    "OnError",
    "OptionsT",
    "Precision",
    "PredictOptions",
    "Resampling",
    "Schedule",
    "TrainOptions",
    "TrainPrecision",
    "Tta",
    "VectorOptions",
    "choices",
    "job_schema",
    "key_of",
    "take_fields",
]
