"""Score a class raster against a reference raster: confusion matrix, IoU, F1, kappa, accuracy."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from geoseg.classes import IGNORE_VALUE, read_class_names
from geoseg.errors import EvaluationError, SceneError
from geoseg.fs import check_distinct_paths, check_output_path, write_json_atomic
from geoseg.raster.read import no_georef_warning, open_scene
from geoseg.training.metrics import Scores


def _grids_match(a: Any, b: Any) -> bool:
    return a.crs == b.crs and a.shape == b.shape and a.transform.almost_equals(b.transform, 1e-9)


def evaluate(
    prediction: str | os.PathLike[str],
    reference: str | os.PathLike[str],
    ignore_value: int | None = None,
    resample: bool = False,
    json_path: str | os.PathLike[str] | None = None,
    block: int = 1024,
    overwrite: bool = False,
) -> Scores:
    """Compare two class rasters block by block (memory stays flat with raster size).

    Prediction nodata and reference ``ignore_value``/nodata are left out. Classes are every value
    in either raster; names come from the prediction's geoseg metadata where it has them.
    An existing ``json_path`` is replaced only with ``overwrite``, and never when it is an input.
    """
    if json_path is not None:
        check_output_path(json_path, overwrite, "JSON report")
        check_distinct_paths(
            {"prediction": prediction, "reference": reference}, {"JSON report": json_path}
        )
    for p in (prediction, reference):
        open_scene(p)
    with no_georef_warning():
        pred = rasterio.open(prediction)
        ref_src = rasterio.open(reference)
    try:
        for src in (pred, ref_src):
            if not np.issubdtype(np.dtype(src.dtypes[0]), np.integer):
                raise EvaluationError(f"{src.name} holds {src.dtypes[0]} values, not class numbers")
        if _grids_match(pred, ref_src):
            ref: Any = ref_src
        elif resample:
            if ref_src.crs is None or pred.crs is None:
                raise EvaluationError("--resample needs both rasters georeferenced")
            ref = WarpedVRT(
                ref_src,
                crs=pred.crs,
                transform=pred.transform,
                width=pred.width,
                height=pred.height,
                resampling=rasterio.enums.Resampling.nearest,
                nodata=ref_src.nodata
                if ref_src.nodata is not None
                else (ignore_value if ignore_value is not None else IGNORE_VALUE),
            )
        else:
            raise EvaluationError(
                f"the grids differ (prediction {pred.width}x{pred.height} {pred.crs}, reference "
                f"{ref_src.width}x{ref_src.height} {ref_src.crs}); pass --resample to resample the "
                "reference onto the prediction grid (nearest)"
            )
        cm = np.zeros((256, 256), dtype=np.int64)
        for r in range(0, pred.height, block):
            for c in range(0, pred.width, block):
                w = Window(c, r, min(block, pred.width - c), min(block, pred.height - r))
                p = pred.read(1, window=w).astype(np.int64)
                t = ref.read(1, window=w).astype(np.int64)
                keep = (p >= 0) & (p < 256) & (t >= 0) & (t < 256)
                if pred.nodata is not None:
                    keep &= p != pred.nodata
                if ref.nodata is not None:
                    keep &= t != ref.nodata
                if ignore_value is not None:
                    keep &= t != ignore_value
                cm += np.bincount(t[keep] * 256 + p[keep], minlength=256 * 256).reshape(256, 256)
        names = read_class_names(pred)
        if ref is not ref_src:
            ref.close()
    finally:
        pred.close()
        ref_src.close()
    present = np.flatnonzero(cm.sum(0) + cm.sum(1))
    if present.size == 0:
        raise EvaluationError(
            "no pixel is labelled in both rasters; check --ignore-value and nodata"
        )
    sub = cm[np.ix_(present, present)]
    scores = Scores(sub, [f"{v} {names[int(v)]}" if int(v) in names else str(v) for v in present])
    if json_path is not None:
        report = {
            "prediction": str(prediction),
            "reference": str(reference),
            "ignore_value": ignore_value,
            "values": [int(v) for v in present],
            **scores.as_dict(),
        }
        write_json_atomic(Path(json_path), report)
    return scores


__all__ = ["evaluate", "SceneError"]
