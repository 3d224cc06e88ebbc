"""The Dask graph for one scene: read -> infer -> stitch on workers, write on the client.

Tasks carry a scene path, band list, tile windows and a model path with its content hash;
workers read their own pixels and keep the model loaded (the model file reaches each worker
once, through a worker plugin: see :mod:`geoseg.cluster`). The client keeps a bounded number of
tasks in flight and writes each finished group into a temporary GeoTIFF as it arrives, so
memory does not depend on the size of the scene.
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import rasterio
from rasterio.windows import Window

from geoseg.crf import CRFParams
from geoseg.errors import (
    CheckpointError, GeosegWarning, ModelError, SchedulerError, TileError, TilingError,
)
from geoseg.infer import InferenceOptions
from geoseg.io import (
    CLASS_NODATA,
    READ_ENV,
    WRITE_CACHE_MB,
    RasterSink,
    check_distinct_paths,
    check_output_path,
    class_tags,
    file_token,
    lock_output_folders,
    no_georef_warning,
    open_scene,
    open_sinks,
    parse_bands,
    read_mirrored,
    stage_json,
)
from geoseg.progress import Progress
from geoseg.stitch import TileResult, crop_core, to_result
from geoseg.tiling import Tile, TileGrid, auto_margin, round_up

DEFAULT_TILE = 512
DEFAULT_BATCH = 4
#: Margin for models whose receptive field is the whole input (global pooling): a compromise.
GLOBAL_MODEL_MARGIN = 128


def auto_tile(margin: int, alignment: int) -> int:
    """Tile size for ``tile="auto"``: 512, or four margins for models with a wide receptive field,
    so the core stays at least half the tile and the overlap factor at most 4."""
    return max(DEFAULT_TILE, round_up(4 * margin, alignment))


@dataclass(frozen=True)
class TileTask:
    """What one Dask task needs: small, picklable, and the same on every run (deterministic keys)."""

    scene: str
    bands: tuple[int, ...]
    tiles: tuple[Tile, ...]
    model_path: str
    model_sha256: str
    device: str
    batch_size: int
    probabilities: bool
    keep_logits: bool = False
    torch_threads: int | None = None
    options: InferenceOptions = InferenceOptions()
    skip_errors: bool = False


def run_tile_task(task: TileTask) -> list[TileResult]:
    """Read the task's tiles (mirrored at scene edges), run the network, keep the cores.

    Any failure becomes a :class:`TileError` naming the scene and the window; with
    ``skip_errors`` the tiles are retried one by one and those that still fail come back as
    nodata results carrying the error.
    """
    try:
        return _run_tile_task(task)
    except (CheckpointError, ModelError, MemoryError):
        raise  # not this tile's fault: every tile would fail the same way
    except Exception as exc:
        if task.skip_errors:
            return _tile_by_tile(task)
        raise TileError(
            f"{task.scene}: {tiles_text(task)} failed ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}); --on-error skip writes nodata there instead"
        ) from exc


def _tile_by_tile(task: TileTask) -> list[TileResult]:
    from dataclasses import replace

    results: list[TileResult] = []
    for tile in task.tiles:
        single = replace(task, tiles=(tile,), skip_errors=False)
        try:
            results.extend(run_tile_task(single))
        except TileError as exc:
            results.extend(nodata_results((tile,), str(exc)))
    return results


def nodata_results(tiles: Sequence[Tile], error: str) -> list[TileResult]:
    """Results that write nodata over ``tiles``' cores and say why (``on_error="skip"``)."""
    return [TileResult(t.core, np.full((int(t.core.height), int(t.core.width)), CLASS_NODATA, np.uint8),
                       error=error) for t in tiles]


def tiles_text(task: TileTask) -> str:
    """Where a task's tiles are, for messages: rows and columns of their cores."""
    first, last = task.tiles[0].core, task.tiles[-1].core
    return (f"tiles at rows {first.row_off}-{last.row_off + last.height}, columns "
            f"{first.col_off}-{last.col_off + last.width}")


def _run_tile_task(task: TileTask) -> list[TileResult]:
    import rasterio
    import torch

    from geoseg.cluster import batch_limit, lower_batch_limit, set_torch_threads, worker_model
    from geoseg.infer import forward, normalize, resolve_device

    set_torch_threads(task.torch_threads)
    device = resolve_device(task.device)
    opts = task.options
    model = worker_model(task.model_path, task.model_sha256, str(device), opts.channels_last, opts.compile)
    cfg = model.config
    values = [c.value for c in cfg.classes]
    first, last = task.tiles[0], task.tiles[-1]
    with rasterio.Env(**READ_ENV):
        with no_georef_warning():
            src = rasterio.open(task.scene)
        with src:
            width = last.input_col + last.input_width - first.input_col
            data, valid = read_mirrored(
                src, task.bands, first.input_row, first.input_col, first.input_height, width
            )
    x = normalize(data, valid, cfg.mean, cfg.std)
    del data
    results: list[TileResult] = []
    start = 0
    while start < len(task.tiles):
        size = batch_limit(task.model_sha256, str(device), task.batch_size)
        chunk = task.tiles[start : start + size]
        offsets = [t.input_col - first.input_col for t in chunk]
        batch = np.stack([x[:, :, o : o + t.input_width] for o, t in zip(offsets, chunk)])
        try:
            logits = forward(model.network, batch, device, opts)
        except torch.cuda.OutOfMemoryError:
            if size == 1:
                raise
            del batch
            torch.cuda.empty_cache()
            lower_batch_limit(task.model_sha256, str(device), size)
            continue
        for t, o, lg in zip(chunk, offsets, logits):
            core = crop_core(lg, t)
            r, c = t.core_offset
            v = valid[r : r + core.shape[1], o + c : o + c + core.shape[2]]
            results.append(to_result(core, v, t, values, task.probabilities, task.keep_logits))
        del batch, logits
        start += len(chunk)
    return results


@dataclass
class PredictResult:
    """What a predict run wrote and measured."""

    output: Path
    probabilities: Path | None
    tiles: int
    tasks: int
    pixels: int
    seconds: float
    tile: int
    margin: int
    overlap_factor: float
    model: str
    skipped: list[Window] = field(default_factory=list)
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def megapixels_per_second(self) -> float:
        return self.pixels / 1e6 / self.seconds if self.seconds else float("nan")


def plan_tasks(
    grid: TileGrid, scene: str, bands: Sequence[int], model_path: str, model_sha256: str,
    device: str, batch_size: int, probabilities: bool, tiles_per_task: int,
    torch_threads: int | None = None, keep_logits: bool = False,
    options: InferenceOptions = InferenceOptions(), skip_errors: bool = False,
) -> list[TileTask]:
    """Every task of a scene, in grid order."""
    return [
        TileTask(
            scene=scene, bands=tuple(bands), tiles=tuple(g), model_path=model_path,
            model_sha256=model_sha256, device=device, batch_size=batch_size,
            probabilities=probabilities, keep_logits=keep_logits, torch_threads=torch_threads,
            options=options, skip_errors=skip_errors,
        )
        for g in grid.groups(tiles_per_task)
    ]


def default_tiles_per_task(grid: TileGrid, batch_size: int) -> int:
    """Enough tiles that a task does well over 100 ms of work: at least one full batch and
    about 1.5 megapixels of network input."""
    per_tile = grid.tile_height * grid.tile_width
    return max(batch_size, -(-1_500_000 // per_tile))


def predict(
    scene: str | os.PathLike[str],
    output: str | os.PathLike[str],
    model: str | os.PathLike[str] | None = None,
    tile: int | str = "auto",
    margin: int | str = "auto",
    batch_size: int = DEFAULT_BATCH,
    workers: int | None = None,
    scheduler: str | None = None,
    device: str = "auto",
    bands: str | Sequence[int] | None = None,
    probabilities: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    quiet: bool = True,
    tiles_per_task: int | None = None,
    max_in_flight: int | None = None,
    client: Any = None,
    vector: str | os.PathLike[str] | None = None,
    vector_options: dict[str, Any] | None = None,
    tta: str = "none",
    scales: Sequence[float] = (1.0,),
    crf: CRFParams | dict[str, Any] | bool | None = None,
    precision: str = "fp32",
    channels_last: bool = False,
    compile: bool = False,
    on_error: str = "fail",
    verbose: bool = False,
) -> PredictResult:
    """Segment ``scene`` into a uint8 class-raster COG at ``output`` (and class probabilities).

    ``tile`` is the network input size including margins; ``auto`` is 512, or four margins
    when the model's receptive field is wide (see :func:`auto_tile`).

    The output has the scene's grid exactly; its pixels equal one pass of the network over the
    whole mirror-padded scene, whatever ``tile`` is, because margins cover the receptive field.
    ``vector`` also polygonizes the class raster (see :func:`geoseg.vectorize.vectorize`, whose
    keyword arguments ``vector_options`` holds). ``tta`` (``flip`` or ``d4``), ``scales`` and
    ``crf`` (True or :class:`CRFParams`) add test-time augmentation and the dense CRF; the
    automatic margin grows to cover them, so tiling stays exact. ``precision`` (bf16, fp16),
    ``channels_last`` and ``compile`` tune the forward pass. ``on_error="skip"`` writes nodata
    where a tile task fails and lists those windows (result ``skipped``, and a JSON report
    beside the output) instead of failing the run. ``verbose`` lets the local workers' own logs
    through to stderr.
    """
    from geoseg.models.checkpoint import load_model, resolve_model_path

    t0 = time.perf_counter()
    out_path = check_output_path(output, overwrite)
    prob_path = check_output_path(probabilities, overwrite, "probabilities output") if probabilities else None
    check_distinct_paths(
        {"scene": scene, "model file": resolve_model_path(model)[0]},
        {"output": out_path, "probabilities output": prob_path, "vector output": vector,
         "skipped-tiles report": skipped_report_path(out_path)},
    )
    if vector is not None:
        check_output_path(vector, overwrite, "vector output")
    info = open_scene(scene)
    if vector is not None:  # all of them now, not after the prediction
        from geoseg.vectorize import check_vector_options

        check_vector_options(vector, info.crs if info.georeferenced else None, **(vector_options or {}))
    if not info.georeferenced:
        warnings.warn(
            f"{info.path} has no CRS or geotransform; the output keeps its pixel grid without "
            "georeferencing", GeosegWarning, stacklevel=2,
        )
    loaded = load_model(model, device="cpu")
    cfg = loaded.config
    band_list = parse_bands(bands, info.count, cfg.in_channels)
    if on_error not in ("fail", "skip"):
        raise TilingError(f"unknown --on-error {on_error!r}; use fail or skip")
    options = InferenceOptions(tta=tta, scales=tuple(float(s) for s in scales), crf=crf_params(crf),
                               precision=precision, channels_last=channels_last, compile=compile)
    stride = options.alignment(cfg.output_stride)
    if margin == "auto" or margin is None:
        if cfg.receptive_field < 0:
            warnings.warn(
                f"{loaded.name} pools over its whole input ({cfg.arch} with global image pooling), "
                "so its output depends on --tile; prefer a model trained with image_pooling=window",
                GeosegWarning, stacklevel=2,
            )
        rf = GLOBAL_MODEL_MARGIN if cfg.receptive_field < 0 else cfg.receptive_field
        margin_px = auto_margin(options.context(rf), stride)
    else:
        margin_px = int(margin)
    tile_px = auto_tile(margin_px, stride) if tile == "auto" or tile is None else int(tile)
    grid = TileGrid.create(info.height, info.width, tile_px, margin_px, stride)
    batch_size = max(1, int(batch_size))
    per_task = tiles_per_task or default_tiles_per_task(grid, batch_size)

    own_client = client is None
    cluster = None
    skipped: list[SkippedTile] = []
    if own_client:
        from geoseg.cluster import connect

        client, cluster = connect(scheduler, workers, verbose=verbose)
    locks = lock_output_folders([out_path, prob_path, vector], "predict")
    try:
        nthreads = sum(client.nthreads().values()) or 1
        torch_threads = None
        if cluster is not None:
            from geoseg.cluster import cpu_count

            torch_threads = max(1, cpu_count() // nthreads)
        tasks = plan_tasks(
            grid, info.path, band_list, str(Path(loaded.path).resolve()), loaded.sha256, device,
            batch_size, prob_path is not None, per_task, torch_threads, options=options,
            skip_errors=on_error == "skip",
        )
        resources = gpu_resources(client, device)
        from geoseg.cluster import send_model

        send_model(client, loaded.path, loaded.sha256)
        progress = Progress(len(grid), quiet=quiet)
        link = dashboard_link(client)
        progress.message(
            f"geoseg: {info.width}x{info.height} px, {len(grid)} tiles of "
            f"{grid.tile_height}x{grid.tile_width} (margin {margin_px}) in {len(tasks)} tasks "
            f"on {nthreads} worker thread(s)" + (f"; dashboard {link}" if link else "")
        )
        classes = cfg.classes
        tags = class_tags(classes, loaded.name)
        sinks = [
            lambda: RasterSink(out_path, info, 1, CLASS_NODATA, classes, tags, ["class"]),
            (lambda: RasterSink(
                prob_path, info, len(classes), None, None, tags,
                [f"p({c.name})" for c in classes], overview_resampling="AVERAGE",
            )) if prob_path is not None else None,
        ]
        report = skipped_report_path(out_path)
        staged: list[tuple[Path, Path]] = []

        def polygons() -> None:
            """Runs once the rasters are in place; if it fails, they are put back as they were."""
            if vector is not None:
                from geoseg.vectorize import vectorize

                vres = vectorize(out_path, vector, probabilities=prob_path, overwrite=overwrite,
                                 client=client, quiet=quiet, **(vector_options or {}))
                progress.message(f"geoseg: {vres.polygons} polygons written to {vres.output}")

        with rasterio.Env(GDAL_CACHEMAX=WRITE_CACHE_MB), open_sinks(*sinks, extra=staged, then=polygons) as opened:
            class_sink = opened[0]
            prob_sink = opened[1] if len(opened) > 1 else None
            limit = max_in_flight or max(2, 2 * nthreads)
            for results in stream_tasks(client, tasks, limit, resources):
                for res in results:
                    if res.error is not None:
                        skipped.append(SkippedTile(res.core, res.error))
                        progress.message(f"geoseg: skipped: {res.error}")
                        if prob_sink is not None:
                            res.probabilities = np.zeros((len(classes), *res.classes.shape), np.uint8)
                    class_sink.write(res.classes, res.core)
                    if prob_sink is not None and res.probabilities is not None:
                        prob_sink.write(res.probabilities, res.core)
                    progress.update(1, int(res.core.width * res.core.height))
            progress.close()
            if skipped:  # published together with the rasters
                staged.append((stage_json(report, skipped_report(info.path, skipped)), report))
        if not skipped and overwrite:  # the old list of holes no longer describes the output
            with contextlib.suppress(FileNotFoundError):
                report.unlink()
    finally:
        locks.close()
        if own_client:
            client.close()
            if cluster is not None:
                cluster.close()
    return PredictResult(
        output=out_path,
        probabilities=prob_path,
        tiles=len(grid),
        tasks=len(tasks),
        pixels=info.pixels,
        seconds=time.perf_counter() - t0,
        tile=tile_px,
        margin=margin_px,
        overlap_factor=grid.overlap_factor,
        model=loaded.name,
        skipped=[s.window for s in skipped],
    )


def skipped_report_path(output: Path) -> Path:
    """Where the windows written as nodata under ``on_error="skip"`` are listed."""
    return output.with_name(output.name + ".skipped.json")


@dataclass
class SkippedTile:
    """A tile that failed under ``on_error="skip"``: its core window (written as nodata) and why."""

    window: Window
    error: str


def skipped_report(scene: str, skipped: list[SkippedTile]) -> dict[str, Any]:
    """The windows written as nodata and why: the JSON written beside the output."""
    return {"scene": scene, "windows": [
        {"row_off": int(s.window.row_off), "col_off": int(s.window.col_off),
         "height": int(s.window.height), "width": int(s.window.width), "error": s.error}
        for s in skipped
    ]}


def gpu_resources(client: Any, device: str) -> dict[str, float] | None:
    """``{"GPU": 1}`` when inference may run on CUDA (``auto`` or ``cuda``) and the cluster has
    workers started with ``--resources GPU=N``: inference tasks then go only there, while
    reading and writing need no GPU. Without such workers nothing is restricted (a restriction
    no worker satisfies would wait forever)."""
    if str(device) == "cpu":
        return None
    workers = client.scheduler_info().get("workers", {}).values()
    if any(w.get("resources", {}).get("GPU") for w in workers):
        return {"GPU": 1}
    return None


def crf_params(crf: CRFParams | dict[str, Any] | bool | None) -> CRFParams | None:
    """CRF settings from True (defaults), a dict of :class:`CRFParams` fields, or None/False."""
    if crf is None or crf is False:
        return None
    if crf is True:
        return CRFParams()
    if isinstance(crf, dict):
        try:
            return CRFParams(**crf)
        except TypeError as exc:
            raise TilingError(f"bad CRF settings {crf}: {exc}") from None
    return crf


def dashboard_link(client: Any) -> str | None:
    """The Dask dashboard address, or how to get one (it needs bokeh)."""
    try:
        import bokeh  # noqa: F401
    except ImportError:
        return "not available (pip install 'geoseg[dashboard]')"
    return getattr(client, "dashboard_link", None)


def task_key(task: TileTask, index: int) -> str:
    """Deterministic key: the same scene, model and options give the same keys on every run."""
    from dask.base import tokenize

    stat = file_token(task.scene)
    return f"geoseg-tiles-{tokenize(task, stat)}-{index}"


def stream_tasks(
    client: Any, tasks: Sequence[TileTask], limit: int, resources: dict[str, float] | None = None,
) -> Iterable[list[TileResult]]:
    """Submit tasks keeping at most ``limit`` in flight; yield their results as they complete.

    Bounding the window on the client is what keeps memory flat: Dask's own queueing does not
    apply to tasks with resource restrictions, and results would otherwise pile up. A task
    whose worker dies is recomputed elsewhere by the scheduler; losing the scheduler itself
    raises :class:`SchedulerError`.
    """
    from concurrent.futures import CancelledError

    from distributed import KilledWorker, as_completed

    queue = iter(enumerate(tasks))
    pending: dict[str, Any] = {}
    task_of: dict[str, TileTask] = {}

    def submit_next(ac: Any | None) -> Any | None:
        nxt = next(queue, None)
        if nxt is None:
            return None
        i, t = nxt
        # no retries: a tile that fails fails the same way again; a task whose worker is lost
        # is rescheduled by Dask itself (until it has killed too many, see KilledWorker below)
        fut = client.submit(run_tile_task, t, key=task_key(t, i), pure=False, retries=0, resources=resources)
        pending[fut.key] = fut
        task_of[fut.key] = t
        if ac is not None:
            ac.add(fut)
        return fut

    first = [f for f in (submit_next(None) for _ in range(max(1, limit))) if f is not None]
    ac = as_completed(first, loop=client.loop)
    del first
    try:
        for fut in ac:
            pending.pop(fut.key, None)
            task = task_of.pop(fut.key)
            try:
                result = fut.result()
            except KilledWorker as exc:
                # the task took down every worker that ran it (out of memory, a crash in native
                # code): like a tile that cannot be read, it fails the run or, under skip, is nodata
                message = (f"{task.scene}: {tiles_text(task)} failed: the workers running them died "
                           f"({type(exc).__name__}; out of memory or a crash); lower --batch-size or "
                           "--tile, or --on-error skip writes nodata there instead")
                if not task.skip_errors:
                    raise TileError(message) from None
                result = nodata_results(task.tiles, message)
            except (OSError, TimeoutError, CancelledError) as exc:
                raise SchedulerError(
                    f"lost the Dask scheduler during the run ({type(exc).__name__}); "
                    "nothing was written to the output; rerun when the cluster is back"
                ) from exc
            fut.release()
            submit_next(ac)
            yield result
    finally:
        if pending:
            with contextlib.suppress(Exception):
                client.cancel(list(pending.values()))
