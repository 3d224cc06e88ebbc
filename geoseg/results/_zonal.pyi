"""Types of the compiled counting kernel (geoseg/results/_zonal.c)."""

from typing import Any

def count_strip(
    data: Any,
    valid: Any | None,
    lut: Any,
    height: int,
    width: int,
    slots: int,
    x0: Any,
    y0: Any,
    x1: Any,
    y1: Any,
    zone: Any,
    other: Any,
    zones: int,
    areas: Any | None,
    pix: Any,
    area: Any | None,
    tot_pix: Any | None,
    tot_area: Any | None,
) -> None: ...
