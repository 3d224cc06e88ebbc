"""Polygons carry their default style (GeoPackage layer_styles, .qml sidecar); --dst-crs."""

from __future__ import annotations

import sqlite3
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import pyogrio
import pytest
import rasterio
import shapely
from affine import Affine
from click.testing import CliRunner

from geoseg.classes import ClassInfo, class_tags
from geoseg.cli.main import cli
from geoseg.errors import OutputError, VectorizeError
from geoseg.vector.vectorize import vectorize
from tests.conftest import write_raster

T = Affine(10.0, 0, 399960, 0, -10.0, 5800020)  # UTM 33N, near 52.3 N 13.5 E
CLASSES = [
    ClassInfo(1, "forest", (34, 139, 34)),
    ClassInfo(2, "water", (30, 144, 255)),
    ClassInfo(3, "urban & roads", (220, 20, 60)),
]


def class_raster(path: Path) -> Path:
    """A paletted, named class raster as predict writes it (nodata 255)."""
    arr = np.full((64, 64), 1, np.uint8)
    arr[8:30, 8:40] = 2
    arr[40:60, 20:50] = 3
    arr[:4, :4] = 255
    write_raster(path, arr, transform=T, nodata=255)
    with rasterio.open(path, "r+") as dst:
        dst.write_colormap(1, {c.value: (*c.color, 255) for c in CLASSES})
        dst.update_tags(**class_tags(CLASSES, "test-model"))
    return path


def categories(qml_text: str) -> dict[int, tuple[str, str]]:
    """Class value -> (label, fill colour) of a categorized QML renderer."""
    root = ET.fromstring(qml_text.split("\n", 1)[1])  # past the DOCTYPE line
    renderer = root.find("renderer-v2")
    assert renderer is not None and renderer.get("type") == "categorizedSymbol"
    assert renderer.get("attr") == "class"
    fills = {}
    for sym in renderer.iter("symbol"):
        opt = sym.find("layer/Option/Option[@name='color']")
        prop = sym.find("layer/prop[@k='color']")
        assert opt is not None and prop is not None and opt.get("value") == prop.get("v")
        fills[sym.get("name")] = opt.get("value")
    return {
        int(c.get("value")): (c.get("label"), fills[c.get("symbol")])
        for c in renderer.iter("category")
    }


def test_geopackage_carries_its_default_style_and_other_formats_a_qml(
    tmp_path: Path, dask_client: Any
) -> None:
    raster = class_raster(tmp_path / "classes.tif")
    gpkg = tmp_path / "p.gpkg"
    vectorize(raster, gpkg, client=dask_client, timestamp="2017-02-16T10:00:00.000Z")
    with sqlite3.connect(gpkg) as con:
        rows = con.execute(
            "SELECT f_table_name, f_geometry_column, useAsDefault, styleQML, styleSLD, "
            "update_time FROM layer_styles"
        ).fetchall()
        contents = dict(con.execute("SELECT table_name, data_type FROM gpkg_contents").fetchall())
    assert contents == {"polygons": "features", "layer_styles": "attributes"}
    ((table, geom_col, default, qml, sld, stamp),) = rows
    assert (table, geom_col, default, stamp) == ("polygons", "geom", 1, "2017-02-16T10:00:00.000Z")
    assert categories(qml) == {
        1: ("forest", "34,139,34,255"),
        2: ("water", "30,144,255,255"),
        3: ("urban & roads", "220,20,60,255"),
    }
    sld_root = ET.fromstring(sld)
    assert [lit.text for lit in sld_root.iter("{http://www.opengis.net/ogc}Literal")] == [
        "1",
        "2",
        "3",
    ]
    assert pyogrio.list_layers(gpkg)[0, 0] == "polygons"  # first: what readers open by default

    fgb = tmp_path / "p.fgb"
    vectorize(raster, fgb, skip_classes=(2,), client=dask_client)
    assert set(categories((tmp_path / "p.qml").read_text())) == {1, 3}
    with pytest.raises(OutputError, match="p.qml exists.*--overwrite"):
        vectorize(raster, tmp_path / "p.shp", client=dask_client)
    assert not (tmp_path / "p.shp").exists()
    vectorize(raster, tmp_path / "p.shp", client=dask_client, overwrite=True)
    assert set(categories((tmp_path / "p.qml").read_text())) == {1, 2, 3}


def test_dst_crs_reprojects_but_measures_in_the_source_crs(
    tmp_path: Path, dask_client: Any
) -> None:
    raster = class_raster(tmp_path / "classes.tif")
    with pytest.raises(VectorizeError, match="--dst-crs EPSG:4326"):
        vectorize(raster, tmp_path / "p.geojson", client=dask_client)
    with pytest.raises(VectorizeError, match="--dst-crs 'EPSG:99999' is not a CRS"):
        vectorize(raster, tmp_path / "p.gpkg", dst_crs="EPSG:99999", client=dask_client)
    utm, geo = tmp_path / "utm.gpkg", tmp_path / "p.geojson"
    vectorize(raster, utm, client=dask_client)
    r = CliRunner().invoke(
        cli,
        [
            "vectorize",
            str(raster),
            "-o",
            str(geo),
            "--dst-crs",
            "EPSG:4326",
            "--scheduler",
            str(dask_client.scheduler.address),
            "-q",
        ],
    )
    assert r.exit_code == 0, r.output
    assert pyogrio.read_info(geo)["crs"] == "EPSG:4326"
    m_utm, _, wkb_utm, d_utm = pyogrio.raw.read(str(utm), layer="polygons")
    m_geo, _, wkb_geo, d_geo = pyogrio.raw.read(str(geo))
    f = list(m_geo["fields"])
    np.testing.assert_allclose(d_geo[f.index("area_m2")], d_utm[f.index("area_m2")])  # UTM metres
    np.testing.assert_allclose(d_geo[f.index("area_m2")], d_geo[f.index("pixels")] * 100.0)
    lon, lat = shapely.get_coordinates(shapely.from_wkb(wkb_geo))[0]
    assert 13 < lon < 14 and 52 < lat < 53
    # simplified then reprojected: still one polygon per region, in degrees
    simp = tmp_path / "s.gpkg"
    vectorize(raster, simp, simplify=15.0, dst_crs="EPSG:4326", client=dask_client)
    assert pyogrio.read_info(simp, layer="polygons")["crs"] == "EPSG:4326"
    bounds = shapely.total_bounds(
        shapely.from_wkb(pyogrio.raw.read(str(simp), layer="polygons")[2])
    )
    assert 13 < bounds[0] < bounds[2] < 14
