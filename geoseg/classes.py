"""Facts about class values that training, models and outputs share: the label value meaning
"not labelled", the colours classes get when nobody names one, and ``--classes`` parsing.
Imports nothing of geoseg but its errors, so models need not import training to use them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from geoseg.errors import ChipError

#: Label value meaning "not labelled" when the user names none (``--ignore-value``), and the
#: class index training's loss ignores (not labelled, and image nodata).
IGNORE_VALUE = 255

#: Class colours in order, for classes the user gave none.
PALETTE = [
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
    (0, 128, 128),
    (220, 190, 255),
    (170, 110, 40),
    (255, 250, 200),
    (128, 0, 0),
    (170, 255, 195),
    (128, 128, 0),
    (255, 215, 180),
    (0, 0, 128),
    (128, 128, 128),
]


def default_color(value: int) -> tuple[int, int, int]:
    """The palette colour of class ``value`` (the palette repeats)."""
    return PALETTE[value % len(PALETTE)]


#: Class names (and colours) by value, as the API takes them: a name, or (name, colour or None).
ClassSpec = Mapping[int, "str | tuple[str, tuple[int, int, int] | None]"]


def parse_class_names(text: str | None) -> dict[int, tuple[str, tuple[int, int, int] | None]]:
    """``"1=farmland:#e6c84b,2=forest"`` -> {1: ("farmland", (230, 200, 75)), 2: ("forest", None)}."""
    if not text:
        return {}
    out: dict[int, tuple[str, tuple[int, int, int] | None]] = {}
    for part in text.split(","):
        if "=" not in part:
            raise ChipError(f"--classes entry {part!r} is not VALUE=NAME or VALUE=NAME:#RRGGBB")
        v, rest = part.split("=", 1)
        name, _, colour = rest.partition(":")
        rgb = None
        if colour:
            c = colour.strip().lstrip("#")
            if len(c) != 6:
                raise ChipError(f"--classes colour {colour!r} is not #RRGGBB")
            try:
                rgb = (int(c[0:2], 16), int(c[2:4], 16), int(c[4:6], 16))
            except ValueError:
                raise ChipError(f"--classes colour {colour!r} is not #RRGGBB") from None
        try:
            out[int(v)] = (name.strip(), rgb)
        except ValueError:
            raise ChipError(f"--classes value {v!r} is not an integer") from None
    return out


def parse_value_map(text: str | None) -> dict[str, int] | None:
    """``"farmland=1,forest=2"`` -> {"farmland": 1, "forest": 2}."""
    if not text:
        return None
    out: dict[str, int] = {}
    for part in text.split(","):
        if "=" not in part:
            raise ChipError(f"--value-map entry {part!r} is not NAME=VALUE")
        k, v = part.split("=", 1)
        try:
            out[k.strip()] = int(v)
        except ValueError:
            raise ChipError(f"--value-map value {v!r} for {k!r} is not an integer") from None
    return out


#: Class id written where the scene has no data (and so no prediction), in uint8 class rasters.
CLASS_NODATA = 255


#: The same in uint16 class rasters, for models with class values above 254.
CLASS_NODATA_16 = 65535


def class_raster_dtype(values: Sequence[int]) -> tuple[str, int]:
    """``(dtype, nodata)`` of the class raster for these class values: uint8 with nodata 255 while
    every value fits in 0..254, else uint16 with nodata 65535. The one place this is decided
    (sinks, the worker's argmax lookup, engines)."""
    top = max((int(v) for v in values), default=0)
    return ("uint8", CLASS_NODATA) if top < CLASS_NODATA else ("uint16", CLASS_NODATA_16)


@dataclass(frozen=True)
class ClassInfo:
    """A class as written into the output raster: value, name and RGB colour."""

    value: int
    name: str
    color: tuple[int, int, int]


def class_tags(classes: Sequence[ClassInfo], model_name: str) -> dict[str, str]:
    """Metadata that names the classes, readable by gdalinfo and QGIS."""
    return {
        "GEOSEG_CLASSES": json.dumps([{"value": c.value, "name": c.name} for c in classes]),
        "GEOSEG_MODEL": model_name,
        **{f"CLASS_{c.value}": c.name for c in classes},
    }


def read_class_names(src: Any) -> dict[int, str]:
    """Class value -> name from the metadata :func:`class_tags` writes (empty if absent)."""
    try:
        return {
            int(c["value"]): str(c["name"])
            for c in json.loads(src.tags().get("GEOSEG_CLASSES", "[]"))
        }
    except (ValueError, KeyError, TypeError):
        return {}
