"""Options shared by several commands (each declared once here), and the one place library
errors become Click errors."""

from __future__ import annotations

import dataclasses
import functools
import json
import signal
import threading
import types
import typing
import warnings
from typing import TYPE_CHECKING, Any, Callable, Literal, TypeVar, Union

import click

from geoseg.errors import GeosegError, GeosegWarning
from geoseg.options import (
    VECTOR_FORMAT_HELP,
    ChipOptions,
    CRFParams,
    MapOptions,
    PredictOptions,
    TrainOptions,
    VectorOptions,
    take_fields,
)

if TYPE_CHECKING:
    from rasterio.windows import Window

F = TypeVar("F", bound=Callable[..., Any])


def report_errors(func: F) -> F:
    """Run a command body: GeosegError -> one-line ClickException; geoseg warnings -> stderr."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _terminate_as_interrupt()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", GeosegWarning)
            try:
                return func(*args, **kwargs)
            except GeosegError as exc:
                raise click.ClickException(str(exc)) from exc
            except MemoryError as exc:
                raise click.ClickException(
                    "out of memory; lower --batch-size or --tile, or use fewer --workers"
                ) from exc
            finally:
                for w in caught:
                    if issubclass(w.category, GeosegWarning):
                        click.echo(f"Warning: {w.message}", err=True)

    return wrapper  # type: ignore[return-value]


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _terminate_as_interrupt() -> None:
    """Let SIGTERM (a scheduler's or a user's kill) unwind like Ctrl-C, so temporary files are
    removed and nothing is left at the output path."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)


overwrite_option = click.option(
    "--overwrite", is_flag=True, help="Replace output files that already exist."
)
quiet_option = click.option("--quiet", "-q", is_flag=True, help="No progress on stderr.")
verbose_option = click.option(
    "--verbose", "-v", is_flag=True, help="Also show the local Dask workers' own logs on stderr."
)


def workers_option(help: str) -> Callable[[F], F]:
    """``--workers N`` for a local Dask cluster; ``help`` says what N starts and the default."""
    return click.option("--workers", type=click.IntRange(min=1), default=None, help=help)


scheduler_option = click.option(
    "--scheduler",
    metavar="ADDRESS",
    default=None,
    help="Address of an existing Dask scheduler (tcp://host:8786); default: a local cluster.",
)


def cluster_options(workers_help: str) -> Callable[[F], F]:
    """``--workers`` (``workers_help`` says what N starts and the default) and ``--scheduler``:
    where a command's Dask tasks run."""

    def decorate(func: F) -> F:
        return workers_option(workers_help)(scheduler_option(func))

    return decorate


def run_options(workers_help: str, verbose: bool = False) -> Callable[[F], F]:
    """How a command that writes outputs runs: :func:`cluster_options`, ``--overwrite``,
    ``--quiet`` (and ``--verbose``); :func:`take_run_options` makes them the library's keywords."""
    last = [overwrite_option, quiet_option] + ([verbose_option] if verbose else [])

    def decorate(func: F) -> F:
        return _apply([cluster_options(workers_help), *last], func)

    return decorate


_RUN_NAMES = ("workers", "scheduler", "overwrite", "quiet", "verbose")


def take_run_options(values: dict[str, Any]) -> dict[str, Any]:
    """Remove :func:`run_options`' values from a command's parameters, as library keywords
    (``workers``, ``scheduler``, ``overwrite``, ``quiet`` and ``verbose`` where given)."""
    return {name: values.pop(name) for name in _RUN_NAMES if name in values}


_PATH_KINDS = {"file": click.Path(dir_okay=False), "folder": click.Path(file_okay=False)}


def output_option(
    help: str, kind: Literal["file", "folder", "any"] = "file", name: str = "output"
) -> Callable[[F], F]:
    """The required ``-o/--output``: a file, a folder, or (``any``) a path or URL the library
    checks; ``name`` is the command's parameter."""
    return click.option(
        "-o", "--output", name, required=True, type=_PATH_KINDS.get(kind), help=help
    )


def vector_output_option(of: str) -> Callable[[F], F]:
    """``--vector FILE``: also polygons of ``of`` (e.g. "the classes"), shaped by :func:`vector_options`."""
    return click.option(
        "--vector",
        type=click.Path(dir_okay=False),
        default=None,
        help=f"Also write polygons of {of} ({VECTOR_FORMAT_HELP}); the options below shape them.",
    )


def auto_or_int(value: str, minimum: int, hint: str) -> int | str:
    """``auto``, or an integer of at least ``minimum``, for the option ``hint``."""
    if value == "auto":
        return value
    try:
        n = int(value)
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not 'auto' or a whole number", param_hint=hint
        ) from None
    if n < minimum:
        raise click.BadParameter(f"must be 'auto' or >= {minimum}, got {n}", param_hint=hint)
    return n


def json_object(text: str | None, hint: str) -> dict[str, Any]:
    """A JSON object given on the command line (empty when not given)."""
    try:
        value = json.loads(text) if text else {}
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint=hint) from None
    if not isinstance(value, dict):
        raise click.BadParameter("give a JSON object, e.g. '{\"depth\": 4}'", param_hint=hint)
    return value


# --- options generated from geoseg.options (one source for API, CLI and job file) --------------


def _field_option(f: dataclasses.Field[Any], hint: Any, prefix: str = "") -> Callable[[F], F]:
    """One Click option for a field of an options dataclass, typed from its annotation."""
    meta = f.metadata
    name = prefix + str(meta.get("cli", meta.get("flag", f.name)))
    flag = "--" + name.replace("_", "-")
    param = prefix + f.name
    kw: dict[str, Any] = {
        "help": meta.get("help"),
        "default": f.default,
        "show_default": True,
        "metavar": meta.get("metavar"),
    }
    low, high = meta.get("min"), meta.get("max")
    union = typing.get_origin(hint) in (Union, types.UnionType)
    parts = tuple(p for p in (typing.get_args(hint) if union else (hint,)) if p is not type(None))
    literal_values = tuple(
        v for p in parts if typing.get_origin(p) is Literal for v in typing.get_args(p)
    )
    if hint is bool:
        if f.default is True:  # on by default: --style / --no-style
            return click.option(
                f"{flag}/--no-{flag[2:]}", param, default=True, show_default=True, help=kw["help"]
            )
        return click.option(flag, param, is_flag=True, help=kw["help"])
    if literal_values == ("auto",) and int in parts:
        return click.option(
            flag,
            param,
            default="auto",
            show_default=True,
            help=kw["help"],
            callback=lambda ctx, p, v: auto_or_int(v, low or 0, flag),
        )
    if literal_values and len(parts) == 1:
        if all(isinstance(v, int) for v in literal_values):  # e.g. connectivity 4 | 8
            return click.option(
                flag,
                param,
                type=click.Choice([str(v) for v in literal_values]),
                default=str(f.default),
                show_default=True,
                help=kw["help"],
                callback=lambda ctx, p, v: int(v),
            )
        return click.option(flag, param, type=click.Choice(literal_values), **kw)
    if typing.get_origin(hint) is tuple and typing.get_args(hint)[0] is float:  # scales
        default = typing.cast("tuple[float, ...]", f.default)
        return click.option(
            flag,
            param,
            default=",".join(f"{v:g}" for v in default),
            show_default=True,
            metavar=meta.get("metavar"),
            help=kw["help"],
            callback=lambda ctx, p, v: _float_list(v, flag),
        )
    if typing.get_origin(hint) is tuple:  # repeatable values, e.g. --skip-class
        return click.option(
            flag, param, type=typing.get_args(hint)[0], multiple=True, help=kw["help"]
        )
    if str in parts:  # free text parsed by the library, e.g. --bands 1,2,3
        if f.default is not None:  # e.g. --arch unet-small
            return click.option(flag, param, **kw)
        return click.option(flag, param, default=None, metavar=meta.get("metavar"), help=kw["help"])
    if int in parts:
        ranged = low is not None or high is not None
        return click.option(
            flag, param, type=click.IntRange(min=low, max=high) if ranged else int, **kw
        )
    if float in parts:
        return click.option(
            flag,
            param,
            type=click.FloatRange(min=low, max=high, min_open=bool(meta.get("min_open"))),
            **kw,
        )
    raise TypeError(f"no Click option for {f.name}: {hint}")  # pragma: no cover - a new field type


def _float_list(text: str, flag: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is not a comma-separated list of numbers, e.g. 0.75,1,1.25", param_hint=flag
        ) from None


def _field_options(cls: type, prefix: str = "") -> list[Callable[[Any], Any]]:
    """Click options for every field of an options dataclass, in field order; a nested options
    dataclass (``crf``) becomes a flag plus one ``--crf-*`` option per setting."""
    hints = typing.get_type_hints(cls)
    made: list[Callable[[Any], Any]] = []
    for f in dataclasses.fields(cls):
        if f.metadata.get("api_only"):  # e.g. train's warmup_epochs: a library keyword only
            continue
        nested = [
            p
            for p in typing.get_args(hints[f.name])
            if isinstance(p, type) and dataclasses.is_dataclass(p)
        ]
        if nested:
            made.append(
                click.option("--" + f.name.replace("_", "-"), is_flag=True, help=f.metadata["help"])
            )
            made.extend(_field_options(nested[0], prefix=f.name + "_"))
        else:
            made.append(_field_option(f, hints[f.name], prefix))
    return made


def _apply(options: list[Callable[[Any], Any]], func: F) -> F:
    for option in reversed(options):
        func = option(func)
    return func


def predict_options(func: F) -> F:
    """One option per :class:`PredictOptions` field (``--crf`` plus ``--crf-*`` per CRF setting)."""
    return _apply(_field_options(PredictOptions), func)


def vector_options(func: F) -> F:
    """One option per :class:`VectorOptions` field (``--connectivity``, ``--skip-class``, ...)."""
    return _apply(_field_options(VectorOptions), func)


_PREDICT_FIELDS = {f.name: f for f in dataclasses.fields(PredictOptions)}


def take_predict_options(values: dict[str, Any]) -> PredictOptions:
    """Remove the predict options' values from a command's parameters and build them."""
    crf = {f.name: values.pop("crf_" + f.name) for f in dataclasses.fields(CRFParams)}
    use_crf = values.pop("crf")
    kw = {name: values.pop(name) for name in _PREDICT_FIELDS if name != "crf"}
    return PredictOptions(**kw, crf=CRFParams(**crf) if use_crf else None)


def chip_options(func: F) -> F:
    """One option per :class:`ChipOptions` field (``--size``, ``--classes``, ``--stratify/--no-stratify``, ...)."""
    return _apply(_field_options(ChipOptions), func)


def train_options(func: F) -> F:
    """One option per :class:`TrainOptions` field but the ``api_only`` ones (``--arch``, ``--epochs``, ...)."""
    return _apply(_field_options(TrainOptions), func)


def take_vector_options(values: dict[str, Any]) -> dict[str, Any]:
    """Remove the vector options' values from a command's parameters (as vectorize keywords)."""
    return take_fields(values, VectorOptions)


def map_options(func: F) -> F:
    """One option per :class:`MapOptions` field (``--crs``, ``--resolution``, ``--order``, ``--aoi``)."""
    return _apply(_field_options(MapOptions), func)


# --- what `geoseg predict` and `geoseg map` share -------------------------------------------------

model_option = click.option(
    "--model",
    "model",
    default=None,
    metavar="NAME_OR_PATH",
    help="Model file or built-in name (default: the built-in model).",
)


def scene_output_option(what: str) -> Callable[[F], F]:
    """``-o/--output`` of ``geoseg predict`` and ``geoseg map``: the class raster ``what`` (e.g.
    "to write"), a file or, with ``--cells``, a folder; local or ``s3://``."""
    return output_option(
        f"Class raster (COG) {what}: a path or s3://bucket/key.tif; with --cells, a folder or "
        "s3://bucket/prefix/.",
        kind="any",
    )


def scene_run_options(*extra: Callable[[Any], Any]) -> Callable[[F], F]:
    """The options ``geoseg predict`` and ``geoseg map`` share after ``--model`` (and map's
    grid): the :class:`PredictOptions`, the cluster, the extra outputs with the polygons'
    options, then a command's ``extra`` options, ``--overwrite``, ``--quiet`` and ``--verbose``.
    :func:`take_scene_run_options` makes their values the library's keywords."""

    def decorate(func: F) -> F:
        return _apply(
            [
                predict_options,
                cluster_options(
                    "Local Dask worker processes, 2 threads each (default: one worker in this "
                    "process; see README)."
                ),
                click.option(
                    "--probabilities",
                    default=None,
                    help="Also write per-class probabilities (uint8 0-255) to this COG (path or s3:// URL; with --cells: any value, the cells go into the folder).",
                ),
                click.option(
                    "--confidence",
                    default=None,
                    help="Also write the winning class's probability (one uint8 band, 1-255, 0 = nodata) to this COG (path or s3:// URL; with --cells: any value).",
                ),
                vector_output_option("the classes"),
                vector_options,
                *extra,
                overwrite_option,
                quiet_option,
                verbose_option,
            ],
            func,
        )

    return decorate


def take_scene_run_options(values: dict[str, Any]) -> dict[str, Any]:
    """Remove :func:`scene_run_options`' values from a command's parameters, as the keywords of
    ``geoseg.predict`` and ``geoseg.map`` (``options``, ``vector_options``, ``workers``, ...,
    ``quiet``)."""
    return {
        "options": take_predict_options(values),
        "vector_options": take_vector_options(values),
        **{name: values.pop(name) for name in ("probabilities", "confidence", "vector")},
        **take_run_options(values),
    }


def echo_skipped(windows: list[Window]) -> None:
    """Say on stderr which windows a run with ``--on-error skip`` wrote as nodata."""
    for window in windows:
        click.echo(
            f"skipped window rows {window.row_off}-{window.row_off + window.height}, columns "
            f"{window.col_off}-{window.col_off + window.width} (nodata written)",
            err=True,
        )
