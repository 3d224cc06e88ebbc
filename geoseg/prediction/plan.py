"""Predict, stage 1: check everything and decide the tiling before any work starts.

Outputs are checked (free, or ``overwrite``), the scene opened, the model loaded and matched to
the bands, and the margin (the receptive field, grown by TTA, scales and the CRF), tile size
and grid fixed. Nothing here needs a cluster; a bad input fails here, before a task runs.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from geoseg.classes import class_raster_dtype
from geoseg.engines import check_engine
from geoseg.errors import GeosegWarning, OutputError
from geoseg.fs import check_distinct_paths, check_output_path
from geoseg.models.config import LoadedModel
from geoseg.options import InferenceOptions, PredictOptions
from geoseg.paths import describe
from geoseg.prediction.cells import CellLayout, check_cell_size, internal_cell_size
from geoseg.prediction.destinations import Destinations, check_destinations
from geoseg.prediction.tasks import TileTask
from geoseg.prediction.tile_budget import TileChoice, plan_auto_tile
from geoseg.raster.read import SceneInfo, open_scene, parse_bands
from geoseg.raster.scenes import ResolvedScene, resolve_scene
from geoseg.raster.sink import SINK_BLOCK
from geoseg.tiling import TileGrid, auto_margin, round_up

if TYPE_CHECKING:
    from geoseg.prediction.cell_task import CellTask
    from geoseg.prediction.cells import Cell

DEFAULT_TILE = 512
#: Margin for models whose receptive field is the whole input (global pooling): a compromise.
GLOBAL_MODEL_MARGIN = 128


@dataclass
class PredictPlan:
    """Everything decided before running: checked paths, scene, model, bands, options, grid."""

    scene: SceneInfo
    output: Path
    probabilities: Path | None
    vector: Path | None
    #: where each raster goes (local paths or ``s3://`` URLs; a folder of cells with ``cells``)
    destinations: Destinations
    model: LoadedModel
    bands: list[int]
    options: InferenceOptions
    device: str
    margin: int
    tile: int
    grid: TileGrid
    batch_size: int
    tiles_per_task: int
    skip_errors: bool
    stac_item: str | None = None
    #: ``auto``, ``torch`` or ``onnx``, checked against the model and options.
    engine: str = "auto"
    #: the scene cut into cells, one worker task each (``--cells N``, or sized for one COG)
    layout: CellLayout | None = None
    compress: str = "deflate"
    compress_level: int | None = None
    #: adjusts each cell's task before it is sent (a map gives each cell its own mosaic of
    #: scenes and its AOI clip, see :mod:`geoseg.mapping`); None for a scene
    cell_hook: Callable[[Cell, CellTask], CellTask] | None = None

    @property
    def confidence(self) -> Path | None:
        return self.destinations.confidence_path

    @property
    def tiles(self) -> int:
        """Tiles the run computes (every cell's grid)."""
        return self.layout.tiles if self.layout is not None else len(self.grid)

    #: How ``tile="auto"`` chose the tile (None: the tile was given).
    tile_choice: TileChoice | None = None

    @property
    def column_bands(self) -> bool:
        """Whether tasks go down column bands (see :meth:`TileGrid.groups`): for a tiled scene.
        A striped scene (a block as wide as the scene) goes row by row: each column band would
        decode every strip again."""
        return self.scene.block_shape[1] < self.scene.width

    @property
    def cache_bytes(self) -> int:
        """GDAL block cache this plan's reads and writes need (:func:`block_cache_need`)."""
        values = [c.value for c in self.model.classes]
        out_px = np.dtype(class_raster_dtype(values)[0]).itemsize
        if self.probabilities is not None:
            out_px += len(values)
        return block_cache_need(
            self.scene, self.grid, self.tiles_per_task, out_px, self.column_bands
        )


def auto_tile(margin: int, alignment: int) -> int:
    """Tile size for ``tile="auto"``: 512, or four margins for models with a wide receptive field,
    so the core stays at least half the tile and the overlap factor at most 4."""
    return max(DEFAULT_TILE, round_up(4 * margin, alignment))


def block_cache_need(
    scene: SceneInfo,
    grid: TileGrid,
    per_group: int,
    output_pixel_bytes: int,
    column_bands: bool = True,
) -> int:
    """Bytes of GDAL block cache that decode every scene block once as tasks follow
    :meth:`TileGrid.groups`, and keep whole the output blocks being written: the scene blocks
    under a band's row of tiles plus one more block row (the next row of tiles starts in it),
    the same for the output's blocks, and half as much again (with a quarter more, 128² blocks
    were still read twice).

    Going row by row (``column_bands`` false) a band is the scene's width. The built-in model's
    512² tiles over a 3-band uint16 scene in 512² blocks need 37 MB at any scene size (the fixed
    64 MB before held blocks no task would read again, and row by row still decoded blocks twice
    in scenes 8,192² wide)."""
    bh, bw = scene.block_shape
    band = (
        min(per_group if column_bands else grid.cols, grid.cols) * grid.core_width + 2 * grid.margin
    )

    def blocks(length: int, block: int, total: int) -> int:
        return min(-(-length // block) + 1, -(-total // block))

    pixel_bytes = scene.count * np.dtype(scene.dtype).itemsize
    read = (
        blocks(band, bw, scene.width)
        * blocks(grid.tile_height, bh, scene.height)
        * bh
        * bw
        * pixel_bytes
    )
    ob = SINK_BLOCK
    cores = band - 2 * grid.margin
    written = (
        blocks(cores, ob, scene.width)
        * blocks(grid.core_height, ob, scene.height)
        * ob
        * ob
        * output_pixel_bytes
    )
    return (read + written) * 3 // 2


def default_tiles_per_task(grid: TileGrid, batch_size: int) -> int:
    """Enough tiles that a task does well over 100 ms of work: at least one full batch and
    about 1.5 megapixels of network input."""
    per_tile = grid.tile_height * grid.tile_width
    return max(batch_size, -(-1_500_000 // per_tile))


def plan_predict(
    scene: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    output: str | os.PathLike[str],
    model: str | os.PathLike[str] | LoadedModel | None = None,
    options: PredictOptions = PredictOptions(),
    probabilities: str | os.PathLike[str] | None = None,
    vector: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    tiles_per_task: int | None = None,
    vector_options: dict[str, Any] | None = None,
    confidence: str | os.PathLike[str] | None = None,
    threads: int = 2,
    scene_info: SceneInfo | None = None,
) -> PredictPlan:
    """Check the request and fix the tiling; raises a :class:`GeosegError` on any bad input.

    ``scene`` may be band files or a STAC item: :func:`geoseg.raster.scenes.resolve_scene` makes it
    one VRT string matched to the model's bands, which the tasks carry.

    No output may be a scene file, the model file or another output (even with ``overwrite``),
    and the polygon options (``vector_options``, see :func:`geoseg.vector.vectorize.check_vector_options`)
    are checked here, before any prediction. ``scene_info``: a virtual scene planned already
    (a map's region, :mod:`geoseg.mapping`), read instead of ``scene``, which then only names
    the inputs no output may be.
    """
    from geoseg.models.config import resolve_model_path
    from geoseg.models.load import read_model_config
    from geoseg.objectstore.urls import is_s3_url, to_vsis3
    from geoseg.prediction.destinations import skipped_report_path

    # GDAL's own reader for s3:// scenes (rasterio would open them through a boto3 session)
    if isinstance(scene, (str, os.PathLike)):
        scene = to_vsis3(str(scene)) if is_s3_url(str(scene)) else scene
    else:
        scene = [to_vsis3(str(s)) if is_s3_url(str(s)) else s for s in scene]
    dest = check_destinations(output, probabilities, confidence, options.cells, overwrite)
    out_path, prob_path = dest.output_path, dest.probabilities_path
    if vector is not None and dest.cells and dest.remote:
        raise OutputError(
            "--vector with a folder of cells on the object store is not supported; polygonize "
            "its classes.vrt afterwards with geoseg vectorize, or write the cells locally"
        )
    vector_path = (
        check_output_path(vector, overwrite, "vector output") if vector is not None else None
    )
    scenes = [scene] if isinstance(scene, (str, os.PathLike)) else list(scene)
    model_file = model.path if isinstance(model, LoadedModel) else resolve_model_path(model)[0]
    check_distinct_paths(
        {**{f"scene {describe(str(s))}": s for s in scenes}, "model file": model_file},
        {
            "output": out_path,
            "probabilities output": prob_path,
            "confidence output": dest.confidence_path,
            "vector output": vector_path,
            "skipped-tiles report": skipped_report_path(out_path),
        },
        # a folder of cells is rewritten by a rerun: a scene inside it (a cell of an earlier run)
        # would be replaced by its own output
        {"output folder": dest.output} if dest.cells and not dest.remote else None,
    )
    # a batch plans many scenes with the one model it has loaded and checked already
    loaded = model if isinstance(model, LoadedModel) else read_model_config(model)
    cfg = loaded.config
    if scene_info is None:
        resolved = resolve_scene(
            scene, cfg.band_names, options.resampling, match_names=options.bands is None
        )
        info = open_scene(resolved.dataset)
    else:
        resolved, info = ResolvedScene(scene_info.path), scene_info
    if not info.georeferenced:
        warnings.warn(
            f"{describe(info.path)} has no CRS or geotransform; the output keeps its pixel grid "
            "without georeferencing",
            GeosegWarning,
            stacklevel=3,
        )
    if vector_path is not None:
        from geoseg.vector.vectorize import check_vector_options

        check_vector_options(vector_path, info.crs, **(vector_options or {}))
    band_list = parse_bands(options.bands, info.count, cfg.in_channels)
    inference = InferenceOptions(
        tta=options.tta,
        scales=options.scales,
        crf=options.crf,
        precision=options.precision,
        channels_last=options.channels_last,
        compile=options.compile,
    )
    check_engine(options.engine, loaded.format, inference)
    stride = inference.alignment(cfg.output_stride)
    if options.margin == "auto":
        if cfg.receptive_field < 0:
            warnings.warn(
                f"{loaded.name} pools over its whole input ({cfg.arch} with global image pooling), "
                "so its output depends on --tile; prefer a model trained with image_pooling=window",
                GeosegWarning,
                stacklevel=3,
            )
        rf = GLOBAL_MODEL_MARGIN if cfg.receptive_field < 0 else cfg.receptive_field
        margin_px = auto_margin(inference.context(rf), stride)
    else:
        margin_px = int(options.margin)
    tile_choice = (
        None
        if options.tile != "auto"
        else plan_auto_tile(
            loaded,
            info.height,
            info.width,
            len(band_list),
            info.dtype,
            margin_px,
            stride,
            inference,
            options.engine,
            options.device,
            options.batch_size,
            options.memory_budget_bytes,
            fallback=auto_tile(margin_px, stride),
        )
    )
    tile_px = int(options.tile) if tile_choice is None else tile_choice.tile
    grid = TileGrid.create(info.height, info.width, tile_px, margin_px, stride)
    values = [c.value for c in loaded.classes]
    out_px = (
        np.dtype(class_raster_dtype(values)[0]).itemsize
        + (len(values) if prob_path is not None else 0)
        + (1 if dest.confidence_path is not None else 0)
    )
    if options.cells is not None:
        check_cell_size(options.cells, tile_px, stride)
        size = options.cells
    else:
        size = internal_cell_size(
            info.height, info.width, tile_px, margin_px, stride, out_px, threads
        )
    layout = CellLayout(info.height, info.width, size, tile_px, margin_px, stride)
    return PredictPlan(
        scene=info,
        output=out_path,
        probabilities=prob_path,
        vector=vector_path,
        destinations=dest,
        model=loaded,
        bands=band_list,
        options=inference,
        device=options.device,
        margin=margin_px,
        tile=tile_px,
        grid=grid,
        batch_size=options.batch_size,
        tiles_per_task=tiles_per_task or default_tiles_per_task(grid, options.batch_size),
        skip_errors=options.on_error == "skip",
        stac_item=resolved.stac_item,
        engine=options.engine,
        layout=layout,
        compress=options.compress,
        compress_level=options.compress_level,
        tile_choice=tile_choice,
    )


def plan_tasks(
    grid: TileGrid,
    scene: str,
    bands: Sequence[int],
    model_path: str,
    model_sha256: str,
    device: str,
    batch_size: int,
    probabilities: bool,
    tiles_per_task: int,
    torch_threads: int | None = None,
    keep_logits: bool = False,
    options: InferenceOptions = InferenceOptions(),
    skip_errors: bool = False,
    engine: str = "auto",
    column_bands: bool = True,
    cache_bytes: int | None = None,
) -> list[TileTask]:
    """Every task of a scene, in the order :meth:`TileGrid.groups` gives (down column bands, or
    row by row); ``cache_bytes``: the block cache their reads need (:func:`block_cache_need`)."""
    return [
        TileTask(
            scene=scene,
            bands=tuple(bands),
            tiles=tuple(g),
            model_path=model_path,
            model_sha256=model_sha256,
            device=device,
            batch_size=batch_size,
            probabilities=probabilities,
            keep_logits=keep_logits,
            torch_threads=torch_threads,
            options=options,
            skip_errors=skip_errors,
            engine=engine,
            cache_bytes=cache_bytes,
        )
        for g in grid.groups(tiles_per_task, column_bands)
    ]
