"""The classes of a class raster as the results read them: geoseg's metadata when present,
otherwise plain values (counted by value, with a warning)."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from geoseg.classes import ClassInfo
from geoseg.errors import GeosegWarning, ResultsError

#: Colour of a value without a colour table entry.
GREY = (128, 128, 128)


def raster_class_info(src: Any, path: str, warn: bool = True) -> tuple[dict[int, ClassInfo], bool]:
    """``(value -> ClassInfo, tagged)`` of an open class raster; ``tagged`` is False (and a
    warning says so) when it lacks geoseg's ``GEOSEG_CLASSES`` metadata."""
    from geoseg.vector.styles import raster_classes

    if not np.issubdtype(np.dtype(src.dtypes[0]), np.integer):
        raise ResultsError(
            f"{path} holds {src.dtypes[0]} values: not a class raster; give a class "
            "raster from 'geoseg predict', or round the values to integer classes first"
        )
    classes = {c.value: c for c in raster_classes(src)}
    if not classes and warn:
        warnings.warn(
            f"{path} has no geoseg class metadata (GEOSEG_CLASSES); counting by value",
            GeosegWarning,
            stacklevel=3,
        )
    return classes, bool(classes)


def colour_of(
    classes: dict[int, ClassInfo], cmap: dict[int, tuple[int, ...]], value: int
) -> tuple[int, int, int]:
    """A value's colour: its class's, else the raster's colour table's, else grey."""
    if value in classes:
        return classes[value].color
    c = cmap.get(value, GREY)
    return (int(c[0]), int(c[1]), int(c[2]))


def name_of(classes: dict[int, ClassInfo], value: int) -> str:
    """A value's class name (the value itself for unnamed values)."""
    return classes[value].name if value in classes else str(value)
