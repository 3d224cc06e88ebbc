"""A one-line progress bar on stderr: tiles done, megapixels per second, time left."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """Redraws one stderr line at most every ``interval`` seconds; silent when ``quiet``."""

    def __init__(self, total: int, unit: str = "tiles", quiet: bool = False,
                 stream: TextIO | None = None, interval: float = 0.2) -> None:
        self.total = total
        self.unit = unit
        self.quiet = quiet
        self.stream = stream or sys.stderr
        self.interval = interval
        self.done = 0
        self.pixels = 0
        self.start = time.perf_counter()
        self._last = 0.0
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())
        if not self._tty:
            self.interval = max(interval, 10.0)

    def update(self, n: int = 1, pixels: int = 0) -> None:
        self.done += n
        self.pixels += pixels
        now = time.perf_counter()
        if not self.quiet and (now - self._last >= self.interval or self.done >= self.total):
            self._last = now
            self._draw(now)
            self._drawn_done = self.done

    def _draw(self, now: float) -> None:
        elapsed = max(now - self.start, 1e-9)
        frac = self.done / self.total if self.total else 1.0
        width = 24
        bar = "#" * int(frac * width) + "-" * (width - int(frac * width))
        mps = self.pixels / 1e6 / elapsed
        left = (elapsed / frac - elapsed) if frac > 0 else float("nan")
        self.stream.write(
            ("\r" if self._tty else "") + f"[{bar}] {self.done}/{self.total} {self.unit}  {mps:6.2f} MP/s  "
            f"{_fmt(elapsed)} elapsed, {_fmt(left)} left " + ("" if self._tty else "\n")
        )
        self.stream.flush()

    def close(self) -> None:
        if not self.quiet:
            if getattr(self, "_drawn_done", -1) != self.done:
                self._draw(time.perf_counter())
            if self._tty:
                self.stream.write("\n")
            self.stream.flush()

    def message(self, text: str) -> None:
        if not self.quiet:
            self.stream.write(text + "\n")
            self.stream.flush()


def _fmt(seconds: float) -> str:
    if seconds != seconds:  # NaN
        return "--:--"
    s = int(round(seconds))
    return f"{s // 60:02d}:{s % 60:02d}" if s < 3600 else f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
