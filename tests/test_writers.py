"""Writers on the workers: cells compress their own tiles and overviews, the client assembles
a valid COG from those bytes; ``--cells`` folders (VRT mosaic, STAC, resume), ``--confidence``,
``--compress``, the umask, and failed writes as one line with nothing partial left."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import rasterio
from rio_cogeo.cogeo import cog_validate

import geoseg
from geoseg.errors import GeosegError, OptionError, OutputError
from geoseg.prediction import cells as cells_module
from geoseg.prediction.destinations import CELLS_MARKER
from geoseg.raster.blocks import reduce2

H, W = 1100, 1300  # two overview levels (2, 4)


def read(path: Path | str, out_shape: tuple[int, int, int] | None = None) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(out_shape=out_shape)


@pytest.fixture(scope="module")
def big_scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.conftest import random_scene, write_raster

    rng = np.random.default_rng(7)
    arr = random_scene(rng, 3, H, W, "uint8")
    arr[:, 300:420, 500:800] = 0  # nodata (the scene's nodata is 0): classes nodata there
    return write_raster(tmp_path_factory.mktemp("scene") / "scene.tif", arr, nodata=0)


def predict(
    scene: Path, out: Path | str, model: Path, client: Any, **kw: Any
) -> geoseg.PredictResult:
    return geoseg.predict(str(scene), str(out), model=str(model), client=client, tile=128, **kw)


def brute_mode(block: np.ndarray, nodata: int) -> int:
    """Mode of a 2 x 2 block's valid values, the first in row-major order on a tie."""
    values = [int(v) for v in block.ravel() if v != nodata]
    if not values:
        return nodata
    counts = Counter(values)
    top = max(counts.values())
    return next(v for v in values if counts[v] == top)


def test_single_cog_from_worker_tiles_is_valid_and_its_overviews_reduce_the_classes(
    tmp_path: Path,
    big_scene: Path,
    model_factory: Callable[..., Path],
    dask_client: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = model_factory(in_channels=3)
    out = tmp_path / "classes.tif"
    probs = tmp_path / "probs.tif"
    conf = tmp_path / "conf.tif"
    # cells of 1024 px: one overview level made on the workers, the next by the client
    monkeypatch.setattr(cells_module, "CELL_BYTES", 1)
    result = predict(big_scene, out, model, dask_client, probabilities=probs, confidence=conf)
    assert result.cells == 4 and result.confidence == conf
    for path in (out, probs, conf):
        valid, errors, _ = cog_validate(str(path))
        assert valid, (path, errors)
        with rasterio.open(path) as src:
            assert src.overviews(1) == [2, 4]
            assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
            assert src.tags(ns="IMAGE_STRUCTURE")["COMPRESSION"] == "DEFLATE"
    classes = read(out)
    assert (classes[0, 300:420, 500:800] == 255).all()
    level1 = read(out, (1, H // 2 + H % 2, W // 2 + W % 2))[0]
    for r, c in [(0, 0), (160, 260), (200, 300), (549, 649), (100, 649)]:
        assert level1[r, c] == brute_mode(classes[0, 2 * r : 2 * r + 2, 2 * c : 2 * c + 2], 255), (
            r,
            c,
        )
    level2 = read(out, (1, -(-H // 4), -(-W // 4)))[0]
    np.testing.assert_array_equal(level2, reduce2(level1, "mode", 255))
    p = read(probs)
    np.testing.assert_array_equal(read(conf)[0], np.where(classes[0] == 255, 0, p.max(axis=0)))
    assert not list(tmp_path.glob(".*")), "temporary files left behind"

    # the same scene in one cell of 2048 px (every level on the worker): the same rasters
    monkeypatch.setattr(cells_module, "CELL_BYTES", 2**30)
    again = tmp_path / "again.tif"
    predict(big_scene, again, model, dask_client, probabilities=tmp_path / "p2.tif")
    for shape in [None, (1, 550, 650), (1, 275, 325)]:
        np.testing.assert_array_equal(read(again, shape), read(out, shape))
    np.testing.assert_array_equal(read(tmp_path / "p2.tif"), p)


def test_cells_folder_mosaic_equals_the_single_cog_and_a_rerun_keeps_the_cells(
    tmp_path: Path,
    big_scene: Path,
    model_factory: Callable[..., Path],
    dask_client: Any,
) -> None:
    model = model_factory(in_channels=3)
    single = tmp_path / "single.tif"
    predict(big_scene, single, model, dask_client, probabilities=tmp_path / "sp.tif")
    folder = tmp_path / "cells"
    result = predict(big_scene, folder, model, dask_client, cells=512, probabilities="yes")
    assert result.cells == 3 * 3 and result.cells_kept == 0
    np.testing.assert_array_equal(read(folder / "classes.vrt"), read(single))
    np.testing.assert_array_equal(read(folder / "probabilities.vrt"), read(tmp_path / "sp.tif"))
    with rasterio.open(folder / "classes.vrt") as vrt, rasterio.open(single) as cog:
        assert (vrt.crs, vrt.transform, vrt.nodata) == (cog.crs, cog.transform, cog.nodata)
        assert vrt.colormap(1)[1] == cog.colormap(1)[1]
        assert vrt.tags()["GEOSEG_CLASSES"] == cog.tags()["GEOSEG_CLASSES"]
    cell = folder / "classes" / "R001C002.tif"
    assert cog_validate(str(cell))[0]
    collection = json.loads((folder / "collection.json").read_text())
    items = [link for link in collection["links"] if link["rel"] == "item"]
    assert len(items) == 9
    item = json.loads((folder / "items" / "R001C002.json").read_text())
    assert item["assets"]["classes"]["href"] == "../classes/R001C002.tif"
    assert item["properties"]["proj:shape"] == [512, 276]
    assert (folder / CELLS_MARKER).exists()

    # a rerun keeps every finished cell; a lost cell is made again
    stamp = cell.stat().st_mtime_ns
    (folder / "classes" / "R000C000.tif").unlink()
    rerun = predict(big_scene, folder, model, dask_client, cells=512, probabilities="yes")
    assert (rerun.cells, rerun.cells_kept) == (1, 8)
    assert cell.stat().st_mtime_ns == stamp
    np.testing.assert_array_equal(read(folder / "classes.vrt"), read(single))
    # other options: the folder's cells are another run's
    with pytest.raises(OutputError, match="another run"):
        predict(big_scene, folder, model, dask_client, cells=512, probabilities="yes", tta="flip")


def test_cells_bad_input_fails_before_any_work(
    tmp_path: Path,
    big_scene: Path,
    model_factory: Callable[..., Path],
    dask_client: Any,
) -> None:
    model = model_factory(in_channels=3)
    with pytest.raises(OptionError, match="smaller than a tile"):
        predict(big_scene, tmp_path / "a", model, dask_client, cells=64)
    with pytest.raises(OptionError, match="multiple of the model's output stride"):
        predict(big_scene, tmp_path / "b", model, dask_client, cells=1001)
    a_file = tmp_path / "file.tif"
    a_file.write_bytes(b"x")
    with pytest.raises(OutputError, match="is a file"):
        predict(big_scene, a_file, model, dask_client, cells=512)
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="did not write"):
        predict(big_scene, theirs, model, dask_client, cells=512, overwrite=True)
    # a scene inside the folder of cells (a cell of an earlier run) would be its own output
    ours = tmp_path / "ours"
    predict(big_scene, ours, model, dask_client, cells=1024)
    with pytest.raises(OutputError, match="inside output folder"):
        predict(
            ours / "classes" / "R000C000.tif", ours, model, dask_client, cells=1024, overwrite=True
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.tif", "ours", "theirs"]


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_published_outputs_follow_the_umask(
    tmp_path: Path,
    scene_factory: Callable[..., Path],
    model_factory: Callable[..., Path],
    dask_client: Any,
    umask: int,
) -> None:
    scene = scene_factory(bands=3, height=96, width=120)
    model = model_factory(in_channels=3)
    old = os.umask(umask)
    try:
        predict(
            scene,
            tmp_path / "c.tif",
            model,
            dask_client,
            probabilities=tmp_path / "p.tif",
            vector=tmp_path / "v.gpkg",
        )
        predict(scene, tmp_path / "cells", model, dask_client, cells=512)
    finally:
        os.umask(old)
    published = [
        tmp_path / "c.tif",
        tmp_path / "p.tif",
        tmp_path / "v.gpkg",
        tmp_path / "cells" / "classes.vrt",
        tmp_path / "cells" / "classes" / "R000C000.tif",
        tmp_path / "cells" / "collection.json",
    ]
    for path in published:
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask, path


@pytest.mark.parametrize("codec", ["zstd", "lzw", "none"])
def test_compress_option_writes_that_codec(
    tmp_path: Path,
    scene_factory: Callable[..., Path],
    model_factory: Callable[..., Path],
    dask_client: Any,
    codec: str,
) -> None:
    scene = scene_factory(bands=3, height=96, width=120)
    model = model_factory(in_channels=3)
    base = tmp_path / "deflate.tif"
    predict(scene, base, model, dask_client)
    out = tmp_path / f"{codec}.tif"
    predict(
        scene,
        out,
        model,
        dask_client,
        compress=codec,
        compress_level=3 if codec == "zstd" else None,
    )
    with rasterio.open(out) as src:
        assert src.tags(ns="IMAGE_STRUCTURE").get("COMPRESSION", "NONE") == codec.upper()
    np.testing.assert_array_equal(read(out), read(base))


def test_a_full_disk_is_one_line_and_leaves_the_previous_output(
    tmp_path: Path,
    scene_factory: Callable[..., Path],
    model_factory: Callable[..., Path],
) -> None:
    """A real failing write: the process may not write files past 64 kB (RLIMIT_FSIZE)."""
    scene = scene_factory(bands=3, height=400, width=400)
    model = model_factory(in_channels=3)
    # the model's caches (ONNX conversion, fused graph, tile measurements) are written first, by
    # the same run without the limit: those writes are not the one under test
    geoseg.predict(
        str(scene), str(tmp_path / "warm.tif"), model=str(model), probabilities=tmp_path / "wp.tif"
    )
    (tmp_path / "wp.tif").unlink()
    (tmp_path / "warm.tif").unlink()
    out = tmp_path / "classes.tif"
    out.write_bytes(b"the previous output")
    code = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))\n"
        "from geoseg.cli.main import main\n"
        "sys.exit(main())\n"
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            "predict",
            str(scene),
            "-o",
            str(out),
            "--model",
            str(model),
            "--probabilities",
            str(tmp_path / "p.tif"),
            "--overwrite",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "cannot write" in lines[0] and str(tmp_path) in lines[0], proc.stderr
    assert out.read_bytes() == b"the previous output"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_s3_outputs_single_and_cells(
    tmp_path: Path,
    scene_factory: Callable[..., Path],
    model_factory: Callable[..., Path],
    dask_client: Any,
    s3_bucket: str,
) -> None:
    from geoseg.objectstore.client import gdal_s3_env
    from geoseg.objectstore.reads import exists, list_keys
    from geoseg.objectstore.urls import to_vsis3

    scene = scene_factory(bands=3, height=150, width=170)
    model = model_factory(in_channels=3)
    local = tmp_path / "local.tif"
    predict(scene, local, model, dask_client, confidence=tmp_path / "k.tif")
    url = f"{s3_bucket}/run/classes.tif"
    result = predict(scene, url, model, dask_client, confidence=f"{s3_bucket}/run/conf.tif")
    assert result.output == url
    with rasterio.Env(**gdal_s3_env()):
        np.testing.assert_array_equal(read(to_vsis3(url)), read(local))
        np.testing.assert_array_equal(
            read(to_vsis3(f"{s3_bucket}/run/conf.tif")), read(tmp_path / "k.tif")
        )
    with pytest.raises(OutputError, match="exists"):
        predict(scene, url, model, dask_client)
    # a folder of cells on the object store, read back through its mosaic
    prefix = f"{s3_bucket}/cells/"
    predict(scene, prefix, model, dask_client, cells=512)
    keys = set(list_keys(prefix))
    assert f"{prefix}classes/R000C000.tif" in keys and f"{prefix}classes.vrt" in keys
    assert f"{prefix}collection.json" in keys and f"{prefix}{CELLS_MARKER}" in keys
    with rasterio.Env(**gdal_s3_env()):
        np.testing.assert_array_equal(read(to_vsis3(prefix + "classes.vrt")), read(local))
    again = predict(scene, prefix, model, dask_client, cells=512)
    assert again.cells_kept == 1 and again.cells == 0
    # a scene read from the object store gives the same classes
    from geoseg.objectstore.uploads import upload_file

    upload_file(scene, f"{s3_bucket}/in/scene.tif")
    from_s3 = tmp_path / "from-s3.tif"
    predict(f"{s3_bucket}/in/scene.tif", from_s3, model, dask_client)  # type: ignore[arg-type]
    np.testing.assert_array_equal(read(from_s3), read(local))
    assert not exists(f"{s3_bucket}/nothing.tif")


def test_s3_failure_midway_leaves_no_object(
    tmp_path: Path,
    scene_factory: Callable[..., Path],
    model_factory: Callable[..., Path],
    dask_client: Any,
    s3_bucket: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import geoseg.objectstore.uploads as store
    from geoseg.objectstore.reads import exists

    scene = scene_factory(bands=3, height=96, width=120)
    model = model_factory(in_channels=3)
    real = store.upload_fileobj
    calls = []

    def fail_second(fileobj: Any, url: str, **kw: Any) -> None:
        calls.append(url)
        if len(calls) == 2:
            raise store.OutputError(f"cannot upload to {url}: connection reset")
        real(fileobj, url, **kw)

    monkeypatch.setattr(store, "upload_fileobj", fail_second)
    url = f"{s3_bucket}/x/classes.tif"
    with pytest.raises(GeosegError, match="connection reset"):
        predict(scene, url, model, dask_client, probabilities=f"{s3_bucket}/x/probs.tif")
    assert not exists(f"{s3_bucket}/x/probs.tif")


def test_batch_job_with_cells_and_confidence(
    tmp_path: Path,
    model_factory: Callable[..., Path],
    dask_client: Any,
) -> None:
    from geoseg.jobs.run import run_batch
    from tests.conftest import random_scene, write_raster

    rng = np.random.default_rng(5)
    (tmp_path / "in").mkdir()
    write_raster(tmp_path / "in" / "a.tif", random_scene(rng, 3, 200, 700, "uint8"))
    job = tmp_path / "job.yaml"
    job.write_text(f"""
scenes: [in/*.tif]
model: {model_factory(in_channels=3)}
output: {{folder: out}}
predict: {{tile: 128, cells: 512, confidence: true, compress: zstd}}
quicklook: false
""")
    report = run_batch(job, client=dask_client)
    assert report.count("done") == 1, report.as_dict()
    folder = tmp_path / "out" / "a-classes"
    assert sorted(p.name for p in (folder / "classes").iterdir()) == [
        "R000C000.tif",
        "R000C001.tif",
    ]
    single = tmp_path / "single.tif"
    geoseg.predict(
        str(tmp_path / "in" / "a.tif"),
        str(single),
        model=str(model_factory(in_channels=3)),
        client=dask_client,
        tile=128,
        confidence=tmp_path / "k.tif",
    )
    np.testing.assert_array_equal(read(folder / "classes.vrt"), read(single))
    np.testing.assert_array_equal(read(folder / "confidence.vrt"), read(tmp_path / "k.tif"))
    item = json.loads((tmp_path / "out" / "a-classes.stac.json").read_text())
    assert item["assets"]["classes"]["href"] == "a-classes/classes.vrt"
    assert item["assets"]["confidence"]["href"] == "a-classes/confidence.vrt"
    again = run_batch(job, client=dask_client)
    assert again.count("skipped") == 1


def test_batch_job_writes_to_an_object_store_and_resumes(
    tmp_path: Path,
    model_factory: Callable[..., Path],
    dask_client: Any,
    s3_bucket: str,
) -> None:
    from geoseg.jobs.run import run_batch
    from geoseg.objectstore.client import gdal_s3_env
    from geoseg.objectstore.reads import list_keys
    from geoseg.objectstore.urls import to_vsis3
    from tests.conftest import random_scene, write_raster

    rng = np.random.default_rng(9)
    (tmp_path / "in").mkdir()
    for name in ("a", "b"):
        write_raster(tmp_path / "in" / f"{name}.tif", random_scene(rng, 3, 90, 110, "uint8"))
    job = tmp_path / "job.yaml"
    job.write_text(f"""
scenes: [in/*.tif]
model: {model_factory(in_channels=3)}
output: {{folder: {s3_bucket}/nightly}}
predict: {{tile: 64, confidence: true}}
quicklook: false
""")
    report = run_batch(job, client=dask_client)
    assert report.count("done") == 2, report.as_dict()
    keys = {k.rsplit("/", 1)[1] for k in list_keys(f"{s3_bucket}/nightly/")}
    for name in ("a", "b"):
        assert {
            f"{name}-classes.tif",
            f"{name}-confidence.tif",
            f"{name}-classes.stac.json",
            f"{name}-classes.tif.geoseg.json",
        } <= keys, keys
    assert {"batch-report.json", "report.html"} <= keys
    local = tmp_path / "a.tif"
    geoseg.predict(
        str(tmp_path / "in" / "a.tif"),
        str(local),
        model=str(model_factory(in_channels=3)),
        client=dask_client,
        tile=64,
    )
    with rasterio.Env(**gdal_s3_env()):
        np.testing.assert_array_equal(
            read(to_vsis3(f"{s3_bucket}/nightly/a-classes.tif")), read(local)
        )
    again = run_batch(job, client=dask_client)
    assert again.count("skipped") == 2, again.as_dict()
