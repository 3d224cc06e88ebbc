"""Polygons from class rasters (vectorize) and their QGIS styles."""
