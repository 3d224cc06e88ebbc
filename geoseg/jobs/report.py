"""What a job run reports: one outcome per scene (or map), and the job's totals and table."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from geoseg.version import __version__


@dataclass
class SceneOutcome:
    scene: str
    status: str  # done | partial (written with nodata holes; redone next run) | skipped | failed
    error: str | None = None
    megapixels: float = 0.0
    seconds: float = 0.0
    outputs: list[str] = field(default_factory=list)
    class_areas: dict[str, Any] | None = None
    skipped_tiles: int = 0


@dataclass
class BatchReport:
    job: str
    outcomes: list[SceneOutcome]
    seconds: float

    def count(self, status: str) -> int:
        return sum(1 for o in self.outcomes if o.status == status)

    @property
    def megapixels(self) -> float:
        return sum(o.megapixels for o in self.outcomes if o.status in ("done", "partial"))

    def as_dict(self) -> dict[str, Any]:
        return {
            "job": self.job,
            "geoseg_version": __version__,
            "seconds": round(self.seconds, 3),
            "done": self.count("done"),
            "partial": self.count("partial"),
            "skipped": self.count("skipped"),
            "failed": self.count("failed"),
            "megapixels": round(self.megapixels, 3),
            "megapixels_per_second": round(self.megapixels / self.seconds, 4)
            if self.seconds
            else None,
            "scenes": [o.__dict__ for o in self.outcomes],
        }

    def table(self) -> str:
        lines = [f"{'status':<8} {'MP':>8} {'s':>7}  scene"]
        for o in self.outcomes:
            lines.append(
                f"{o.status:<8} {o.megapixels:>8.2f} {o.seconds:>7.1f}  {o.scene}"
                + (f"\n{'':<27}{o.error}" if o.error else "")
            )
        mps = self.megapixels / self.seconds if self.seconds else 0.0
        lines.append(
            f"done {self.count('done')}, partial {self.count('partial')}, skipped {self.count('skipped')}, failed {self.count('failed')}; "
            f"{self.megapixels:.2f} MP in {self.seconds:.1f} s ({mps:.3f} MP/s)"
        )
        return "\n".join(lines)
