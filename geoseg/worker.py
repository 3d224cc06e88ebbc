"""What runs on a Dask worker: read a row of tiles -> run the network -> keep the cores.

A task (:class:`TileTask`) carries a scene path, band list, tile windows and the model's path
and content hash, never arrays or weights. The worker opens the scene itself, loads the model
once per content hash and keeps it (:func:`worker_model`; the file reaches workers through
:class:`geoseg.cluster.ModelPlugin`), and halves its batch for good after CUDA runs out of
memory (:func:`batch_limit`).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import stat
import tempfile
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from geoseg.errors import CheckpointError, ModelError, OptionError, TileError, first_line
from geoseg.infer import InferenceOptions
from geoseg.io import CLASS_NODATA, READ_ENV, no_georef_warning, read_mirrored
from geoseg.scenes import describe
from geoseg.stitch import TileResult, crop_core, to_result
from geoseg.tiling import Tile

_MODELS: dict[tuple[str, str, bool, bool], Any] = {}
_LOCK = threading.Lock()
_BATCH_LIMITS: dict[tuple[str, str], int] = {}
log = logging.getLogger("geoseg")


@dataclass(frozen=True)
class TileTask:
    """What one Dask task needs: small, picklable, and the same on every run (deterministic keys)."""

    scene: str
    bands: tuple[int, ...]
    tiles: tuple[Tile, ...]
    model_path: str
    model_sha256: str
    device: str
    batch_size: int
    probabilities: bool
    keep_logits: bool = False
    torch_threads: int | None = None
    options: InferenceOptions = InferenceOptions()
    skip_errors: bool = False


def run_tile_task(task: TileTask) -> list[TileResult]:
    """Read the task's tiles (mirrored at scene edges), run the network, keep the cores.

    Any failure becomes a :class:`TileError` naming the scene and the window; with
    ``skip_errors`` the tiles are retried one by one and those that still fail come back as
    nodata results carrying the error.
    """
    try:
        return _run_tile_task(task)
    except (CheckpointError, ModelError, OptionError, MemoryError):
        raise  # not this tile's fault: every tile would fail the same way
    except Exception as exc:
        if task.skip_errors:
            return _tile_by_tile(task)
        raise TileError(
            f"{describe(task.scene)}: {tiles_text(task)} failed ({type(exc).__name__}: "
            f"{first_line(str(exc))}); --on-error skip writes nodata there instead"
        ) from exc


def _tile_by_tile(task: TileTask) -> list[TileResult]:
    """Each tile of a failed task on its own; those that fail again become nodata results."""
    results: list[TileResult] = []
    for tile in task.tiles:
        single = replace(task, tiles=(tile,), skip_errors=False)
        try:
            results.extend(run_tile_task(single))
        except TileError as exc:
            results.extend(nodata_results((tile,), str(exc)))
    return results


def nodata_results(tiles: Sequence[Tile], error: str) -> list[TileResult]:
    """Results that write nodata over ``tiles``' cores and say why (``on_error="skip"``)."""
    return [TileResult(t.core, np.full((int(t.core.height), int(t.core.width)), CLASS_NODATA, np.uint8),
                       error=error) for t in tiles]


def tiles_text(task: TileTask) -> str:
    """Where a task's tiles are, for messages: rows and columns of their cores."""
    first, last = task.tiles[0].core, task.tiles[-1].core
    return (f"tiles at rows {first.row_off}-{last.row_off + last.height}, columns "
            f"{first.col_off}-{last.col_off + last.width}")


def _run_tile_task(task: TileTask) -> list[TileResult]:
    import rasterio
    import torch

    from geoseg.infer import forward, normalize, resolve_device

    set_torch_threads(task.torch_threads)
    device = resolve_device(task.device)
    opts = task.options
    model = worker_model(task.model_path, task.model_sha256, str(device), opts.channels_last, opts.compile)
    cfg = model.config
    values = [c.value for c in cfg.classes]
    first, last = task.tiles[0], task.tiles[-1]
    with rasterio.Env(**READ_ENV):
        with no_georef_warning():
            src = rasterio.open(task.scene)
        with src:
            width = last.input_col + last.input_width - first.input_col
            data, valid = read_mirrored(
                src, task.bands, first.input_row, first.input_col, first.input_height, width
            )
    x = normalize(data, valid, cfg.mean, cfg.std)
    del data
    results: list[TileResult] = []
    start = 0
    while start < len(task.tiles):
        size = batch_limit(task.model_sha256, str(device), task.batch_size)
        chunk = task.tiles[start : start + size]
        offsets = [t.input_col - first.input_col for t in chunk]
        batch = np.stack([x[:, :, o : o + t.input_width] for o, t in zip(offsets, chunk)])
        try:
            logits = forward(model.network, batch, device, opts)
        except torch.cuda.OutOfMemoryError:
            if size == 1:
                raise
            del batch
            torch.cuda.empty_cache()
            lower_batch_limit(task.model_sha256, str(device), size)
            continue
        for t, o, lg in zip(chunk, offsets, logits):
            core = crop_core(lg, t)
            r, c = t.core_offset
            v = valid[r : r + core.shape[1], o + c : o + c + core.shape[2]]
            results.append(to_result(core, v, t, values, task.probabilities, task.keep_logits))
        del batch, logits
        start += len(chunk)
    return results


# --- the model cache: one loaded model per content hash, device and tuning, per process -----


def model_cache_dir() -> Path:
    """Where a worker keeps model files it received, named by content hash: one folder per user,
    readable by that user only (0700), so no other user can swap a file in it or be blocked by it."""
    folder = Path(tempfile.gettempdir()) / f"geoseg-models-{os.getuid()}"
    with contextlib.suppress(FileExistsError):
        folder.mkdir(mode=0o700)
    st = os.lstat(folder)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        raise CheckpointError(
            f"the model cache {folder} is not a folder of this user; remove it (another user or a "
            "symlink is in the way) and run again"
        )
    if stat.S_IMODE(st.st_mode) & 0o077:
        os.chmod(folder, 0o700)
    return folder


def worker_model(
    path: str, sha256: str, device: str, channels_last: bool = False, compile: bool = False,
) -> Any:
    """The loaded model with content hash ``sha256`` on ``device`` in this process, loaded once:
    from ``path`` when that file is here and has that hash, else from the model cache."""
    key = (sha256, device, channels_last, compile)
    model = _MODELS.get(key)
    if model is not None:
        return model
    with _LOCK:
        model = _MODELS.get(key)
        if model is None:
            model = _load(path, sha256, device)
            if channels_last:
                import torch

                model.network = model.network.to(memory_format=torch.channels_last)
            if compile:
                model.network = _compiled(model.network)
            _MODELS[key] = model
    return model


def _load(path: str, sha256: str, device: str) -> Any:
    """Load from ``path`` or the cache, whichever holds bytes with that hash; the bytes hashed
    are the bytes loaded, so a file swapped after the check cannot be loaded."""
    from geoseg.models.checkpoint import load_model

    for candidate in (Path(path), model_cache_dir() / f"{sha256}.pt"):
        try:
            data = candidate.read_bytes()
        except OSError:
            continue
        if hashlib.sha256(data).hexdigest() == sha256:
            model = load_model(candidate, device=device, data=data)
            model.path = path
            return model
    raise CheckpointError(
        f"model {path} is not on this worker, or differs from the client's copy (content hash "
        "mismatch); give every worker the same file"
    )


def _compiled(network: Any) -> Any:
    """``torch.compile`` the network; where compiling fails (no C compiler, unsupported op) the
    first call says so once and the network runs eagerly from then on."""
    import torch

    class CompiledOrEager(torch.nn.Module):
        def __init__(self, net: torch.nn.Module) -> None:
            super().__init__()
            self.net = net
            self.compiled: Any = torch.compile(net, dynamic=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.compiled is not None:
                try:
                    return self.compiled(x)  # type: ignore[no-any-return]
                except Exception as exc:  # noqa: BLE001 - compilation is an optimisation only
                    log.warning("geoseg: torch.compile failed (%s); running eagerly", first_line(exc))
                    self.compiled = None
            return self.net(x)  # type: ignore[no-any-return]

    return CompiledOrEager(network).eval()


# --- per-process limits ----------------------------------------------------------------------


def batch_limit(sha256: str, device: str, requested: int) -> int:
    """The batch size this worker uses for a model: ``requested``, or less after CUDA ran out of memory."""
    return min(requested, _BATCH_LIMITS.get((sha256, device), requested))


def lower_batch_limit(sha256: str, device: str, failed: int) -> int:
    """Halve the batch after an out-of-memory error; logged once per model and size."""
    new = max(1, failed // 2)
    key = (sha256, device)
    if _BATCH_LIMITS.get(key, failed + 1) > new:
        _BATCH_LIMITS[key] = new
        log.warning("geoseg: %s ran out of memory at batch %d; using batch %d from now on", device, failed, new)
    return new


def set_torch_threads(n: int | None) -> None:
    """Limit torch's intra-op threads in this process (once), so workers do not oversubscribe."""
    if not n:
        return
    import torch

    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
