"""Per-band normalisation of raw pixels in numpy: ``(x - mean) / std`` as float32, no data as 0.

The one definition the CPU inference engine (:mod:`geoseg.engines.onnx_cpu`) and training chips
share; :meth:`geoseg.engines.base.Engine.normalize` is the same arithmetic in torch, on the
engine's device.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def normalize(
    data: np.ndarray,
    valid: np.ndarray | None,
    mean: Sequence[float],
    std: Sequence[float],
) -> np.ndarray:
    """``(x - mean) / std`` per band as float32 for ``data`` (C x H x W, or N x C x H x W);
    pixels where ``valid`` (H x W, or N x H x W) is false, and non-finite values, become 0, the
    band mean. ``valid=None``: every pixel holds data (one pass fewer).

    Filling nodata with the mean is a neutral input: it carries no edge or texture, so it does
    not paint its own class into valid neighbours the way a 0 or a -9999 would. The values are
    cast to float32 first, then shifted and divided (not multiplied by 1/std): the same float32
    operations, in the same order, as the torch version.
    """
    shape = (-1, 1, 1)
    m = np.asarray(mean, dtype=np.float32).reshape(shape)
    s = np.asarray(std, dtype=np.float32).reshape(shape)
    out = np.subtract(data, m, dtype=np.float32, casting="unsafe")
    np.divide(out, s, out=out)
    if valid is not None and not valid.all():
        np.copyto(out, np.float32(0.0), where=~np.expand_dims(valid, -3))
    if np.issubdtype(data.dtype, np.floating):
        np.nan_to_num(out, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    return out
