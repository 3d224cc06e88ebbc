"""Dilation schedules and the hybrid dilated convolution (HDC) check, in pure Python.

A stack of dilated 3x3 convolutions with rates r_1..r_n sees its input only at sums of
multiples of the rates. If the rates share a factor g > 1, every output pixel depends on a
1-in-g sub-grid of its input ("gridding"); HDC (Wang et al. 2018) avoids this with sawtooth
schedules such as [1, 2, 5] whose rates have no common factor and satisfy M_2 <= K, where
M_n = r_n and M_i = max(M_{i+1} - 2 r_i, M_{i+1} - 2 (M_{i+1} - r_i), r_i) is the maximum
distance between two non-zero taps the stack can bridge.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Sequence

from geoseg.errors import GriddingWarning

#: Named schedules for a stage of three 3x3 convolutions.
NAMED_SCHEDULES: dict[str, tuple[int, ...]] = {"hdc": (1, 2, 5), "hdc-wide": (2, 3, 7)}


__all__ = [
    "GriddingWarning",
    "NAMED_SCHEDULES",
    "check_schedule",
    "hdc_max_distance",
    "resolve_schedule",
]


@dataclass(frozen=True)
class ScheduleCheck:
    """What :func:`check_schedule` found about one schedule."""

    rates: tuple[int, ...]
    common_factor: int
    max_gap: int
    kernel: int

    @property
    def grids(self) -> bool:
        return self.common_factor > 1 or self.max_gap > self.kernel

    def problem(self) -> str:
        if self.common_factor > 1:
            return f"its rates share the factor {self.common_factor}"
        if self.max_gap > self.kernel:
            return f"M_2 = {self.max_gap} exceeds the kernel size {self.kernel}"
        return ""


def hdc_max_distance(rates: Sequence[int]) -> int:
    """The HDC paper's M_2 for ``rates`` (M_1 for a single layer)."""
    m = int(rates[-1])
    for r in list(rates)[-2:0:-1]:
        m = max(m - 2 * r, m - 2 * (m - r), r)
    return m


def check_schedule(rates: Sequence[int], kernel: int = 3) -> ScheduleCheck:
    """Common factor and HDC distance of a schedule of dilation rates."""
    rs = tuple(int(r) for r in rates)
    if not rs or any(r < 1 for r in rs):
        raise ValueError(f"dilation rates must be positive integers, got {list(rates)}")
    factor = math.gcd(*rs) if len(rs) > 1 else 1
    return ScheduleCheck(rs, factor, hdc_max_distance(rs) if len(rs) > 1 else 1, kernel)


def resolve_schedule(spec: str | Sequence[int], length: int, *, stage: str) -> tuple[int, ...]:
    """Rates for a stage of ``length`` convolutions from a name or a list; warns if they grid.

    A schedule shorter than the stage repeats (HDC's sawtooth); longer is an error.
    """
    if isinstance(spec, str):
        key = spec.lower()
        if key not in NAMED_SCHEDULES:
            raise ValueError(
                f"unknown dilation schedule {spec!r}; give a list of rates or one of "
                f"{', '.join(NAMED_SCHEDULES)}"
            )
        base = NAMED_SCHEDULES[key]
    else:
        base = tuple(int(r) for r in spec)
    if not base or len(base) > length:
        raise ValueError(
            f"{stage} has {length} dilated convolutions; got {len(base)} rates {list(base)}"
        )
    rates = tuple(base[i % len(base)] for i in range(length))
    check = check_schedule(rates)
    if check.grids:
        warnings.warn(
            f"dilation schedule {list(rates)} for {stage} grids ({check.problem()}): outputs see "
            "their input through holes; use a sawtooth without a common factor, e.g. "
            "dilations='hdc' (1, 2, 5)",
            GriddingWarning,
            stacklevel=3,
        )
    return rates
