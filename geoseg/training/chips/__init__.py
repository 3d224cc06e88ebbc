"""Training chips from labeled rasters or vector labels, with a spatial train/val/test split.

Chips are cut inside square split blocks larger than a chip, and each block goes wholly to one
split, so no chip of one split overlaps a chip of another. Every chip is a georeferenced
GeoTIFF pair (image, label); ``chips.json`` lists them with their split and class histogram,
``index.gpkg`` holds their footprints for GIS tools, and per-band statistics (train split,
valid pixels) give the normalization a model is trained with.

``plan.py`` decides where chips go and which split each block joins, ``cut.py`` is the worker
task that cuts and writes them, ``manifest.py`` reads and writes ``chips.json`` and
``index.gpkg``, and ``make.py`` runs it all (:func:`~geoseg.training.chips.make.make_chips`).
"""

from geoseg.training.chips.make import make_chips
from geoseg.training.chips.manifest import (
    ChipsSummary,
    iter_chips,
    load_manifest,
    manifest_classes,
)

__all__ = ["ChipsSummary", "iter_chips", "load_manifest", "make_chips", "manifest_classes"]
