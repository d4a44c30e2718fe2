"""The few ONNX protobuf messages a plain inference graph needs, written as bytes (no ``onnx`` package).

``import onnx`` takes about 1.1 s on our CPU (it loads ml_dtypes), more than building and loading Whisper's encoder
on onnxruntime; onnxruntime itself reads a serialized ``ModelProto``. The field numbers are those of onnx.proto3
(ONNX's public schema): a model with one graph and its operator-set imports; nodes (of any domain) with string
inputs/outputs and int, float or ints attributes; tensors as ``raw_data`` (little-endian); value infos of tensors with
fixed or named dimensions.
tests/test_onnx_encoder.py checks these bytes with ``onnx.checker``.
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Iterable, Sequence

import numpy as np

FLOAT, UINT8, INT8, INT64, FLOAT16 = 1, 2, 3, 7, 10  # TensorProto.DataType
_DATA_TYPES = {np.dtype(np.float32): FLOAT, np.dtype(np.uint8): UINT8, np.dtype(np.int8): INT8,
               np.dtype(np.int64): INT64, np.dtype(np.float16): FLOAT16}
_ATTR_FLOAT, _ATTR_INT, _ATTR_INTS = 1, 2, 7  # AttributeProto.AttributeType


def _varint(value: int) -> bytes:
    if value < 0:
        value += 1 << 64  # int64 fields: two's complement, ten bytes
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


Message = list  # a message's serialized bytes as a list of pieces (bytes, or byte memoryviews of weights), joined once


def _size(message: Message) -> int:
    return sum(len(piece) for piece in message)


def _int(field: int, value: int) -> Message:
    return [_varint(field << 3) + _varint(value)]


def _nested(field: int, message: Message) -> Message:
    return [_varint(field << 3 | 2) + _varint(_size(message)), *message]


def _str(field: int, text: str) -> Message:
    return _nested(field, [text.encode("utf-8")])


def _float(field: int, value: float) -> Message:
    return [_varint(field << 3 | 5) + struct.pack("<f", value)]


def tensor(name: str, array: np.ndarray) -> Message:
    """A ``TensorProto`` holding ``array`` (float32, float16, int8, uint8, int64); its memory is referenced, not
    copied."""
    array = np.asarray(array)
    if array.dtype not in _DATA_TYPES:
        raise TypeError(f"tensor {name!r}: dtype {array.dtype} not supported (float32, float16, int8, uint8, int64)")
    data = np.ascontiguousarray(array)
    if sys.byteorder != "little":
        data = data.byteswap()
    dims = [piece for d in array.shape for piece in _int(1, d)]
    return [*dims, *_int(2, _DATA_TYPES[array.dtype]), *_str(8, name), *_nested(9, [memoryview(data).cast("B")])]


def _attribute(name: str, value: int | float | Sequence[int]) -> Message:
    if isinstance(value, bool) or not isinstance(value, (int, float, list, tuple)):
        raise TypeError(f"attribute {name!r}: {type(value).__name__} not supported (int, float, list of ints)")
    if isinstance(value, float):
        return [*_str(1, name), *_float(2, value), *_int(20, _ATTR_FLOAT)]
    if isinstance(value, int):
        return [*_str(1, name), *_int(3, value), *_int(20, _ATTR_INT)]
    return [*_str(1, name), *(piece for v in value for piece in _int(8, int(v))), *_int(20, _ATTR_INTS)]


def node(op_type: str, inputs: Sequence[str], outputs: Sequence[str], name: str, domain: str = "",
         **attributes: int | float | Sequence[int]) -> Message:
    """A ``NodeProto`` of ``domain`` ("" = ai.onnx; "com.microsoft" = onnxruntime's contrib operators)."""
    parts = [piece for i in inputs for piece in _str(1, i)] + [piece for o in outputs for piece in _str(2, o)]
    parts += [*_str(3, name), *_str(4, op_type)]
    if domain:
        parts += _str(7, domain)
    for key, value in attributes.items():
        parts += _nested(5, _attribute(key, value))
    return parts


def value_info(name: str, elem_type: int, dims: Sequence[int | str]) -> Message:
    """A ``ValueInfoProto`` of a tensor; a str dimension is named (dynamic)."""
    shape = [piece for d in dims for piece in _nested(1, _str(2, d) if isinstance(d, str) else _int(1, d))]
    tensor_type = [*_int(1, elem_type), *_nested(2, shape)]
    return [*_str(1, name), *_nested(2, _nested(1, tensor_type))]


def model(nodes: Iterable[Message], initializers: Iterable[Message], inputs: Iterable[Message],
          outputs: Iterable[Message], *, graph_name: str, opset: int, ir_version: int, producer: str,
          domains: dict[str, int] | None = None) -> bytes:
    """A serialized ``ModelProto``: one graph of ``nodes`` (``node``), ``initializers`` (``tensor``),
    ``inputs``/``outputs`` (``value_info``), importing the default domain at ``opset`` and each of ``domains`` at its
    version. The weights are copied once, here."""
    graph: Message = []
    for n in nodes:
        graph += _nested(1, n)
    graph += _str(2, graph_name)
    for t in initializers:
        graph += _nested(5, t)
    for v in inputs:
        graph += _nested(11, v)
    for v in outputs:
        graph += _nested(12, v)
    opsets: Message = []
    for domain, version in {"": opset, **(domains or {})}.items():
        opsets += _nested(8, [*_str(1, domain), *_int(2, version)])
    return b"".join([*_int(1, ir_version), *_str(2, producer), *_nested(7, graph), *opsets])
