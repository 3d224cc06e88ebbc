"""The index files of a folder of cells: a GDAL VRT mosaic per raster (which reads as the single
COG would, pixel for pixel) and a STAC collection with one item per cell."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Sequence
from xml.sax.saxutils import escape, quoteattr

from geoseg.prediction.cells import CellLayout
from geoseg.raster.blocks import RasterMeta

if TYPE_CHECKING:
    from geoseg.prediction.plan import PredictPlan
    from geoseg.raster.read import SceneInfo

_GDAL_TYPES = {"uint8": "Byte", "uint16": "UInt16"}
COG_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"


def mosaic_vrt(scene: SceneInfo, layout: CellLayout, meta: RasterMeta) -> bytes:
    """A VRT of the raster's cells (paths relative to the VRT), with the class metadata, colour
    table, nodata and band names the single COG would carry."""
    spec = meta.spec
    gdal_type = _GDAL_TYPES[spec.dtype]
    out = [f'<VRTDataset rasterXSize="{scene.width}" rasterYSize="{scene.height}">']
    if scene.georeferenced and scene.crs is not None:
        out.append(f'  <SRS dataAxisToSRSAxisMapping="1,2">{escape(scene.crs.to_wkt())}</SRS>')
        gt = scene.transform.to_gdal()
        out.append("  <GeoTransform>" + ", ".join(repr(float(v)) for v in gt) + "</GeoTransform>")
    if meta.tags:
        out.append("  <Metadata>")
        out.extend(f"    <MDI key={quoteattr(k)}>{escape(v)}</MDI>" for k, v in meta.tags)
        out.append("  </Metadata>")
    for band in range(1, spec.count + 1):
        out.append(f'  <VRTRasterBand dataType="{gdal_type}" band="{band}">')
        if spec.nodata is not None:
            out.append(f"    <NoDataValue>{spec.nodata}</NoDataValue>")
        if band <= len(meta.descriptions):
            out.append(f"    <Description>{escape(meta.descriptions[band - 1])}</Description>")
        if meta.colormap:
            out.append("    <ColorInterp>Palette</ColorInterp>")
            table = dict(meta.colormap)
            out.append("    <ColorTable>")
            for v in range(max(table) + 1):
                c = table.get(v, (0, 0, 0, 0))
                out.append(f'      <Entry c1="{c[0]}" c2="{c[1]}" c3="{c[2]}" c4="{c[3]}"/>')
            out.append("    </ColorTable>")
        for cell in layout:
            w, h = int(cell.window.width), int(cell.window.height)
            out.append("    <SimpleSource>")
            out.append(
                f'      <SourceFilename relativeToVRT="1">{spec.name}/{cell.name}.tif</SourceFilename>'
            )
            out.append(f"      <SourceBand>{band}</SourceBand>")
            out.append(
                f'      <SourceProperties RasterXSize="{w}" RasterYSize="{h}" DataType="{gdal_type}" '
                'BlockXSize="512" BlockYSize="512"/>'
            )
            out.append(f'      <SrcRect xOff="0" yOff="0" xSize="{w}" ySize="{h}"/>')
            out.append(
                f'      <DstRect xOff="{int(cell.window.col_off)}" yOff="{int(cell.window.row_off)}" '
                f'xSize="{w}" ySize="{h}"/>'
            )
            out.append("    </SimpleSource>")
        out.append("  </VRTRasterBand>")
    out.append("</VRTDataset>")
    return ("\n".join(out) + "\n").encode()


def cells_collection(
    plan: PredictPlan, layout: CellLayout, metas: Sequence[RasterMeta]
) -> tuple[bytes, dict[str, bytes]]:
    """A STAC 1.0 collection (the mosaics as its assets) and an item per cell (the cell's
    rasters as assets, with the projection and classification extensions)."""
    from rasterio.warp import transform_bounds, transform_geom
    from rasterio.windows import bounds as window_bounds

    scene = plan.scene
    crs = scene.crs if scene.georeferenced else None
    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    classes = [
        {"value": c.value, "name": c.name, "color_hint": "%02X%02X%02X" % tuple(c.color)}
        for c in plan.model.classes
    ]
    items: dict[str, bytes] = {}
    links: list[dict[str, Any]] = [
        {"rel": "root", "href": "./collection.json", "type": "application/json"},
        {"rel": "self", "href": "./collection.json", "type": "application/json"},
    ]
    extensions = [
        "https://stac-extensions.github.io/projection/v1.1.0/schema.json",
        "https://stac-extensions.github.io/classification/v1.1.0/schema.json",
    ]
    for cell in layout:
        left, bottom, right, top = window_bounds(cell.window, scene.transform)
        geom: Any = None
        bbox: Any = None
        if crs is not None:
            bbox = list(
                transform_bounds(crs, "EPSG:4326", left, bottom, right, top, densify_pts=21)
            )
            geom = transform_geom(
                crs,
                "EPSG:4326",
                {
                    "type": "Polygon",
                    "coordinates": [
                        [(left, bottom), (right, bottom), (right, top), (left, top), (left, bottom)]
                    ],
                },
            )
        props: dict[str, Any] = {
            "datetime": now,
            "geoseg:model": plan.model.name,
            "geoseg:model_sha256": plan.model.sha256,
            "geoseg:source": scene.path,
        }
        if crs is not None:
            t = scene.transform * scene.transform.translation(
                int(cell.window.col_off), int(cell.window.row_off)
            )
            props.update(
                {
                    "proj:wkt2": crs.to_wkt(),
                    "proj:transform": list(t)[:6],
                    "proj:shape": [int(cell.window.height), int(cell.window.width)],
                }
            )
            if crs.to_epsg():
                props["proj:epsg"] = crs.to_epsg()
        assets: dict[str, Any] = {}
        for m in metas:
            asset: dict[str, Any] = {
                "href": f"../{m.spec.name}/{cell.name}.tif",
                "type": COG_TYPE,
                "roles": ["data"],
                "title": m.spec.name,
            }
            if m.spec.name == "classes":
                asset["classification:classes"] = classes
            assets[m.spec.name] = asset
        item = {
            "type": "Feature",
            "stac_version": "1.0.0",
            "stac_extensions": extensions,
            "id": cell.name,
            "collection": "geoseg-cells",
            "geometry": geom,
            "bbox": bbox,
            "properties": props,
            "assets": assets,
            "links": [
                {"rel": "collection", "href": "../collection.json"},
                {"rel": "root", "href": "../collection.json"},
            ],
        }
        items[cell.name] = json.dumps(item, indent=1).encode()
        links.append(
            {"rel": "item", "href": f"./items/{cell.name}.json", "type": "application/geo+json"}
        )
    total = None
    if crs is not None:
        left, bottom, right, top = window_bounds(
            ((0, scene.height), (0, scene.width)), scene.transform
        )
        total = list(transform_bounds(crs, "EPSG:4326", left, bottom, right, top, densify_pts=21))
    collection = {
        "type": "Collection",
        "stac_version": "1.0.0",
        "id": "geoseg-cells",
        "stac_extensions": extensions,
        "description": f"{plan.model.name} classes of {scene.path} in {len(layout)} cells of {layout.size} px",
        "license": "other",
        "links": links,
        "extent": {
            "spatial": {"bbox": [total or [-180, -90, 180, 90]]},
            "temporal": {"interval": [[now, None]]},
        },
        "assets": {
            m.spec.name: {
                "href": f"./{m.spec.name}.vrt",
                "type": "application/xml",
                "roles": ["data"],
                "title": f"{m.spec.name} mosaic (GDAL VRT)",
            }
            for m in metas
        },
    }
    return json.dumps(collection, indent=1).encode(), items
