"""The per-pixel work after a network, as ONNX nodes: one graph from normalized tiles to class values.

:func:`fused_graph` extends a network's ONNX graph so that ONNX Runtime does, in its own threads
(or on the GPU), what :class:`geoseg.engines.base.Engine` otherwise does in torch after the
forward pass: the argmax over classes, the lookup of class values with the class raster's nodata
where the input had none, and uint8 softmax probabilities. Only uint8 (uint16 for large class
values) leaves the session: no float logits are copied back. On a cheap network the argmax
alone took longer in torch than the whole forward pass. (Normalisation stays in torch on the
same device: ONNX Runtime's ``Cast`` from integers ran single-threaded at 6x torch's time.)

Inputs: the network's own (normalized float32 N x C x H x W) and :data:`VALID` (N x 1 x H x W,
bool). Outputs: :data:`CLASSES` (N x 1 x H x W) and, when asked for, :data:`PROBABILITIES`
(N x K x H x W uint8).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

#: Softmax over one axis (not the flattened trailing axes) since opset 13: what the added nodes
#: need; older graphs run the unfused path.
MIN_OPSET = 13

#: Version of what :func:`fused_graph` builds: fused graphs cached on disk carry it in their
#: file name (:func:`geoseg.engines.onnx_cpu.fused_cache_path`); bump it when the graph changes.
FUSED_FORMAT = 1
_PREFIX = "geoseg_fused_"
#: Names of the fused graph's inputs and outputs (prefixed: an imported graph may use the plain words).
VALID, CLASSES, PROBABILITIES = (_PREFIX + n for n in ("valid", "classes", "probabilities"))


def model_opset(proto: Any) -> int:
    """The model's version of the default ONNX operator set (0 when it declares none)."""
    for entry in proto.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    return 0


def fused_graph(
    proto: Any,
    lookup: Sequence[int],
    class_dtype: np.dtype,
    nodata: int,
    probabilities: bool,
) -> Any | None:
    """A copy of ``proto`` (a network: normalized float N x C x H x W in, logits N x K x H x W
    out) that also takes :data:`VALID` and returns class values (and uint8 probabilities)
    instead of logits, with nodata (probability 0) where :data:`VALID` is false. None when the
    model's opset is older than :data:`MIN_OPSET` (the caller then runs the unfused path).

    The mask is applied to the uint8 outputs, after the lookup and the cast (for uint16 class
    values, which ONNX Runtime's ``Where`` does not take, to the argmax): one graph serves
    batches with and without nodata at about no cost (a ``Where`` over the int64 argmax cost
    as much as the argmax), so a model needs one session, not one per variant (each session
    keeps its own memory arena)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if model_opset(proto) < MIN_OPSET:
        return None
    fused = onnx.ModelProto()
    fused.CopyFrom(proto)
    graph = fused.graph
    logits = graph.output[0].name
    classes = len(lookup)

    def name(s: str) -> str:
        return _PREFIX + s

    def const(label: str, value: Any) -> str:
        graph.initializer.append(numpy_helper.from_array(np.asarray(value), name(label)))
        return name(label)

    post = [helper.make_node("ArgMax", [logits], [name("argmax")], axis=1, keepdims=1)]
    if np.dtype(class_dtype) == np.uint8:
        post += [
            helper.make_node(
                "Gather",
                [const("lookup", np.asarray(lookup, dtype=class_dtype)), name("argmax")],
                [name("values")],
                axis=0,
            ),
            helper.make_node(
                "Where",
                [VALID, name("values"), const("nodata", np.asarray(nodata, dtype=class_dtype))],
                [CLASSES],
            ),
        ]
    else:  # ONNX Runtime's Where has no uint16 kernel: mask the index, nodata is the table's last entry
        post += [
            helper.make_node(
                "Where",
                [VALID, name("argmax"), const("nodata_index", np.int64(classes))],
                [name("index")],
            ),
            helper.make_node(
                "Gather",
                [const("lookup", np.asarray([*lookup, nodata], dtype=class_dtype)), name("index")],
                [CLASSES],
                axis=0,
            ),
        ]
    outputs = [
        helper.make_tensor_value_info(
            CLASSES, helper.np_dtype_to_tensor_dtype(np.dtype(class_dtype)), ["N", 1, "H", "W"]
        )
    ]
    if probabilities:  # 0-255 = 0-1, rounded half to even as torch does; 0 where no data
        post += [
            helper.make_node("Softmax", [logits], [name("softmax")], axis=1),
            helper.make_node(
                "Mul", [name("softmax"), const("scale", np.float32(255.0))], [name("scaled")]
            ),
            helper.make_node("Round", [name("scaled")], [name("rounded")]),
            helper.make_node("Cast", [name("rounded")], [name("uint8")], to=TensorProto.UINT8),
            helper.make_node(
                "Where", [VALID, name("uint8"), const("zero", np.uint8(0))], [PROBABILITIES]
            ),
        ]
        outputs.append(
            helper.make_tensor_value_info(
                PROBABILITIES, TensorProto.UINT8, ["N", classes, "H", "W"]
            )
        )
    graph.node.extend(post)
    graph.input.append(helper.make_tensor_value_info(VALID, TensorProto.BOOL, ["N", 1, "H", "W"]))
    del graph.output[:]
    graph.output.extend(outputs)
    return fused
