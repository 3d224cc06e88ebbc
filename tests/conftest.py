"""Fixtures: seeded tiny georeferenced rasters, small random models, one loopback Dask cluster."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import rasterio
from rasterio.errors import NotGeoreferencedWarning
from rasterio.transform import from_origin

from tests.s3server import s3_bucket, s3_server  # noqa: F401  (fixtures: a real S3 server)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if SHARED_DATA.is_dir():
        return
    skip = pytest.mark.skip(reason=f"shared data not found at {SHARED_DATA}")
    for item in items:
        if "shared_data" in item.keywords:
            item.add_marker(skip)


def write_raster(
    path: Path,
    array: np.ndarray,
    crs: str | None = "EPSG:32633",
    transform: Any = None,
    nodata: float | None = None,
    tiled: bool = True,
    **extra: Any,
) -> Path:
    """Write a (bands, rows, cols) array as a GeoTIFF (bands as plain grey bands: GDAL would
    otherwise take the 4th band of a uint8 file as alpha)."""
    if array.ndim == 2:
        array = array[None]
    count, height, width = array.shape
    profile: dict[str, Any] = dict(
        driver="GTiff",
        width=width,
        height=height,
        count=count,
        dtype=array.dtype.name,
        nodata=nodata,
        **{"photometric": "minisblack", **extra},
    )
    if tiled and height >= 16 and width >= 16:
        profile.update(
            tiled=True,
            blockxsize=16 * max(1, min(width, 256) // 16),
            blockysize=16 * max(1, min(height, 256) // 16),
        )
    if crs is not None:
        profile["crs"] = crs
        profile["transform"] = transform or from_origin(300000, 5800000, 10, 10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(array)
    return path


def random_scene(
    rng: np.random.Generator, bands: int, height: int, width: int, dtype: str
) -> np.ndarray:
    """Smooth-ish random imagery in the range of ``dtype``, so a model sees structure."""
    base = rng.normal(size=(bands, height // 4 + 2, width // 4 + 2))
    up = np.kron(base, np.ones((1, 4, 4)))[:, :height, :width]
    noise = rng.normal(scale=0.3, size=(bands, height, width))
    x = up + noise
    if dtype == "uint8":
        return np.clip(x * 40 + 128, 0, 255).astype(dtype)
    if dtype == "uint16":
        return np.clip(x * 800 + 3000, 0, 65535).astype(dtype)
    if dtype == "int16":
        return np.clip(x * 800, -32768, 32767).astype(dtype)
    return (x * 0.1 + 0.2).astype(dtype)


def scale_for(dtype: str) -> tuple[float, float]:
    """Mean and std matching :func:`random_scene` for ``dtype``."""
    return {
        "uint8": (128.0, 40.0),
        "uint16": (3000.0, 800.0),
        "int16": (0.0, 800.0),
        "float32": (0.2, 0.1),
        "float64": (0.2, 0.1),
    }[dtype]


def make_model_file(
    path: Path,
    in_channels: int,
    num_classes: int = 4,
    dtype: str = "uint8",
    arch: str = "unet",
    seed: int = 0,
    **arch_kwargs: Any,
) -> Path:
    """An untrained but decisive model: randomized batch-norm statistics and a sharp head, so
    neighbouring pixels get different classes and seams would show."""
    import torch

    from geoseg.classes import ClassInfo
    from geoseg.models import create_model
    from geoseg.models.checkpoint import build_config, save_model

    torch.manual_seed(seed)
    kwargs = {"depth": 2, "base_width": 8, **arch_kwargs} if arch == "unet" else arch_kwargs
    net = create_model(arch, in_channels, num_classes, **kwargs)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 1.5)
        if isinstance(m, torch.nn.Conv2d) and not m.weight.any():
            torch.nn.init.normal_(m.weight, std=0.2)  # FCN's zero-initialised skip scores
    net.eval()
    with torch.no_grad():
        head = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)][-1]
        head.weight.mul_(8.0)
    mean, std = scale_for(dtype)
    classes = [
        ClassInfo(v + 1, f"class{v + 1}", (40 * v, 255 - 40 * v, 90)) for v in range(num_classes)
    ]
    cfg = build_config(
        net,
        arch,
        kwargs,
        [f"b{i + 1}" for i in range(in_channels)],
        [mean] * in_channels,
        [std] * in_channels,
        classes,
    )
    return save_model(path, net, cfg)


@pytest.fixture(scope="session")
def model_factory(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """Model files cached per (bands, classes, dtype, arch, kwargs) for the whole session."""
    cache: dict[tuple, Path] = {}
    root = tmp_path_factory.mktemp("models")

    def factory(
        in_channels: int = 3,
        num_classes: int = 4,
        dtype: str = "uint8",
        arch: str = "unet",
        **kwargs: Any,
    ) -> Path:
        key = (in_channels, num_classes, dtype, arch, tuple(sorted(kwargs.items())))
        if key not in cache:
            cache[key] = make_model_file(
                root / f"model-{len(cache)}.pt", in_channels, num_classes, dtype, arch, **kwargs
            )
        return cache[key]

    return factory


@pytest.fixture(scope="session")
def dask_client() -> Any:
    """One loopback cluster for the session (threads in this process, real TCP scheduler)."""
    from distributed import Client, LocalCluster

    cluster = LocalCluster(
        n_workers=1,
        threads_per_worker=2,
        processes=False,
        protocol="tcp",
        dashboard_address=":0",
        silence_logs=40,
    )
    client = Client(cluster, set_as_default=False)
    yield client
    client.close()
    cluster.close()


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture
def scene_factory(tmp_path: Path, rng: np.random.Generator) -> Callable[..., Path]:
    """Write a random scene of the given shape and dtype into the test's folder."""
    counter = iter(range(10_000))

    def factory(
        bands: int = 3, height: int = 96, width: int = 128, dtype: str = "uint8", **kwargs: Any
    ) -> Path:
        arr = random_scene(rng, bands, height, width, dtype)
        return write_raster(tmp_path / f"scene-{next(counter)}.tif", arr, **kwargs)

    return factory


def labeled_scene(
    path_image: Path,
    path_label: Path,
    rng: np.random.Generator,
    height: int = 192,
    width: int = 192,
    unlabeled_fraction: float = 0.3,
    crs: str = "EPSG:32633",
) -> np.ndarray:
    """A 3-band scene whose classes (1, 2, 3) are blobs with distinct colours, and its labels
    with 0 ("not labelled") over ``unlabeled_fraction`` of 16-pixel blocks. Returns the truth."""
    field = np.kron(rng.normal(size=(2, height // 16 + 1, width // 16 + 1)), np.ones((1, 16, 16)))
    field = field[:, :height, :width]
    truth = np.full((height, width), 3, np.uint8)
    truth[field[1] > 0.4] = 2
    truth[field[0] > 0.4] = 1
    colours = {1: (60, 160, 60), 2: (40, 60, 180), 3: (170, 150, 120)}
    img = np.zeros((3, height, width), np.float64)
    for v, col in colours.items():
        img[:, truth == v] = np.array(col, float)[:, None]
    img += rng.normal(scale=12, size=img.shape)
    write_raster(path_image, np.clip(img, 0, 255).astype(np.uint8), crs=crs)
    labels = truth.copy()
    blocks = rng.random((height // 16 + 1, width // 16 + 1)) < unlabeled_fraction
    labels[np.kron(blocks, np.ones((16, 16), bool))[:height, :width]] = 0
    write_raster(path_label, labels, crs=crs)
    return truth
