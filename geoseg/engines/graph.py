"""The per-pixel work around a network, as ONNX nodes: one graph from raw tiles to class values.

:func:`fused_graph` wraps a network's ONNX graph so that ONNX Runtime does, in its own threads
(or on the GPU), what :class:`geoseg.engines.base.Engine` otherwise does in torch: the cast to
float32, ``(x - mean) / std``, zero (the band mean) where the input has no data or is not
finite, the argmax over classes, the lookup of class values with the class raster's nodata where
the input had none, and uint8 softmax probabilities. Only uint8 (uint16 for large class values)
leaves the session: no float logits are copied back, and no pass over them is made in Python.
On a cheap network the argmax alone took longer in torch than the whole forward pass.

Inputs: :data:`RAW` (N x C x H x W, the scene's dtype) and :data:`VALID` (N x 1 x H x W, bool).
Outputs: :data:`CLASSES` (N x 1 x H x W) and, when asked for, :data:`PROBABILITIES` (N x K x H x W
uint8).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

#: Softmax over one axis (not the flattened trailing axes), ``Unsqueeze`` axes as an input:
#: what the added nodes need; older graphs run the unfused path.
MIN_OPSET = 13

_PREFIX = "geoseg_fused_"
#: Names of the fused graph's inputs and outputs (prefixed: an imported graph may use the plain words).
RAW, VALID, CLASSES, PROBABILITIES = (_PREFIX + n for n in ("raw", "valid", "classes", "probabilities"))

_FLOAT_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))


def model_opset(proto: Any) -> int:
    """The model's version of the default ONNX operator set (0 when it declares none)."""
    for entry in proto.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    return 0


def graph_input_name(proto: Any) -> str:
    """The network's image input: its first graph input that is not a weight (old IR versions
    list initializers among the inputs)."""
    weights = {t.name for t in proto.graph.initializer}
    return next(i.name for i in proto.graph.input if i.name not in weights)


def fused_graph(
    proto: Any, mean: Sequence[float], std: Sequence[float], raw_dtype: np.dtype, lookup: Sequence[int],
    class_dtype: np.dtype, nodata: int, probabilities: bool,
) -> Any | None:
    """A copy of ``proto`` (a network: float N x C x H x W in, logits N x K x H x W out) that
    takes raw pixels and returns class values (and uint8 probabilities); None when the model's
    opset is older than :data:`MIN_OPSET` (the caller then runs the unfused path)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if model_opset(proto) < MIN_OPSET:
        return None
    fused = onnx.ModelProto()
    fused.CopyFrom(proto)
    graph = fused.graph
    image = graph_input_name(fused)
    logits = graph.output[0].name
    channels, classes = len(mean), len(lookup)

    def name(s: str) -> str:
        return _PREFIX + s

    def const(label: str, value: Any) -> str:
        graph.initializer.append(numpy_helper.from_array(np.asarray(value), name(label)))
        return name(label)

    raw_dtype = np.dtype(raw_dtype)
    pre: list[Any] = []
    x = RAW
    if raw_dtype != np.float32:
        pre.append(helper.make_node("Cast", [RAW], [name("float")], to=TensorProto.FLOAT))
        x = name("float")
    pre += [
        helper.make_node("Sub", [x, const("mean", np.asarray(mean, np.float32).reshape(1, channels, 1, 1))],
                         [name("centred")]),
        helper.make_node("Div", [name("centred"), const("std", np.asarray(std, np.float32).reshape(1, channels, 1, 1))],
                         [name("normalized")]),
    ]
    keep = VALID
    if raw_dtype in _FLOAT_DTYPES:  # integers cast to float are finite; floats may hold NaN or inf
        pre += [
            helper.make_node("IsNaN", [name("normalized")], [name("nan")]),
            helper.make_node("IsInf", [name("normalized")], [name("inf")]),
            helper.make_node("Or", [name("nan"), name("inf")], [name("nonfinite")]),
            helper.make_node("Not", [name("nonfinite")], [name("finite")]),
            helper.make_node("And", [VALID, name("finite")], [name("keep")]),
        ]
        keep = name("keep")
    pre.append(helper.make_node("Where", [keep, name("normalized"), const("zero", np.float32(0.0))], [image]))

    # class values: argmax, pointed at an extra entry (nodata) where the input had no data
    table = np.asarray([*lookup, nodata], dtype=class_dtype)
    post = [
        helper.make_node("ArgMax", [logits], [name("argmax")], axis=1, keepdims=1),
        helper.make_node("Where", [VALID, name("argmax"), const("nodata_index", np.int64(classes))],
                         [name("index")]),
        helper.make_node("Gather", [const("lookup", table), name("index")], [CLASSES], axis=0),
    ]
    outputs = [helper.make_tensor_value_info(CLASSES, helper.np_dtype_to_tensor_dtype(np.dtype(class_dtype)),
                                             ["N", 1, "H", "W"])]
    if probabilities:  # 0-255 = 0-1, rounded half to even as torch does; 0 where no data
        post += [
            helper.make_node("Softmax", [logits], [name("softmax")], axis=1),
            helper.make_node("Mul", [name("softmax"), const("scale", np.float32(255.0))], [name("scaled")]),
            helper.make_node("Round", [name("scaled")], [name("rounded")]),
            helper.make_node("Where", [VALID, name("rounded"), name("zero")], [name("masked")]),
            helper.make_node("Cast", [name("masked")], [PROBABILITIES], to=TensorProto.UINT8),
        ]
        outputs.append(helper.make_tensor_value_info(PROBABILITIES, TensorProto.UINT8, ["N", classes, "H", "W"]))

    nodes = [*pre, *graph.node, *post]
    del graph.node[:]
    graph.node.extend(nodes)
    kept_inputs = [i for i in graph.input if i.name != image]
    del graph.input[:]
    graph.input.extend([
        helper.make_tensor_value_info(RAW, helper.np_dtype_to_tensor_dtype(raw_dtype), ["N", channels, "H", "W"]),
        helper.make_tensor_value_info(VALID, TensorProto.BOOL, ["N", 1, "H", "W"]),
        *kept_inputs,
    ])
    del graph.output[:]
    graph.output.extend(outputs)
    return fused
