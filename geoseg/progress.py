"""One-line progress on stderr: tiles done (:class:`Progress`), or a batch job's scenes done /
running / left (:class:`JobProgress`); megapixels per second and time left in both."""

from __future__ import annotations

import sys
import threading
import time
from typing import TextIO


class Progress:
    """Redraws one stderr line at most every ``interval`` seconds; silent when ``quiet``."""

    def __init__(
        self,
        total: int,
        unit: str = "tiles",
        quiet: bool = False,
        stream: TextIO | None = None,
        interval: float = 0.2,
    ) -> None:
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
            ("\r" if self._tty else "")
            + f"[{bar}] {self.done}/{self.total} {self.unit}  {mps:6.2f} MP/s  "
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
    return (
        f"{s // 60:02d}:{s % 60:02d}"
        if s < 3600
        else f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
    )


class JobProgress:
    """One stderr line for a whole batch job: scenes done / running / left, megapixels per
    second and time left; thread-safe, since a job's scenes run at once in client threads.

    Time left is estimated from megapixels: scenes not yet opened count as the mean size of
    the scenes opened so far.
    """

    def __init__(
        self, scenes: int, quiet: bool = False, stream: TextIO | None = None, interval: float = 0.5
    ) -> None:
        self.scenes = scenes
        self.quiet = quiet
        self.stream = stream or sys.stderr
        self.start = time.perf_counter()
        self.done = self.partial = self.failed = self.skipped = self.running = 0
        self.pixels = 0  # written so far, over every scene
        self._planned: list[int] = []  # pixel counts of the scenes opened so far
        self._lock = threading.Lock()
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval = interval if self._tty else max(interval, 10.0)
        self._last = 0.0
        self._state: tuple[int, ...] | None = None

    def scene(self, pixels: int) -> Progress:
        """A scene's own progress (tiles written), which feeds this line and prints nothing."""
        with self._lock:
            self._planned.append(pixels)
        return _SceneProgress(self)

    def started(self) -> None:
        with self._lock:
            self.running += 1
        self._maybe_draw()

    def finished(self, status: str) -> None:
        """A scene ended as ``done``, ``partial``, ``failed`` or ``skipped`` (skipped scenes
        never started)."""
        with self._lock:
            if status != "skipped":
                self.running -= 1
            setattr(self, status, getattr(self, status) + 1)
        self._maybe_draw(force=True)

    def add_pixels(self, pixels: int) -> None:
        with self._lock:
            self.pixels += pixels
        self._maybe_draw()

    def message(self, text: str) -> None:
        """A line of its own (``--verbose`` scene lines), above the progress line."""
        if self.quiet:
            return
        with self._lock:
            self.stream.write(("\r\033[K" if self._tty else "") + text + "\n")
            self.stream.flush()
            self._state = None  # on a terminal the line was wiped: draw it again
        if self._tty:
            self._maybe_draw(force=True)

    def close(self) -> None:
        if not self.quiet:
            self._maybe_draw(force=True, changed_only=True)
            if self._tty:
                with self._lock:
                    self.stream.write("\n")
                    self.stream.flush()

    def line(self) -> str:
        """The progress line as it is drawn now."""
        with self._lock:
            return self._line(time.perf_counter())

    def _line(self, now: float) -> str:
        elapsed = max(now - self.start, 1e-9)
        finished = self.done + self.partial + self.failed + self.skipped
        left_scenes = self.scenes - finished - self.running
        opened = len(self._planned)
        mean = sum(self._planned) / opened if opened else 0.0
        total = sum(self._planned) + mean * max(self.scenes - self.skipped - opened, 0)
        frac = min(self.pixels / total, 1.0) if total else 0.0
        left = elapsed / frac - elapsed if frac > 0 else float("nan")
        failed = (f", {self.partial} partial" if self.partial else "") + (
            f", {self.failed} failed" if self.failed else ""
        )
        skipped = f", {self.skipped} skipped" if self.skipped else ""
        return (
            f"scenes: {self.done} done, {self.running} running, {left_scenes} left{failed}{skipped}  "
            f"{self.pixels / 1e6 / elapsed:.3g} MP/s  {_fmt(elapsed)} elapsed, {_fmt(left)} left"
        )

    def _maybe_draw(self, force: bool = False, changed_only: bool = False) -> None:
        if self.quiet:
            return
        with self._lock:
            now = time.perf_counter()
            state = (self.done, self.partial, self.failed, self.skipped, self.running, self.pixels)
            if (not force and now - self._last < self.interval) or (
                changed_only and state == self._state
            ):
                return
            self._last, self._state = now, state
            self.stream.write(
                ("\r\033[K" if self._tty else "") + self._line(now) + ("" if self._tty else "\n")
            )
            self.stream.flush()


class _SceneProgress(Progress):
    """A scene's tile progress inside a job: pixels go to the job's line, messages nowhere."""

    def __init__(self, job: JobProgress) -> None:
        super().__init__(0, quiet=True)
        self.job = job

    def update(self, n: int = 1, pixels: int = 0) -> None:
        self.done += n
        self.pixels += pixels
        self.job.add_pixels(pixels)
