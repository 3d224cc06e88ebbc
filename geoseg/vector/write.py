"""Writing polygons: a GeoPackage appended in batches, simplified as a coverage, then published in
the asked format, atomically."""

from __future__ import annotations

import contextlib
import glob
import json
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from geoseg.fs import (
    publish_file,
    remove_quietly,
    temporary_sibling,
)
from geoseg.vector.blocks import Finished
from geoseg.vector.formats import require_pyarrow
from geoseg.vector.geometry import Measurer

if TYPE_CHECKING:
    pass


#: Serializes the process-wide OGR_CURRENT_DATE (see :func:`ogr_date`).
_OGR_DATE_LOCK = threading.Lock()


@contextlib.contextmanager
def ogr_date(timestamp: str | None) -> Iterator[None]:
    """Scope OGR_CURRENT_DATE (the GeoPackage last-change stamp) in pyogrio's GDAL, then reset it."""
    if timestamp is None:
        yield
        return
    import pyogrio

    # the option is process-wide: polygonizations run at once (a batch's scenes) take turns
    with _OGR_DATE_LOCK:
        pyogrio.set_gdal_config_options({"OGR_CURRENT_DATE": timestamp})
        try:
            yield
        finally:
            pyogrio.set_gdal_config_options({"OGR_CURRENT_DATE": None})


class GpkgWriter:
    """Appends features to a GeoPackage in batches, so memory does not grow with the layer."""

    FIELDS = ["class", "class_name", "area_m2", "perim_m", "pixels"]

    def __init__(
        self, path: Path, crs: Any, with_prob: bool, batch: int = 20000, reproject: Any = None
    ) -> None:
        self.path = path
        self.crs = crs.to_wkt() if crs is not None else None
        self.reproject = reproject
        self.with_prob = with_prob
        self.batch = batch
        self.written = False
        self._reset()

    def _reset(self) -> None:
        self.wkb: list[bytes] = []
        self.cols: list[list[Any]] = [[] for _ in range(6)]

    def add(
        self,
        geom: Any,
        value: int,
        name: str,
        area: float,
        perim: float,
        pixels: int,
        mean_prob: float | None,
    ) -> None:
        import shapely

        self.wkb.append(shapely.to_wkb(geom))
        for col, v in zip(self.cols, (value, name, area, perim, pixels, mean_prob)):
            col.append(v)
        if len(self.wkb) >= self.batch:
            self.flush()

    def add_many(self, f: Finished, names: dict[int, str]) -> None:
        """Append a block's finished regions (already measured, WKB)."""
        values = f.classes.tolist()
        self.wkb.extend(f.wkb)
        self.cols[0].extend(values)
        self.cols[1].extend(names.get(v, str(v)) for v in values)
        self.cols[2].extend(f.area.tolist())
        self.cols[3].extend(f.perimeter.tolist())
        self.cols[4].extend(f.pixels.tolist())
        mean = (
            [None] * len(values)
            if f.prob_sum is None
            else (f.prob_sum / np.maximum(f.pixels, 1)).tolist()
        )
        self.cols[5].extend(mean)
        if len(self.wkb) >= self.batch:
            self.flush()

    def flush(self) -> None:
        import pyogrio

        if not self.wkb and self.written:
            return
        c = self.cols
        data = [
            np.asarray(c[0], dtype=np.int32),
            np.asarray(c[1], dtype=object),
            np.asarray(c[2], dtype=np.float64),
            np.asarray(c[3], dtype=np.float64),
            np.asarray(c[4], dtype=np.int64),
        ]
        fields = list(self.FIELDS)
        wkb = np.asarray(self.wkb, dtype=object)
        if self.reproject is not None and len(wkb):
            import shapely

            wkb = shapely.to_wkb(self.reproject(shapely.from_wkb(wkb)))
        if self.with_prob:
            data.append(np.asarray([np.nan if v is None else v for v in c[5]], dtype=np.float64))
            fields.append("mean_prob")
        pyogrio.raw.write(
            str(self.path),
            wkb,
            data,
            fields,
            crs=self.crs,
            geometry_type="MultiPolygon",
            promote_to_multi=True,
            driver="GPKG",
            layer="polygons",
            append=self.written,
        )
        self.written = True
        self._reset()

    def close(self) -> None:
        self.flush()


def simplify_layer(
    path: Path, tolerance: float, measure: Measurer, reproject: Any = None, out_crs: Any = None
) -> None:
    """Simplify the whole layer as a coverage (shared borders once), recompute measures, then
    reproject it when asked (simplification and measures work in the raster's CRS)."""
    import pyogrio
    import shapely

    meta, _, wkb, data = pyogrio.raw.read(str(path), layer="polygons")
    if wkb is None or len(wkb) == 0:
        return
    geoms = shapely.coverage_simplify(shapely.from_wkb(wkb), tolerance)
    fields = list(meta["fields"])
    data = list(data)
    for i, g in enumerate(geoms):
        area, perim = measure(g)
        data[fields.index("area_m2")][i] = area
        data[fields.index("perim_m")][i] = perim
    crs = meta["crs"]
    if reproject is not None:
        geoms = reproject(geoms)
        crs = out_crs.to_wkt()
    remove_quietly(path)
    pyogrio.raw.write(
        str(path),
        np.asarray(shapely.to_wkb(geoms), dtype=object),
        data,
        fields,
        crs=crs,
        geometry_type="MultiPolygon",
        promote_to_multi=True,
        driver="GPKG",
        layer="polygons",
    )


def publish_polygons(tmp: Path, out: Path, driver: str, crs: Any) -> None:
    """Move the staged GeoPackage to the output path, converting the format if needed."""
    import pyogrio

    if driver == "GPKG":
        publish_file(tmp, out)
        return
    staged = temporary_sibling(out, out.suffix)
    try:
        if driver == "Parquet":
            _write_geoparquet(tmp, staged)
        else:
            meta, _, wkb, data = pyogrio.raw.read(str(tmp), layer="polygons")
            opts: dict[str, Any] = (
                {"SPATIAL_INDEX": "YES"} if driver in ("FlatGeobuf", "ESRI Shapefile") else {}
            )
            if driver in ("GeoJSON", "FlatGeobuf"):
                opts["layer"] = out.stem  # not the staged file's hidden name
            if driver == "ESRI Shapefile":
                staged = staged.with_suffix(".shp")
            pyogrio.raw.write(
                str(staged),
                wkb if wkb is not None else np.array([], dtype=object),
                data,
                list(meta["fields"]),
                crs=meta["crs"],
                geometry_type="MultiPolygon",
                driver=driver,
                **opts,
            )
        if driver == "ESRI Shapefile":
            for side in staged.parent.glob(glob.escape(staged.stem) + ".*"):
                publish_file(side, out.with_suffix(side.suffix))
        else:
            publish_file(staged, out)
    finally:
        remove_quietly(tmp)


def _write_geoparquet(src: Path, dst: Path) -> None:
    """GeoParquet 1.0 (WKB geometry + 'geo' metadata) through pyarrow."""
    require_pyarrow()
    import pyarrow as pa
    import pyarrow.parquet as pq
    import pyogrio
    import shapely

    meta, _, wkb, data = pyogrio.raw.read(str(src), layer="polygons")
    geoms = shapely.from_wkb(wkb) if wkb is not None else np.array([])
    cols = {name: pa.array(values) for name, values in zip(meta["fields"], data)}
    cols["geometry"] = pa.array(list(wkb) if wkb is not None else [], type=pa.binary())
    bbox = list(shapely.total_bounds(geoms)) if len(geoms) else []
    crs_json = None
    if meta["crs"]:
        from pyproj import CRS as ProjCRS

        crs_json = ProjCRS.from_user_input(meta["crs"]).to_json_dict()
    geo = {
        "version": "1.0.0",
        "primary_column": "geometry",
        "columns": {
            "geometry": {
                "encoding": "WKB",
                "geometry_types": ["MultiPolygon"],
                "crs": crs_json,
                "bbox": bbox,
            }
        },
    }
    table = pa.table(cols).replace_schema_metadata({b"geo": json.dumps(geo).encode()})
    pq.write_table(table, dst)
