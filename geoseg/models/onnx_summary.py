"""What geoseg reads of an ONNX file to plan a run, read from its protobuf bytes directly:
operator set, metadata, graph inputs and outputs, and where the weights are kept.

Importing the ``onnx`` package took 0.45 s of every ``geoseg predict`` (it loads ml_dtypes and
its helpers), about a tenth of a cheap network's run at 8192²; this reader needs none of it.
It decodes the protobuf wire format (varints and length-delimited fields) of the few messages
involved and skips everything else without looking at it (weights, nodes). Malformed bytes are
a one-line error; nothing in the file is executed or interpreted beyond these fields.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Iterator

from geoseg.errors import CheckpointError, OnnxWireError

#: ONNX's TensorProto.DataType FLOAT and TensorProto.DataLocation EXTERNAL.
FLOAT = 1
EXTERNAL = 1

#: Field numbers (onnx/onnx.proto): ModelProto, GraphProto, TensorProto, ValueInfoProto, ...
_MODEL_OPSET, _MODEL_GRAPH, _MODEL_METADATA = 8, 7, 14
_GRAPH_INITIALIZER, _GRAPH_INPUT, _GRAPH_OUTPUT = 5, 11, 12
_TENSOR_NAME, _TENSOR_LOCATION = 8, 14
_VALUE_NAME, _VALUE_TYPE = 1, 2
_TYPE_TENSOR = 1
_TENSOR_TYPE_ELEM, _TENSOR_TYPE_SHAPE = 1, 2
_SHAPE_DIM = 1
_DIM_VALUE, _DIM_PARAM = 1, 2
_OPSET_DOMAIN, _OPSET_VERSION = 1, 2
_ENTRY_KEY, _ENTRY_VALUE = 1, 2


@dataclass
class ValueInfo:
    """A graph input or output: name, element type (0: not given) and shape (an int where fixed,
    the dimension's name or None where free; empty when no shape is given)."""

    name: str
    elem_type: int = 0
    dims: list[int | str | None] = field(default_factory=list)


@dataclass
class OnnxSummary:
    """The parts of an ONNX model geoseg checks and plans with."""

    opset: int = 0
    metadata: dict[str, str] = field(default_factory=dict)
    inputs: list[ValueInfo] = field(default_factory=list)
    outputs: list[ValueInfo] = field(default_factory=list)
    initializers: set[str] = field(default_factory=set)
    external_weights: bool = False

    @property
    def image_inputs(self) -> list[ValueInfo]:
        """Graph inputs that are not weights (old IR versions list initializers among inputs)."""
        return [i for i in self.inputs if i.name not in self.initializers]


def _varint(buf: memoryview, pos: int, end: int) -> tuple[int, int]:
    result, shift = 0, 0
    while True:
        if pos >= end or shift > 63:
            raise OnnxWireError("truncated or overlong varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7


def _fields(buf: memoryview, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """(field number, wire type, value or start, end) of each field of the message in
    ``buf[start:end]``; for length-delimited fields the value is the payload's start."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise OnnxWireError("field number 0")
        if wire == 0:
            value, pos = _varint(buf, pos, end)
            yield number, wire, value, pos
        elif wire == 1:
            pos += 8
            yield number, wire, 0, pos
        elif wire == 2:
            length, pos = _varint(buf, pos, end)
            if pos + length > end:
                raise OnnxWireError("length-delimited field runs past its message")
            yield number, wire, pos, pos + length
            pos += length
        elif wire == 5:
            pos += 4
            yield number, wire, 0, pos
        else:
            raise OnnxWireError(f"unsupported wire type {wire}")
        if pos > end:
            raise OnnxWireError("field runs past its message")


def _text(buf: memoryview, start: int, end: int) -> str:
    try:
        return bytes(buf[start:end]).decode("utf-8")
    except UnicodeDecodeError:
        raise OnnxWireError("a string field is not UTF-8") from None


def _text_and_number(
    buf: memoryview, start: int, end: int, text_field: int, number_field: int
) -> tuple[str, int]:
    """A message's string field and varint field (empty and 0 when absent)."""
    text, value = "", 0
    for number, wire, a, b in _fields(buf, start, end):
        if number == text_field and wire == 2:
            text = _text(buf, a, b)
        elif number == number_field and wire == 0:
            value = a
    return text, value


def _value_info(buf: memoryview, start: int, end: int) -> ValueInfo:
    info = ValueInfo("")
    for number, wire, a, b in _fields(buf, start, end):
        if number == _VALUE_NAME and wire == 2:
            info.name = _text(buf, a, b)
        elif number == _VALUE_TYPE and wire == 2:
            for n2, w2, a2, b2 in _fields(buf, a, b):
                if n2 == _TYPE_TENSOR and w2 == 2:
                    _tensor_type(buf, a2, b2, info)
    return info


def _tensor_type(buf: memoryview, start: int, end: int, info: ValueInfo) -> None:
    for number, wire, a, b in _fields(buf, start, end):
        if number == _TENSOR_TYPE_ELEM and wire == 0:
            info.elem_type = a
        elif number == _TENSOR_TYPE_SHAPE and wire == 2:
            info.dims = []
            for n2, w2, a2, b2 in _fields(buf, a, b):
                if n2 == _SHAPE_DIM and w2 == 2:
                    dim: int | str | None = None
                    for n3, w3, a3, b3 in _fields(buf, a2, b2):
                        if n3 == _DIM_VALUE and w3 == 0:
                            dim = a3
                        elif n3 == _DIM_PARAM and w3 == 2:
                            dim = _text(buf, a3, b3) or None
                    info.dims.append(dim)


def _graph(buf: memoryview, start: int, end: int, out: OnnxSummary) -> None:
    for number, wire, a, b in _fields(buf, start, end):
        if wire != 2:
            continue
        if number == _GRAPH_INITIALIZER:
            name, location = _text_and_number(buf, a, b, _TENSOR_NAME, _TENSOR_LOCATION)
            out.initializers.add(name)
            out.external_weights |= location == EXTERNAL
        elif number == _GRAPH_INPUT:
            out.inputs.append(_value_info(buf, a, b))
        elif number == _GRAPH_OUTPUT:
            out.outputs.append(_value_info(buf, a, b))


def summarize(data: bytes | memoryview) -> OnnxSummary:
    """The summary of a serialized ModelProto; :class:`OnnxWireError` when it is not one."""
    buf = memoryview(data)
    out = OnnxSummary()
    graphs = 0
    for number, wire, a, b in _fields(buf, 0, len(buf)):
        if wire != 2:
            continue
        if number == _MODEL_GRAPH:
            graphs += 1
            _graph(buf, a, b, out)
        elif number == _MODEL_OPSET:
            domain, version = _text_and_number(buf, a, b, _OPSET_DOMAIN, _OPSET_VERSION)
            if domain in ("", "ai.onnx"):
                out.opset = version
        elif number == _MODEL_METADATA:
            key = value = ""
            for n2, w2, a2, b2 in _fields(buf, a, b):
                if n2 == _ENTRY_KEY and w2 == 2:
                    key = _text(buf, a2, b2)
                elif n2 == _ENTRY_VALUE and w2 == 2:
                    value = _text(buf, a2, b2)
            out.metadata[key] = value
    if graphs == 0:
        raise OnnxWireError("no graph")
    return out


def read_summary(path: str | os.PathLike[str]) -> OnnxSummary:
    """The summary of the ONNX file at ``path``; one line if it is not an ONNX model."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        if not data:
            raise OnnxWireError("empty file")
        return summarize(data)
    except OnnxWireError as exc:
        raise CheckpointError(f"{path} is not an ONNX model ({exc})") from None
