"""geoseg models as ONNX files: export, import (with measured stride and receptive field),
conversion of ``.pt`` models (cached by content hash), load as a torch module.

The file format and its checks, which need no torch, are :mod:`geoseg.models.onnx_file`.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from geoseg.classes import ClassInfo
from geoseg.errors import ModelError, first_line
from geoseg.fs import check_output_path
from geoseg.models.checkpoint import (
    GLOBAL_RECEPTIVE_FIELD,
    LoadedModel,
    ModelConfig,
    file_sha256,
    load_pt_model,
    resolve_model_path,
)
from geoseg.models.onnx_file import (
    METADATA_KEY,
    OPSET,
    cache_dir,
    cached_onnx_path,
    check_counts,
    check_graph,
    is_onnx_file,
    parse_onnx,
    read_onnx_model,
    write_onnx_model,
)
from geoseg.models.onnx_summary import read_summary

__all__ = [
    "METADATA_KEY",
    "OPSET",
    "OnnxNetwork",
    "cache_dir",
    "cached_onnx",
    "cached_onnx_path",
    "check_graph",
    "export_model",
    "export_network",
    "import_model",
    "is_onnx_file",
    "load_onnx_model",
    "probe",
    "read_onnx_model",
]

#: Output strides tried when probing an imported model.
MAX_STRIDE = 64


class OnnxNetwork(nn.Module):
    """An ONNX Runtime session as a torch module (CPU, no gradients), so ``LoadedModel.network``
    works the same for every model format."""

    def __init__(
        self, model: bytes | str | Path, device: torch.device = torch.device("cpu")
    ) -> None:
        super().__init__()
        from geoseg.models.ort_session import make_session

        self.session = make_session(model, device)
        self.input_name = self.session.get_inputs()[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (y,) = self.session.run(
            None, {self.input_name: x.detach().float().cpu().contiguous().numpy()}
        )[:1]
        return torch.from_numpy(y).to(x.device)


def load_onnx_model(path: Path, name: str, device: str | torch.device = "cpu") -> LoadedModel:
    """An ONNX geoseg model, checked, with its network under ONNX Runtime."""
    from geoseg.models.ort_session import onnxruntime_available

    config, _ = read_onnx_model(path)
    if not onnxruntime_available():
        raise ModelError(f"{path} is an ONNX model and needs ONNX Runtime; pip install onnxruntime")
    net = OnnxNetwork(
        Path(path).read_bytes(), torch.device(device) if isinstance(device, str) else device
    )
    return LoadedModel(net, config, str(path), file_sha256(path), name, format="onnx")


def export_network(network: nn.Module, in_channels: int, stride: int) -> Any:
    """An ONNX ModelProto of ``network`` (eval mode, CPU) with free batch, height and width.

    PyTorch's TorchScript-based exporter does a convolutional network in a tenth of a second;
    where it cannot, the ``torch.export``-based one (seconds, needs onnxscript) takes over.
    """
    import io

    import onnx

    network = network.eval().cpu()
    x = torch.randn(1, in_channels, 4 * max(stride, 8), 4 * max(stride, 8))
    names = {"input_names": ["image"], "output_names": ["logits"]}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # both exporters warn about their own future
        try:
            buf = io.BytesIO()
            free = {0: "batch", 2: "height", 3: "width"}
            torch.onnx.export(
                network,
                (x,),
                buf,  # type: ignore[arg-type]
                dynamo=False,
                opset_version=OPSET,
                dynamic_axes={"image": free, "logits": free},
                **names,  # type: ignore[arg-type]
            )
            proto = onnx.load_from_string(buf.getvalue())
        except Exception:  # noqa: BLE001 - an op the TorchScript exporter lacks: try the other
            dim = torch.export.Dim.DYNAMIC
            program = torch.onnx.export(
                network,
                (x,),
                dynamo=True,
                opset_version=OPSET,
                dynamic_shapes=({0: dim, 2: dim, 3: dim},),
                external_data=False,
                **names,  # type: ignore[arg-type]
            )
            assert program is not None
            proto = program.model_proto
    onnx.checker.check_model(proto)
    return proto


def export_model(
    model: str | os.PathLike[str] | None,
    output: str | os.PathLike[str],
    overwrite: bool = False,
) -> Path:
    """Write any geoseg model (built-in name or file) as an ONNX file with the same metadata,
    runnable by plain ONNX Runtime; checked against PyTorch on a random tile before it appears."""
    out = check_output_path(output, overwrite)
    path, name = resolve_model_path(model)
    if out.exists() and out.resolve() == Path(path).resolve():
        raise ModelError(
            "the ONNX output would replace the model it is made from; choose another -o"
        )
    if is_onnx_file(path):
        loaded = load_onnx_model(path, name)
        return write_onnx_model(parse_onnx(loaded.path), out, loaded.config)
    loaded = load_pt_model(path, name)
    proto = onnx_proto_for(loaded)
    return write_onnx_model(proto, out, loaded.config)


def onnx_proto_for(loaded: LoadedModel) -> Any:
    """Export a loaded PyTorch model and check ONNX Runtime gives its logits."""
    cfg = loaded.config
    proto = export_network(loaded.network, cfg.in_channels, cfg.output_stride)
    from geoseg.models.ort_session import make_session

    size = 2 * max(cfg.output_stride, 8)
    x = torch.randn(2, cfg.in_channels, size, 3 * size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = loaded.network.cpu()(x).numpy()
    session = make_session(proto.SerializeToString(), torch.device("cpu"))
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    if got.shape != want.shape or not np.allclose(
        got, want, rtol=1e-3, atol=1e-3 * max(1.0, float(np.abs(want).max()))
    ):
        raise ModelError(
            f"{loaded.name}: the ONNX export does not reproduce the PyTorch logits; use --engine torch"
        )
    return proto


def cached_onnx(model_path: str, sha256: str, loaded: LoadedModel | None = None) -> Path:
    """The ONNX file for the ``.pt`` model with content hash ``sha256``, converted once and kept in
    :func:`cache_dir` (atomic rename, so concurrent workers never see half a file)."""
    from geoseg.model_cache import cache_added, cache_hit

    target = cached_onnx_path(sha256)
    if cache_hit(target):
        return target
    if loaded is None:
        loaded = load_pt_model(*resolve_model_path(model_path))
    return cache_added(write_onnx_model(onnx_proto_for(loaded), target, loaded.config))


# ----------------------------------------------------------------------------------------------
# Import: measure stride and receptive field of a network made elsewhere, by probing it.


def import_model(
    source: str | os.PathLike[str],
    output: str | os.PathLike[str],
    classes: str | dict[int, Any],
    mean: Sequence[float],
    std: Sequence[float],
    bands: Sequence[str] | None = None,
    overwrite: bool = False,
) -> LoadedModel:
    """Turn an ONNX segmentation model (N x C x H x W float in, N x K x H x W logits out) into a
    geoseg model at ``output``: metadata in ``metadata_props``, output stride and receptive field
    measured by impulse responses at every stride phase so tile margins stay exact."""
    from geoseg.classes import default_color, parse_class_names

    src = Path(source)
    if not src.is_file():
        raise ModelError(f"{source}: no such ONNX file")
    out = check_output_path(output, overwrite)
    if out.exists() and out.resolve() == src.resolve():
        raise ModelError("geoseg import would replace its own input; choose another -o")
    channels, k = check_graph(read_summary(src), src)
    proto = parse_onnx(src)
    named = parse_class_names(classes) if isinstance(classes, str) else dict(classes)
    if not named:
        raise ModelError(
            "--classes is required, e.g. 0=background,1=water,2=forest (one per output channel)"
        )
    infos = [
        ClassInfo(
            v,
            n if isinstance(n, str) else n[0],
            (None if isinstance(n, str) else n[1]) or default_color(v),
        )
        for v, n in named.items()
    ]
    n_in = len(mean)
    band_names = list(bands) if bands else [f"band{i + 1}" for i in range(n_in)]
    config = ModelConfig(
        arch="onnx",
        arch_kwargs={"source": src.name, "producer": proto.producer_name},
        in_channels=n_in,
        band_names=band_names,
        mean=[float(m) for m in mean],
        std=[float(s) for s in std],
        classes=infos,
    )
    check_counts(config, channels, k, src)
    from geoseg.models.ort_session import make_session

    session = make_session(proto.SerializeToString(), torch.device("cpu"))
    stride, rf = probe(session, n_in, len(infos), src)
    config.output_stride, config.receptive_field = stride, rf
    write_onnx_model(proto, out, config)
    return load_onnx_model(*resolve_model_path(out))


def _run(session: Any, x: np.ndarray) -> np.ndarray:
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def probe(
    session: Any, channels: int, classes: int, path: Any, max_size: int = 4096
) -> tuple[int, int]:
    """Output stride and receptive-field radius of an ONNX network, measured.

    The stride is the smallest power of two by which shifting the input shifts the output
    (away from the borders). The radius is the farthest output pixel that changes when one
    input column (or row) changes, over impulses at every stride phase, both directions.
    """
    rng = np.random.default_rng(0)
    size = 256
    while True:
        try:
            stride = _stride(session, channels, classes, size, rng, path)
            radius, touches = _radius(session, channels, stride, size, rng)
        except _TooSmall:
            touches = True
        else:
            if not touches:
                return stride, radius
        if size >= max_size:
            return _global(path)
        size *= 2


class _TooSmall(Exception):
    """The probe strip is narrower than the receptive field."""


def _global(path: Any) -> tuple[int, int]:
    warnings.warn(
        f"{path}: the network's output depends on its whole input (global pooling?); "
        "its predictions will depend on --tile",
        stacklevel=3,
    )
    return 1, GLOBAL_RECEPTIVE_FIELD


def _stride(
    session: Any, channels: int, classes: int, size: int, rng: np.random.Generator, path: Any
) -> int:
    height = 64
    x = rng.normal(size=(1, channels, height, size + MAX_STRIDE)).astype(np.float32)
    try:
        base = _run(session, np.ascontiguousarray(x[..., MAX_STRIDE:]))
    except Exception as exc:  # noqa: BLE001 - ONNX Runtime raises its own classes
        raise ModelError(
            f"{path} cannot run on a {height}x{size} input ({first_line(exc)})"
        ) from None
    if base.ndim != 4 or base.shape[0] != 1 or base.shape[2:] != (height, size):
        raise ModelError(
            f"{path}: output shape {tuple(base.shape)} for input 1x{channels}x{height}x{size}; geoseg "
            "needs N x K x H x W logits at the input's size"
        )
    if base.shape[1] != classes:
        raise ModelError(
            f"{path}: the model outputs {base.shape[1]} classes but {classes} are named"
        )
    lo, hi = size // 4, 3 * size // 4
    s = 1
    while s <= MAX_STRIDE:
        shifted = _run(
            session, np.ascontiguousarray(x[..., MAX_STRIDE - s : MAX_STRIDE - s + size])
        )
        # shifted[..., j + s] sees the same input as base[..., j]
        a, b = base[..., lo:hi], shifted[..., lo + s : hi + s]
        if np.allclose(a, b, rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(a).max()))):
            return s
        s *= 2
    raise _TooSmall


def _radius(
    session: Any, channels: int, stride: int, size: int, rng: np.random.Generator
) -> tuple[int, bool]:
    """The tile margin the network needs, from impulses at every stride phase of one input
    column (then row), and whether the responses reached the strip's edge.

    Tile cores start and end on the stride lattice, so an impulse at ``p`` that changes outputs
    ``q_min..q_max`` needs ``floor_s(q_max) - p`` pixels of context left of a core and
    ``p - (floor_s(q_min) + s - 1)`` right of it: the same margin the gradient-support
    measurement of PyTorch models gives.
    """
    height = max(64, 4 * stride)
    radius, touches = 0, False
    for axis in (3, 2):
        shape = (1, channels, height, size) if axis == 3 else (1, channels, size, height)
        x = rng.normal(size=shape).astype(np.float32)
        base = _run(session, x)
        scale = max(1.0, float(np.abs(base).max()))
        centre = size // 2 // stride * stride
        for phase in range(stride):
            p = centre + phase
            y = x.copy()
            bump = rng.normal(size=(channels, height)).astype(np.float32) * 3.0
            if axis == 3:
                y[0, :, :, p] += bump
            else:
                y[0, :, p, :] += bump
            diff = np.abs(_run(session, y) - base)
            changed = diff.max(axis=(0, 1, 2) if axis == 3 else (0, 1, 3)) > 1e-6 * scale
            (idx,) = np.nonzero(changed)
            if len(idx) == 0:
                continue
            lo, hi = int(idx.min()), int(idx.max())
            left = hi // stride * stride - p
            right = p - (lo // stride * stride + stride - 1)
            radius = max(radius, left, right)
            touches |= lo == 0 or hi == size - 1
    return radius, touches
