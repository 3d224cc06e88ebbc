"""Default styles for polygon layers: categorized by class, in the model's colours and names.

A GeoPackage carries its style in the ``layer_styles`` table (QGIS's own convention: a QML and
an SLD, marked as the default), so QGIS applies it on open; other formats get a ``.qml``
sidecar with the layer's base name, which QGIS loads the same way.
"""

from __future__ import annotations

import os
import sqlite3
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence
from xml.sax.saxutils import escape, quoteattr

from geoseg.classes import ClassInfo
from geoseg.fs import write_bytes_atomic

#: The attribute the style categorizes on (written by :mod:`geoseg.vector.vectorize`).
CLASS_FIELD = "class"
OUTLINE = (35, 35, 35)
#: QGIS version the QML claims; older and newer QGIS read it.
QML_VERSION = "3.22.0-Białowieża"


def raster_classes(src: Any) -> list[ClassInfo]:
    """Classes of a geoseg class raster: names from its metadata, colours from its colour table."""
    from geoseg.classes import read_class_names

    names = read_class_names(src)
    try:
        cmap = src.colormap(1)
    except ValueError:  # no colour table
        cmap = {}
    values = sorted(names) if names else []
    grey = (128, 128, 128)
    return [ClassInfo(v, names.get(v, str(v)), tuple(cmap.get(v, grey)[:3])) for v in values]


def _rgb(c: Sequence[int]) -> str:
    return ",".join(str(int(v)) for v in c[:3])


def _hex(c: Sequence[int]) -> str:
    return "#" + "".join(f"{int(v):02x}" for v in c[:3])


def _fill(c: ClassInfo) -> dict[str, str]:
    """A QGIS SimpleFill in the class's colour with a thin dark outline."""
    return {
        "color": f"{_rgb(c.color)},255",
        "outline_color": f"{_rgb(OUTLINE)},255",
        "outline_style": "solid",
        "outline_width": "0.1",
        "outline_width_unit": "MM",
        "style": "solid",
        "joinstyle": "bevel",
    }


def qml(classes: Sequence[ClassInfo], field: str = CLASS_FIELD) -> str:
    """A QGIS layer style (QML): a categorized renderer, one solid fill per class."""
    cats = "\n".join(
        f'      <category render="true" symbol="{i}" value="{c.value}" type="integer" '
        f"label={quoteattr(c.name)}/>"
        for i, c in enumerate(classes)
    )
    symbols = []
    for i, c in enumerate(classes):
        p = _fill(c)
        # both spellings: <Option> (QGIS >= 3.26) and <prop> (before), each reads its own
        options = "\n".join(
            f'            <Option name="{k}" type="QString" value="{v}"/>' for k, v in p.items()
        )
        legacy = "\n".join(f'          <prop k="{k}" v="{v}"/>' for k, v in p.items())
        symbols.append(
            f'      <symbol type="fill" name="{i}" alpha="1" clip_to_extent="1" force_rhr="0">\n'
            f'        <layer class="SimpleFill" enabled="1" pass="0" locked="0">\n'
            f'          <Option type="Map">\n{options}\n          </Option>\n{legacy}\n'
            f"        </layer>\n      </symbol>"
        )
    return (
        "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n"
        f'<qgis version="{QML_VERSION}" styleCategories="Symbology">\n'
        f'  <renderer-v2 type="categorizedSymbol" attr={quoteattr(field)} symbollevels="0" '
        'enableorderby="0" forceraster="0" referencescale="-1">\n'
        f"    <categories>\n{cats}\n    </categories>\n"
        "    <symbols>\n" + "\n".join(symbols) + "\n    </symbols>\n"
        "  </renderer-v2>\n"
        "  <layerGeometryType>2</layerGeometryType>\n"
        "</qgis>\n"
    )


def sld(classes: Sequence[ClassInfo], layer: str, field: str = CLASS_FIELD) -> str:
    """The same style as OGC SLD 1.1 (for GeoServer and other SLD readers)."""
    rules = "\n".join(
        "        <se:Rule>\n"
        f"          <se:Name>{escape(c.name)}</se:Name>\n"
        f"          <se:Description><se:Title>{escape(c.name)}</se:Title></se:Description>\n"
        "          <ogc:Filter><ogc:PropertyIsEqualTo>"
        f"<ogc:PropertyName>{escape(field)}</ogc:PropertyName><ogc:Literal>{c.value}</ogc:Literal>"
        "</ogc:PropertyIsEqualTo></ogc:Filter>\n"
        "          <se:PolygonSymbolizer>\n"
        f'            <se:Fill><se:SvgParameter name="fill">{_hex(c.color)}</se:SvgParameter></se:Fill>\n'
        f'            <se:Stroke><se:SvgParameter name="stroke">{_hex(OUTLINE)}</se:SvgParameter>'
        '<se:SvgParameter name="stroke-width">0.5</se:SvgParameter></se:Stroke>\n'
        "          </se:PolygonSymbolizer>\n"
        "        </se:Rule>"
        for c in classes
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<StyledLayerDescriptor xmlns="http://www.opengis.net/sld" xmlns:ogc="http://www.opengis.net/ogc" '
        'xmlns:se="http://www.opengis.net/se" xmlns:xlink="http://www.w3.org/1999/xlink" '
        'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" version="1.1.0" '
        'xsi:schemaLocation="http://www.opengis.net/sld http://schemas.opengis.net/sld/1.1.0/StyledLayerDescriptor.xsd">\n'
        f"  <NamedLayer>\n    <se:Name>{escape(layer)}</se:Name>\n    <UserStyle>\n"
        f"      <se:Name>{escape(layer)}</se:Name>\n      <se:FeatureTypeStyle>\n{rules}\n"
        "      </se:FeatureTypeStyle>\n    </UserStyle>\n  </NamedLayer>\n</StyledLayerDescriptor>\n"
    )


def _stamp(timestamp: str | None) -> str:
    """ISO 8601 UTC with milliseconds, as QGIS and GeoPackage write it."""
    if timestamp is None:
        return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    return timestamp


def write_gpkg_style(
    path: str | os.PathLike[str],
    classes: Sequence[ClassInfo],
    layer: str,
    geometry_column: str = "geom",
    timestamp: str | None = None,
) -> None:
    """Add the style as the layer's default in the GeoPackage's ``layer_styles`` table (QGIS's
    schema, registered in ``gpkg_contents`` as an attributes table)."""
    stamp = _stamp(timestamp)
    con = sqlite3.connect(str(path))
    try:
        with con:
            con.execute(
                "CREATE TABLE IF NOT EXISTS layer_styles (id INTEGER PRIMARY KEY AUTOINCREMENT, "
                "f_table_catalog TEXT(256), f_table_schema TEXT(256), f_table_name TEXT(256), "
                "f_geometry_column TEXT(256), styleName TEXT(30), styleQML TEXT, styleSLD TEXT, "
                "useAsDefault BOOLEAN, description TEXT, owner TEXT(30), ui TEXT(30), "
                "update_time DATETIME DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')))"
            )
            con.execute("DELETE FROM layer_styles WHERE f_table_name = ?", (layer,))
            con.execute(
                "INSERT INTO layer_styles (f_table_catalog, f_table_schema, f_table_name, "
                "f_geometry_column, styleName, styleQML, styleSLD, useAsDefault, description, "
                "owner, ui, update_time) VALUES ('', '', ?, ?, ?, ?, ?, 1, ?, '', NULL, ?)",
                (
                    layer,
                    geometry_column,
                    layer,
                    qml(classes),
                    sld(classes, layer),
                    "geoseg: categorized by class",
                    stamp,
                ),
            )
            con.execute(
                "INSERT OR REPLACE INTO gpkg_contents (table_name, data_type, identifier, "
                "description, last_change) VALUES ('layer_styles', 'attributes', 'layer_styles', "
                "'', ?)",
                (stamp,),
            )
    finally:
        con.close()


def qml_sidecar(output: Path) -> Path:
    """Where QGIS looks for a file layer's default style: ``<name>.qml`` beside it."""
    return output.with_suffix(".qml")


def write_qml_sidecar(output: Path, classes: Sequence[ClassInfo]) -> Path:
    """Write the style beside ``output`` (atomically), for formats without a style table."""
    side = qml_sidecar(output)
    write_bytes_atomic(side, qml(classes).encode("utf-8"))
    return side
