"""The Dask graph for one scene: read -> infer -> stitch on workers, write on the client.

Tasks carry a scene path, band list, tile windows and a model path with its content hash;
workers read their own pixels and keep the model loaded. The client keeps a bounded number of
tasks in flight and writes each finished group into a temporary GeoTIFF as it arrives, so
memory does not depend on the size of the scene.
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import rasterio

from geoseg.crf import CRFParams
from geoseg.errors import GeosegWarning, TilingError
from geoseg.infer import InferenceOptions
from geoseg.io import (
    CLASS_NODATA,
    READ_ENV,
    WRITE_CACHE_MB,
    RasterSink,
    check_output_path,
    class_tags,
    file_token,
    no_georef_warning,
    open_scene,
    open_sinks,
    parse_bands,
    read_mirrored,
)
from geoseg.progress import Progress
from geoseg.stitch import TileResult, crop_core, to_result
from geoseg.tiling import Tile, TileGrid, auto_margin

DEFAULT_TILE = 512
DEFAULT_BATCH = 4
#: Margin for models whose receptive field is the whole input (global pooling): a compromise.
GLOBAL_MODEL_MARGIN = 128


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


def run_tile_task(task: TileTask) -> list[TileResult]:
    """Read the task's tiles (mirrored at scene edges), run the network, keep the cores."""
    import rasterio

    from geoseg.cluster import set_torch_threads, worker_model
    from geoseg.infer import forward, normalize, resolve_device

    set_torch_threads(task.torch_threads)
    device = resolve_device(task.device)
    model = worker_model(task.model_path, task.model_sha256, str(device))
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
    for start in range(0, len(task.tiles), task.batch_size):
        chunk = task.tiles[start : start + task.batch_size]
        offsets = [t.input_col - first.input_col for t in chunk]
        batch = np.stack([x[:, :, o : o + t.input_width] for o, t in zip(offsets, chunk)])
        logits = forward(model.network, batch, device, task.options)
        for t, o, lg in zip(chunk, offsets, logits):
            core = crop_core(lg, t)
            r, c = t.core_offset
            v = valid[r : r + core.shape[1], o + c : o + c + core.shape[2]]
            results.append(to_result(core, v, t, values, task.probabilities, task.keep_logits))
        del batch, logits
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
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def megapixels_per_second(self) -> float:
        return self.pixels / 1e6 / self.seconds if self.seconds else float("nan")


def plan_tasks(
    grid: TileGrid, scene: str, bands: Sequence[int], model_path: str, model_sha256: str,
    device: str, batch_size: int, probabilities: bool, tiles_per_task: int,
    torch_threads: int | None = None, keep_logits: bool = False,
    options: InferenceOptions = InferenceOptions(),
) -> list[TileTask]:
    """Every task of a scene, in grid order."""
    return [
        TileTask(
            scene=scene, bands=tuple(bands), tiles=tuple(g), model_path=model_path,
            model_sha256=model_sha256, device=device, batch_size=batch_size,
            probabilities=probabilities, keep_logits=keep_logits, torch_threads=torch_threads,
            options=options,
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
    tile: int = DEFAULT_TILE,
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
) -> PredictResult:
    """Segment ``scene`` into a uint8 class-raster COG at ``output`` (and class probabilities).

    The output has the scene's grid exactly; its pixels equal one pass of the network over the
    whole mirror-padded scene, whatever ``tile`` is, because margins cover the receptive field.
    ``vector`` also polygonizes the class raster (see :func:`geoseg.vectorize.vectorize`, whose
    keyword arguments ``vector_options`` holds). ``tta`` (``flip`` or ``d4``), ``scales`` and
    ``crf`` (True or :class:`CRFParams`) add test-time augmentation and the dense CRF; the
    automatic margin grows to cover them, so tiling stays exact.
    """
    from geoseg.models.checkpoint import load_model

    t0 = time.perf_counter()
    out_path = check_output_path(output, overwrite)
    prob_path = check_output_path(probabilities, overwrite, "probabilities output") if probabilities else None
    if prob_path is not None and prob_path.resolve() == out_path.resolve():
        raise TilingError("--probabilities must be a different file from the output")
    if vector is not None:
        from geoseg.vectorize import output_format

        output_format(check_output_path(vector, overwrite, "vector output"))
    info = open_scene(scene)
    if not info.georeferenced:
        warnings.warn(
            f"{info.path} has no CRS or geotransform; the output keeps its pixel grid without "
            "georeferencing", GeosegWarning, stacklevel=2,
        )
    loaded = load_model(model, device="cpu")
    cfg = loaded.config
    band_list = parse_bands(bands, info.count, cfg.in_channels)
    options = InferenceOptions(tta=tta, scales=tuple(float(s) for s in scales), crf=crf_params(crf))
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
    grid = TileGrid.create(info.height, info.width, int(tile), margin_px, stride)
    batch_size = max(1, int(batch_size))
    per_task = tiles_per_task or default_tiles_per_task(grid, batch_size)

    own_client = client is None
    cluster = None
    if own_client:
        from geoseg.cluster import connect

        client, cluster = connect(scheduler, workers)
    try:
        nthreads = sum(client.nthreads().values()) or 1
        torch_threads = None
        if cluster is not None:
            from geoseg.cluster import cpu_count

            torch_threads = max(1, cpu_count() // nthreads)
        tasks = plan_tasks(
            grid, info.path, band_list, str(Path(loaded.path).resolve()), loaded.sha256, device,
            batch_size, prob_path is not None, per_task, torch_threads, options=options,
        )
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
        with rasterio.Env(GDAL_CACHEMAX=WRITE_CACHE_MB), open_sinks(*sinks) as opened:
            class_sink = opened[0]
            prob_sink = opened[1] if len(opened) > 1 else None
            limit = max_in_flight or max(2, 2 * nthreads)
            for results in stream_tasks(client, tasks, limit):
                for res in results:
                    class_sink.write(res.classes, res.core)
                    if prob_sink is not None and res.probabilities is not None:
                        prob_sink.write(res.probabilities, res.core)
                    progress.update(1, int(res.core.width * res.core.height))
            progress.close()
        if vector is not None:
            from geoseg.vectorize import vectorize

            vres = vectorize(out_path, vector, probabilities=prob_path, overwrite=overwrite,
                             client=client, quiet=quiet, **(vector_options or {}))
            progress.message(f"geoseg: {vres.polygons} polygons written to {vres.output}")
    finally:
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
        tile=int(tile),
        margin=margin_px,
        overlap_factor=grid.overlap_factor,
        model=loaded.name,
    )


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


def stream_tasks(client: Any, tasks: Sequence[TileTask], limit: int) -> Iterable[list[TileResult]]:
    """Submit tasks keeping at most ``limit`` in flight; yield results as they complete.

    Bounding the window on the client is what keeps memory flat: Dask's own queueing does not
    apply to tasks with resource restrictions, and results would otherwise pile up.
    """
    from distributed import as_completed

    queue = iter(enumerate(tasks))
    pending: dict[str, Any] = {}

    def submit_next(ac: Any | None) -> Any | None:
        nxt = next(queue, None)
        if nxt is None:
            return None
        i, t = nxt
        fut = client.submit(run_tile_task, t, key=task_key(t, i), pure=False, retries=1)
        pending[fut.key] = fut
        if ac is not None:
            ac.add(fut)
        return fut

    first = [f for f in (submit_next(None) for _ in range(max(1, limit))) if f is not None]
    ac = as_completed(first, loop=client.loop)
    del first
    try:
        for fut in ac:
            pending.pop(fut.key, None)
            result = fut.result()
            fut.release()
            submit_next(ac)
            yield result
    finally:
        if pending:
            client.cancel(list(pending.values()))
