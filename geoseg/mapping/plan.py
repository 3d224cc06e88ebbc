"""A map's plan: scenes read and ordered, the output grid, an R-tree over the scenes' footprints,
and a predict plan over the region as one virtual scene whose cells each read only their scenes.

Planning keeps one small record and one box per scene; the cell tasks' scene strings are made
as tasks are built (:class:`CellScenes`), listing the few scenes a cell and its margins reach.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, replace
from typing import Any, Sequence

from geoseg.errors import SceneError
from geoseg.mapping.grid import MapGrid, Placement, clip_to_aoi, plan_grid, read_aoi
from geoseg.mapping.sources import MapScene, expand_inputs, order_scenes
from geoseg.options import MapOptions, PredictOptions
from geoseg.prediction.cell_task import CellTask
from geoseg.prediction.cells import Cell
from geoseg.prediction.plan import PredictPlan, plan_predict
from geoseg.raster.mosaic import SpecScene, mosaic_spec
from geoseg.raster.read import SceneInfo, parse_bands

#: Block shape the region is planned with (the scenes' own blocks are read by GDAL as they are).
REGION_BLOCK = (256, 256)


@dataclass
class MapPlan:
    """A checked map: its predict plan (region as one virtual scene), scenes, grid and timing."""

    predict: PredictPlan
    scenes: list[MapScene]
    grid: MapGrid
    seconds: float
    #: where ``order="newest"`` took each scene's date from, with counts
    date_sources: dict[str, int]
    order: str = "given"


class CellScenes:
    """The per-cell hook of a map's plan: each cell's task reads a mosaic of only the scenes
    its tiles reach (an STRtree query), and is clipped to the AOI."""

    def __init__(
        self,
        scenes: Sequence[MapScene],
        placements: Sequence[Placement],
        grid: MapGrid,
        count: int,
        dtype: str,
        resampling: str,
        aoi_px: Any = None,
    ) -> None:
        import shapely
        from shapely import STRtree

        self.grid, self.count, self.dtype, self.resampling = grid, count, dtype, resampling
        self.crs = grid.crs.to_wkt()
        self.transform = tuple(grid.transform)[:6]
        self.extent = grid.relative(grid.region)
        self.specs = [
            SpecScene(
                s.dataset,
                s.name,
                grid.relative((*p.offset, 0, 0))[:2] if p.offset else None,
                grid.relative(p.window),
                s.token,
            )
            for s, p in zip(scenes, placements)
        ]
        boxes = [shapely.box(w[1], w[0], w[3], w[2]) for w in (s.window for s in self.specs)]
        self.tree = STRtree(boxes)
        self.aoi = aoi_px
        if aoi_px is not None:
            shapely.prepare(aoi_px)

    def scenes_for(self, row0: int, col0: int, row1: int, col1: int) -> list[SpecScene]:
        """The scenes reaching a window of the output, in priority order."""
        import shapely

        hits = self.tree.query(shapely.box(col0, row0, col1, row1), predicate="intersects")
        return [self.specs[i] for i in sorted(int(h) for h in hits)]

    def spec(self, row0: int, col0: int, row1: int, col1: int) -> str:
        return mosaic_spec(
            self.crs,
            self.transform,
            self.grid.height,
            self.grid.width,
            self.extent,
            self.count,
            self.dtype,
            self.resampling,
            self.scenes_for(row0, col0, row1, col1),
        )

    def __call__(self, cell: Cell, task: CellTask) -> CellTask:
        tiles = cell.tiles
        r0 = min(t.input_row for t in tiles)
        c0 = min(t.input_col for t in tiles)
        r1 = max(t.input_row + t.input_height for t in tiles)
        c1 = max(t.input_col + t.input_width for t in tiles)
        clip = None
        if self.aoi is not None:
            import shapely

            w = cell.window
            box = shapely.box(w.col_off, w.row_off, w.col_off + w.width, w.row_off + w.height)
            if not self.aoi.contains(box):
                part = shapely.affinity.translate(
                    self.aoi.intersection(box), -w.col_off, -w.row_off
                )
                clip = part.wkt
        return replace(task, tiles=replace(task.tiles, scene=self.spec(r0, c0, r1, c1)), clip=clip)


def plan_map(
    scenes: Sequence[str | os.PathLike[str]],
    output: str | os.PathLike[str],
    model: str | os.PathLike[str] | None = None,
    options: PredictOptions = PredictOptions(),
    map_options: MapOptions = MapOptions(),
    probabilities: str | os.PathLike[str] | None = None,
    vector: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    vector_options: dict[str, Any] | None = None,
    confidence: str | os.PathLike[str] | None = None,
) -> MapPlan:
    """Check a map request and plan it; every bad input is one :class:`GeosegError` line here,
    before any work (see :func:`geoseg.mapping.map`)."""
    import shapely.affinity  # noqa: F401 - CellScenes uses it
    from shapely import STRtree, box

    from geoseg.models.load import read_model_config
    from geoseg.raster.scenes import RESAMPLING

    t0 = time.perf_counter()
    if options.resampling not in RESAMPLING:
        raise SceneError(
            f"unknown --resampling {options.resampling!r}; use one of {', '.join(RESAMPLING)}"
        )
    if map_options.crs is not None:
        from geoseg.mapping.grid import parse_crs

        parse_crs(map_options.crs)
    loaded = read_model_config(model)
    cfg = loaded.config
    found = expand_inputs(
        [str(s) for s in scenes],
        cfg.band_names,
        options.resampling,
        match_names=options.bands is None,
    )
    counts = {s.count for s in found}
    if len(counts) > 1 and options.bands is None:
        a = found[0]
        b = next(s for s in found if s.count != a.count)
        raise SceneError(
            f"the scenes have no common band set: {a.name} has {a.count} band(s), {b.name} {b.count}; "
            f"the model expects {cfg.in_channels} ({', '.join(cfg.band_names)}): give scenes with the same "
            "bands, or choose them with --bands when every scene has them"
        )
    for s in found:
        try:
            parse_bands(options.bands, s.count, cfg.in_channels)
        except SceneError as exc:
            raise SceneError(f"scene {s.name}: {exc}") from None
    ordered = order_scenes(found, map_options.order)
    grid, placements = plan_grid(ordered, map_options.crs, map_options.resolution)
    aoi_px = None
    if map_options.aoi is not None:
        aoi = read_aoi(map_options.aoi, grid.crs)
        tree = STRtree(
            [box(p.window[1], p.window[0], p.window[3], p.window[2]) for p in placements]
        )
        from geoseg.tiling import scales_alignment

        grid, aoi_px = clip_to_aoi(
            grid, tree, aoi, map_options.aoi, scales_alignment(cfg.output_stride, options.scales)
        )
        del tree
    dtype = _common_dtype([s.dtype for s in ordered])
    count = max(counts)
    digest = hashlib.sha256(
        json.dumps(
            [[s.dataset, s.token] for s in ordered]
            + [
                grid.crs.to_wkt(),
                list(grid.transform)[:6],
                grid.height,
                grid.width,
                list(grid.region),
                options.resampling,
                aoi_px.wkt if aoi_px is not None else None,
            ],
            default=str,
        ).encode()
    ).hexdigest()[:16]
    info = SceneInfo(
        path=f"map of {len(ordered)} scenes [{digest}]",
        width=grid.width,
        height=grid.height,
        count=count,
        dtype=dtype,
        crs=grid.crs,
        transform=grid.transform,
        nodata=None,
        descriptions=(),
        block_shape=REGION_BLOCK,
        georeferenced=True,
    )
    from geoseg.paths import is_virtual

    inputs = [s.name for s in ordered if not is_virtual(s.name) and "#" not in s.name]
    plan = plan_predict(
        inputs,
        output,
        loaded,
        options,
        probabilities,
        vector,
        overwrite,
        vector_options=vector_options,
        confidence=confidence,
        scene_info=info,
    )
    plan.cell_hook = CellScenes(ordered, placements, grid, count, dtype, options.resampling, aoi_px)
    sources: dict[str, int] = {}
    for s in ordered:
        if s.date_source:
            sources[s.date_source] = sources.get(s.date_source, 0) + 1
    return MapPlan(plan, ordered, grid, time.perf_counter() - t0, sources, map_options.order)


def _common_dtype(dtypes: Sequence[str]) -> str:
    """One type that holds every scene's values."""
    import numpy as np

    from geoseg.raster.read import SUPPORTED_DTYPES

    common = np.result_type(*[np.dtype(d) for d in dtypes]).name
    return common if common in SUPPORTED_DTYPES else "float64"
