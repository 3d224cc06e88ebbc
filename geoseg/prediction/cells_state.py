"""Resuming a folder of cells: the run token each cell file carries, which cells a rerun keeps,
and the marker that makes the folder geoseg's (written before the first cell)."""

from __future__ import annotations

import json
from typing import Sequence

from geoseg.errors import OutputError
from geoseg.prediction.destinations import CELLS_MARKER
from geoseg.prediction.plan import PredictPlan
from geoseg.raster.blocks import RasterMeta
from geoseg.raster.scenes import file_token

TOKEN_TAG = "GEOSEG_CELL_TOKEN"


def run_token(plan: PredictPlan, metas: Sequence[RasterMeta]) -> str:
    """What a cell's content depends on: the scene's files, the model, the inference options,
    the tiling and the rasters (their encoding included). The options by their repr (every
    field, by value): a token of the object would hash its class's module path, so moving the
    class would make every finished cell look foreign."""
    from dask.base import tokenize

    layout = plan.layout
    return tokenize(
        file_token(plan.scene.path),
        plan.scene.path,
        plan.model.sha256,
        repr(plan.options),
        plan.bands,
        plan.margin,
        plan.tile,
        layout.size if layout else None,
        tuple(metas),
    )


def finished_cells(
    plan: PredictPlan, metas: Sequence[RasterMeta], token: str, overwrite: bool
) -> set[tuple[int, int]]:
    """Cells whose every raster file exists with ``token``: a rerun keeps them. A cell file of
    another run (other scene, model or options) is an error unless ``overwrite``."""
    import rasterio

    from geoseg.raster.read import no_georef_warning

    dest = plan.destinations
    assert plan.layout is not None
    env = {}
    if dest.remote:
        from geoseg.objectstore.client import gdal_s3_env
        from geoseg.objectstore.reads import list_keys
        from geoseg.objectstore.urls import to_vsis3

        env = gdal_s3_env()
        present = {url for url in list_keys(dest.output)}
    done: set[tuple[int, int]] = set()
    with rasterio.Env(**env), no_georef_warning():
        for cell in plan.layout:
            ok = True
            for meta in metas:
                where = dest.cell_destination(meta.spec.name, cell.name)
                if dest.remote:
                    if where not in present:
                        ok = False
                        continue
                    path = to_vsis3(where)
                else:
                    from pathlib import Path

                    if not Path(where).exists():
                        ok = False
                        continue
                    path = where
                try:
                    with rasterio.open(path) as src:
                        found = src.tags().get(TOKEN_TAG)
                except rasterio.errors.RasterioIOError:
                    found = None
                if found != token:
                    ok = False
                    if not overwrite:
                        raise OutputError(
                            f"{where} was written by another run (another scene, model or options); pass "
                            "--overwrite to replace the folder's cells, or give another folder"
                        )
            if ok:
                done.add((cell.row, cell.col))
    return done


def start_cells(plan: PredictPlan, token: str) -> None:
    """Mark the folder as geoseg's before any cell is written, so a run stopped half way is
    resumed rather than refused."""
    from geoseg.errors import write_failed
    from geoseg.prediction.write import publish_folder_files

    if not plan.destinations.remote:
        for (
            folder
        ) in plan.destinations.local.values():  # one per raster: classes/, probabilities/...
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise write_failed(folder, exc) from None
    marker = {"geoseg": "cells", "token": token, "size": plan.layout.size if plan.layout else None}
    publish_folder_files(plan.destinations, {CELLS_MARKER: json.dumps(marker).encode()})
