"""Run by QGIS's Python (the system python3, not the venv): open layers headless, print facts.

Usage: QT_QPA_PLATFORM=offscreen python3 check_layers.py PATH... ; prints one JSON object.
"""

import json
import sys

from qgis.core import QgsApplication, QgsRasterLayer, QgsVectorLayer


def describe(path: str) -> dict:
    """Validity, CRS, extent and renderer of a layer as QGIS opens it (default style applied)."""
    if path.endswith(".tif"):
        layer = QgsRasterLayer(path, "r")
        kind = "raster"
    else:
        layer = QgsVectorLayer(path, "v", "ogr")
        kind = "vector"
    facts = {"kind": kind, "valid": layer.isValid()}
    if not layer.isValid():
        return facts
    ext = layer.extent()
    renderer = layer.renderer()
    facts.update(
        crs=layer.crs().authid(),
        extent=[ext.xMinimum(), ext.yMinimum(), ext.xMaximum(), ext.yMaximum()],
        renderer=renderer.type() if renderer is not None else None,
    )
    if kind == "raster":
        facts["bands"] = layer.bandCount()
        if renderer is not None and renderer.type() == "paletted":
            facts["palette"] = {str(int(c.value)): c.color.name() for c in renderer.classes()}
    else:
        facts["features"] = layer.featureCount()
        if renderer is not None and renderer.type() == "categorizedSymbol":
            facts["attr"] = renderer.classAttribute()
            facts["categories"] = {
                str(c.value()): [c.label(), c.symbol().color().name()]
                for c in renderer.categories()
            }
    return facts


def main() -> None:
    app = QgsApplication([], False)
    app.initQgis()
    try:
        print(json.dumps({p: describe(p) for p in sys.argv[1:]}))
    finally:
        app.exitQgis()


if __name__ == "__main__":
    main()
