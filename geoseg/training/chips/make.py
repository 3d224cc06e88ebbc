"""Making chips: check the pairs, plan every image's windows, run the chip tasks into a staging
folder, then move the chips in and write the manifest, all or nothing."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Sequence

import rasterio
from rasterio.warp import transform_bounds

from geoseg.classes import (
    IGNORE_VALUE,
    ClassSpec,
)
from geoseg.errors import ChipError, ChipsLockedError, FolderLockedError
from geoseg.fs import (
    LOCK_NAME,
    check_distinct_paths,
    folder_lock,
    remove_quietly,
)
from geoseg.options import ChipOptions
from geoseg.raster.read import open_scene, select_bands
from geoseg.training.chips.cut import ChipOutcome, ChipTask, run_chip_task
from geoseg.training.chips.manifest import (
    INDEX,
    MANIFEST,
    ChipRun,
    ChipsSummary,
    image_id,
    image_of_chip,
    load_manifest,
    resolved_path,
    update_manifest,
)
from geoseg.training.chips.plan import (
    LabelSource,
    _block_classes,
    auto_chip_size,
    auto_split_block,
    label_source,
    plan_windows,
)

#: Prefix of the hidden folder a run writes its chips into before committing them.
STAGING = ".geoseg-chip-staging-"


def _class_spec(spec: "ClassSpec | None") -> dict[int, tuple[str, tuple[int, int, int] | None]]:
    """Names (and optional colours) per class value, from either form the API accepts."""
    return {
        int(v): (x, None) if isinstance(x, str) else (x[0], x[1]) for v, x in (spec or {}).items()
    }


def _check_overlap(image_path: str, img_info: Any, label: LabelSource) -> tuple[int, int]:
    """Raise when the labels' footprint misses the image; else the height and width (pixels)
    of the part of the image the labels cover."""
    import pyogrio

    if img_info.crs is None:
        return img_info.height, img_info.width
    if label.kind == "raster":
        with rasterio.open(label.path) as src:
            if src.crs is None:
                raise ChipError(f"label raster {label.path} has no CRS; georeference it first")
            lb = transform_bounds(src.crs, img_info.crs, *src.bounds, densify_pts=21)
    else:
        info = pyogrio.read_info(label.path, force_total_bounds=True)
        if info["crs"] is None:
            raise ChipError(f"vector labels {label.path} have no CRS; set one (ogr2ogr -a_srs)")
        lb = transform_bounds(info["crs"], img_info.crs, *info["total_bounds"], densify_pts=21)
    t = img_info.transform
    ib = (t.c, t.f + t.e * img_info.height, t.c + t.a * img_info.width, t.f)
    if lb[0] >= ib[2] or lb[2] <= ib[0] or lb[1] >= ib[3] or lb[3] <= ib[1]:
        raise ChipError(
            f"labels {Path(label.path).name} do not overlap image {Path(image_path).name}; "
            "check that both cover the same place and carry the right CRS"
        )
    w = (min(lb[2], ib[2]) - max(lb[0], ib[0])) / abs(t.a)
    h = (min(lb[3], ib[3]) - max(lb[1], ib[1])) / abs(t.e)
    return max(1, min(img_info.height, int(h))), max(1, min(img_info.width, int(w)))


def make_chips(
    pairs: Sequence[tuple[str, str]],
    out_dir: str | os.PathLike[str],
    options: ChipOptions | None = None,
    *,
    workers: int | None = None,
    scheduler: str | None = None,
    client: Any = None,
    **keywords: Any,
) -> ChipsSummary:
    """Cut (image, labels) pairs into chips in ``out_dir``; a folder that exists grows.

    ``options`` (:class:`geoseg.options.ChipOptions`), with any of its fields given as
    ``keywords`` replacing its own (``make_chips(pairs, out, size=32)``). ``size`` and
    ``split_block`` default to values that fit the first scene's labelled area. Re-chipping an
    image already in the folder replaces its chips and statistics. The run is all or nothing:
    chips are written into a hidden staging folder and moved in at the end, so a failed or
    interrupted run leaves the folder exactly as it was. ``stratify=False`` draws validation and
    test blocks at random (:func:`geoseg.training.chips.plan.choose_split`), as chip did before.
    """
    opts = ChipOptions.from_keywords(options, **keywords)
    if not pairs:
        raise ChipError("give at least one IMAGE LABELS pair")
    ignore = IGNORE_VALUE if opts.ignore_value is None else int(opts.ignore_value)
    out = Path(out_dir)
    check_distinct_paths(
        {
            f"{kind} of pair {i + 1}": path
            for i, pair in enumerate(pairs)
            for kind, path in zip(("image", "labels"), pair)
        },
        {"chips manifest": out / MANIFEST, "chips index": out / INDEX},
        {"the chips image folder": out / "images", "the chips label folder": out / "labels"},
    )
    if out.exists() and not out.is_dir():
        raise ChipError(f"chips folder {out} is a file; give a folder")
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        with contextlib.ExitStack() as stack:
            try:  # one chip run per folder, and none while a batch job or predict writes there
                stack.enter_context(
                    folder_lock(out, exclusive=True, what="chip run", holder="geoseg chip")
                )
            except FolderLockedError as exc:
                raise ChipsLockedError(str(exc)) from None
            return _make_chips_locked(pairs, out, opts, ignore, workers, scheduler, client)
    except BaseException:
        if created:
            remove_quietly(out / LOCK_NAME)
            with contextlib.suppress(OSError):
                out.rmdir()
        raise


def _make_chips_locked(
    pairs: Sequence[tuple[str, str]],
    out: Path,
    opts: ChipOptions,
    ignore: int,
    workers: int | None,
    scheduler: str | None,
    client: Any,
) -> ChipsSummary:
    """``make_chips`` while holding the folder's lock."""
    size, class_names, min_labeled, max_nodata = (
        opts.size,
        opts.class_spec,
        opts.min_labeled,
        opts.max_nodata,
    )
    existing = load_manifest(out) if (out / MANIFEST).exists() else None
    for stale in out.glob(f"{STAGING}*"):  # left by a killed run (we hold the lock)
        shutil.rmtree(stale, ignore_errors=True)
    for name in (MANIFEST, INDEX):
        remove_quietly(*out.glob(f".{name}.*.part*"))
    if existing is not None and size is None:
        size = int(existing["size"])
    scenes = []
    band_names: list[str] | None = None
    dtype = None
    for image, labels in pairs:
        info = open_scene(image)
        band_list = select_bands(opts.bands, info.count)
        names = [info.descriptions[b - 1] or f"band{b}" for b in band_list]
        if band_names is None:
            band_names, dtype = names, info.dtype
        elif len(names) != len(band_names):
            raise ChipError(f"{image} gives {len(names)} bands, the first image {len(band_names)}")
        src = label_source(
            labels,
            opts.label_field,
            opts.value_mapping,
            opts.background,
            opts.label_nodata_is_class,
        )
        area = _check_overlap(image, info, src)
        if size is None:
            size = auto_chip_size(*area)
        scenes.append((image, info, band_list, src, area))
    assert band_names is not None and size is not None
    stride = opts.stride or size
    tasks: list[ChipTask] = []
    run_ids: set[str] = set()
    for image, info, band_list, src, area in scenes:
        block = opts.split_block or auto_split_block(*area, size)
        classes = _block_classes(src, info, block, ignore)
        iid = image_id(image)
        # seeded by the image's file name, not its position or folder: an image re-chipped alone,
        # or a copy of it elsewhere, gets the same split
        windows = plan_windows(
            info.height,
            info.width,
            size,
            stride,
            block,
            opts.val_fraction,
            opts.test_fraction,
            f"{opts.seed}-{Path(resolved_path(image)).name}",
            classes,
            opts.stratify,
        )
        if iid in run_ids:
            raise ChipError(f"{image} is given twice; give each image once")
        run_ids.add(iid)
        for j in range(0, len(windows), 16):
            tasks.append(
                ChipTask(
                    image,
                    iid,
                    tuple(band_list),
                    src,
                    tuple(windows[j : j + 16]),
                    size,
                    ignore,
                    min_labeled,
                    max_nodata,
                    "",
                )
            )
    if existing is not None:
        _check_compatible(out, existing, band_names, size, ignore, class_names)
        redone = {image_of_chip(c["id"]) for c in existing["chips"]} & run_ids
        old = [c for c in existing["chips"] if image_of_chip(c["id"]) in redone]
        if any("band_sum" not in c for c in old):
            raise ChipError(
                f"chips folder {out} was made by an older geoseg and already holds chips of these "
                "images; chip them into a new folder"
            )

    stage = Path(tempfile.mkdtemp(prefix=STAGING, dir=out))
    try:
        (stage / "images").mkdir()
        (stage / "labels").mkdir()
        tasks = [ChipTask(**{**t.__dict__, "out_dir": str(stage)}) for t in tasks]
        outcomes = _run_tasks(tasks, client, scheduler, workers)
        kept = [o for o in outcomes if o.dropped is None]
        dropped: dict[str, int] = {}
        for o in outcomes:
            if o.dropped:
                dropped[o.dropped] = dropped.get(o.dropped, 0) + 1
        if not kept and existing is None:
            if min_labeled <= 0 and max_nodata >= 1:
                raise ChipError(
                    f"no labelled pixel in the labels (every pixel is nodata or the ignore value {ignore}); "
                    "check the labels and --ignore-value"
                )
            worst = max(dropped, key=dropped.get) if dropped else "none"  # type: ignore[arg-type]
            raise ChipError(
                f"no chip survived the filters ({', '.join(f'{k} removed {v}' for k, v in dropped.items())}); "
                f"relax {worst}" + (" or check --ignore-value" if worst == "--min-labeled" else "")
            )
        return _commit(
            out,
            stage,
            existing,
            run_ids,
            ChipRun(
                kept,
                dropped,
                band_names,
                str(dtype),
                size,
                ignore,
                _class_spec(class_names),
                opts.oversample_rare,
                [p[0] for p in pairs],
            ),
        )
    finally:
        _remove_stage(stage)


def _remove_stage(stage: Path, tries: int = 50) -> None:
    """Remove the staging folder, again while it is still there: after a failure, chip tasks
    already running on workers are not stopped by cancelling them and may still be writing a
    chip into it. They never create folders, so once it is gone nothing can reappear."""
    import time

    for _ in range(tries):
        shutil.rmtree(stage, ignore_errors=True)
        if not stage.exists():
            return
        time.sleep(0.1)


def _run_tasks(
    tasks: list[ChipTask], client: Any, scheduler: str | None, workers: int | None
) -> list[ChipOutcome]:
    """Run the chip tasks (bounded, in Dask); outcomes in task order, as planned. Work still
    pending when one task fails is cancelled."""
    from geoseg.dask.session import dask_session
    from geoseg.dask.stream import stream

    by_task: dict[int, list[ChipOutcome]] = {}
    with dask_session(client, scheduler, workers, processes=False) as session:
        limit = max(2, 2 * session.threads)
        for i, batch in stream(session.client, run_chip_task, tasks, limit, retries=0):
            by_task[i] = batch
    return [o for i in sorted(by_task) for o in by_task[i]]


def _check_compatible(
    out: Path,
    existing: dict[str, Any],
    band_names: list[str],
    size: int,
    ignore: int,
    class_names: "ClassSpec | None",
) -> None:
    """Refuse to add chips that do not fit a folder's bands, size, ignore value or class names."""
    if len(existing["bands"]) != len(band_names) or existing["size"] != size:
        raise ChipError(
            f"chips folder {out} was made for {len(existing['bands'])} bands "
            f"({','.join(existing['bands'])}) and size {existing['size']}; these images give "
            f"{len(band_names)} bands and size {size}: use another folder"
        )
    if existing["ignore_value"] != ignore:
        raise ChipError(
            f"chips folder {out} uses ignore value {existing['ignore_value']}, not {ignore}"
        )
    named = {
        int(c["value"]): c["name"]
        for c in existing["classes"]
        if not c["name"].startswith("class ")
    }
    clash = {
        v: (named[v], n)
        for v, (n, _) in _class_spec(class_names).items()
        if v in named and named[v] != n
    }
    if clash:
        v, (old, new) = next(iter(clash.items()))
        raise ChipError(
            f"chips folder {out} was made for other classes: value {v} is {old!r} there, "
            f"{new!r} here; use another folder or the same --classes"
        )


def _commit(
    out: Path,
    stage: Path,
    existing: dict[str, Any] | None,
    run_ids: set[str],
    run: ChipRun,
) -> ChipsSummary:
    """Move the staged chips in, replacing the chips of re-chipped images, and write the manifest
    last; on any failure, undo the moves so the folder is as it was."""
    (out / "images").mkdir(exist_ok=True)
    (out / "labels").mkdir(exist_ok=True)
    backup = stage / "previous"
    (backup / "images").mkdir(parents=True)
    (backup / "labels").mkdir()
    old_chips = existing["chips"] if existing is not None else []
    replaced = [c["id"] for c in old_chips if image_of_chip(c["id"]) in run_ids]
    saved: list[tuple[Path, Path]] = []
    moved: list[Path] = []
    try:
        for cid in replaced:
            for kind in ("images", "labels"):
                src = out / kind / f"{cid}.tif"
                if src.exists():
                    os.replace(src, backup / kind / src.name)
                    saved.append((backup / kind / src.name, src))
        for o in run.kept:
            for kind in ("images", "labels"):
                dst = out / kind / f"{o.id}.tif"
                os.replace(stage / kind / f"{o.id}.tif", dst)
                moved.append(dst)
        return update_manifest(out, existing, set(replaced), run)
    except BaseException:
        remove_quietly(*moved)
        for a, b in saved:
            os.replace(a, b)
        raise
