"""The per-user model cache stays bounded: entries used are marked, the least recently used go
first once it is over its size, and nothing used in the last hour or being written is removed."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable

import pytest

from geoseg import model_cache
from geoseg.model_cache import cache_hit, model_cache_dir, prune_model_cache


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr("tempfile.gettempdir", lambda: str(tmp_path))
    return model_cache_dir()


def entry(folder: Path, name: str, size: int, age_s: float) -> Path:
    p = folder / name
    p.write_bytes(b"x" * size)
    t = time.time() - age_s
    os.utime(p, (t, t))
    return p


def test_prune_removes_least_recently_used_beyond_the_budget(cache: Path) -> None:
    day = 86400
    oldest = entry(cache, "a.onnx", 400, 5 * day)
    old = entry(cache, "b.pt", 400, 3 * day)
    newer = entry(cache, "c.onnx", 400, 2 * day)
    recent = entry(cache, "d.onnx", 400, 60)  # used a minute ago: may be opened right now
    kept = entry(cache, "e.onnx", 400, 10 * day)  # the entry just written
    stale = entry(cache, ".a.onnx.x1.part.onnx", 10, 2 * day)  # left by a killed process
    writing = entry(cache, ".b.pt.x2.part", 10, 10)
    removed = prune_model_cache(keep=kept, budget=1300)
    assert set(removed) == {oldest, old, stale}
    assert sorted(p.name for p in cache.iterdir()) == sorted(
        p.name for p in (newer, recent, kept, writing)
    )
    assert prune_model_cache(budget=10**9) == []


def test_a_cache_hit_marks_the_entry_used(cache: Path) -> None:
    used = entry(cache, "used.onnx", 100, 5 * 86400)
    other = entry(cache, "other.onnx", 100, 4 * 86400)
    assert cache_hit(used) and not cache_hit(cache / "missing.onnx")
    assert prune_model_cache(budget=150) == [other]


def test_conversions_and_received_models_go_through_the_cache(
    cache: Path, model_factory: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from geoseg.dask.plugin import ModelPlugin
    from geoseg.models.checkpoint import file_sha256
    from geoseg.models.onnx import cached_onnx

    model = model_factory(3, 4)
    sha = file_sha256(model)
    stale = entry(cache, "0" * 64 + ".pt", 1000, 30 * 86400)  # another model, long unused
    monkeypatch.setattr(model_cache, "MODEL_CACHE_BYTES", 1)
    converted = cached_onnx(str(model), sha)  # written, then the cache pruned
    assert converted.is_file() and not stale.exists()
    t = time.time() - 7 * 86400
    os.utime(converted, (t, t))
    assert cached_onnx(str(model), sha) == converted  # a hit
    assert time.time() - converted.stat().st_mtime < 60
    ModelPlugin(sha, model.read_bytes()).setup()
    assert (cache / f"{sha}.pt").read_bytes() == model.read_bytes() and converted.is_file()
