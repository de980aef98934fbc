"""Write ONNX models with numpy alone: the protobuf wire format of the few ONNX IR messages we use.

Field numbers are those of `onnx/onnx.proto` (https://github.com/onnx/onnx/blob/main/onnx/onnx.proto,
IR version 8); the encoding is protobuf's wire format
(https://protobuf.dev/programming-guides/encoding/). Only what an inference graph needs is here:
ModelProto, OperatorSetIdProto, GraphProto, NodeProto, AttributeProto (float, int, ints),
TensorProto (raw little-endian data), ValueInfoProto with a tensor type and symbolic dimensions.
Repeated integers are written unpacked, which every protobuf parser reads. The `onnx` package is not
needed to build a model; ONNX Runtime parses the result.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence

import numpy as np

__all__ = ["FLOAT", "INT64", "attr", "encode_model", "node", "tensor", "value_info"]

# TensorProto.DataType
FLOAT = 1
INT64 = 7
_DATA_TYPES = {np.dtype(np.float32): FLOAT, np.dtype(np.int64): INT64}

# AttributeProto.AttributeType
_ATTR_FLOAT, _ATTR_INT, _ATTR_INTS = 1, 2, 7

_VARINT, _FIXED32, _BYTES = 0, 5, 2
_U64 = (1 << 64) - 1


def _varint(value: int) -> bytes:
    value &= _U64  # negative int64 values are sent as their 64-bit two's complement
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _key(field: int, wire_type: int) -> bytes:
    return _varint((field << 3) | wire_type)


def _int(field: int, value: int) -> bytes:
    return _key(field, _VARINT) + _varint(value)


def _bytes(field: int, value: bytes) -> bytes:
    return _key(field, _BYTES) + _varint(len(value)) + value


def _str(field: int, value: str) -> bytes:
    return _bytes(field, value.encode("utf-8"))


def _float(field: int, value: float) -> bytes:
    return _key(field, _FIXED32) + struct.pack("<f", value)


def attr(name: str, value: float | Sequence[int]) -> bytes:
    """An AttributeProto: a Python float, int or sequence of ints."""
    head = _str(1, name)
    if isinstance(value, bool):
        raise TypeError(f"attribute {name!r}: bool is not an ONNX attribute type")
    if isinstance(value, float):
        return head + _float(2, value) + _int(20, _ATTR_FLOAT)
    if isinstance(value, int):
        return head + _int(3, value) + _int(20, _ATTR_INT)
    return head + b"".join(_int(8, int(v)) for v in value) + _int(20, _ATTR_INTS)


def node(
    op_type: str,
    inputs: Sequence[str],
    outputs: Sequence[str],
    name: str,
    **attributes: float | Sequence[int],
) -> bytes:
    """A NodeProto of the default (ai.onnx) domain; an empty input name means 'omitted'."""
    return (
        b"".join(_str(1, i) for i in inputs)
        + b"".join(_str(2, o) for o in outputs)
        + _str(3, name)
        + _str(4, op_type)
        + b"".join(_bytes(5, attr(k, v)) for k, v in attributes.items())
    )


def tensor(name: str, array: np.ndarray) -> bytes:
    """A TensorProto holding `array` (float32 or int64) as raw little-endian bytes."""
    array = np.asarray(array)
    data_type = _DATA_TYPES.get(array.dtype)
    if data_type is None:
        raise TypeError(f"tensor {name!r}: unsupported dtype {array.dtype}")
    raw = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
    return (
        b"".join(_int(1, d) for d in array.shape)
        + _int(2, data_type)
        + _str(8, name)
        + _bytes(9, raw)
    )


def value_info(name: str, elem_type: int, shape: Sequence[int | str]) -> bytes:
    """A ValueInfoProto of a tensor; a str dimension is symbolic (e.g. "batch")."""
    dims = b"".join(_bytes(1, _str(2, d) if isinstance(d, str) else _int(1, d)) for d in shape)
    tensor_type = _int(1, elem_type) + _bytes(2, dims)
    return _str(1, name) + _bytes(2, _bytes(1, tensor_type))


def encode_model(
    *,
    graph_name: str,
    nodes: Iterable[bytes],
    initializers: Iterable[bytes],
    inputs: Iterable[bytes],
    outputs: Iterable[bytes],
    opset: int,
    ir_version: int = 8,
    producer: str = "chartcite",
    metadata: dict[str, str] | None = None,
) -> bytes:
    """A serialized ModelProto with one graph in the default domain at `opset`."""
    graph = (
        b"".join(_bytes(1, n) for n in nodes)
        + _str(2, graph_name)
        + b"".join(_bytes(5, t) for t in initializers)
        + b"".join(_bytes(11, i) for i in inputs)
        + b"".join(_bytes(12, o) for o in outputs)
    )
    props = b"".join(
        _bytes(14, _str(1, k) + _str(2, v)) for k, v in sorted((metadata or {}).items())
    )
    return (
        _int(1, ir_version)
        + _str(2, producer)
        + _bytes(7, graph)
        + _bytes(8, _str(1, "") + _int(2, opset))
        + props
    )
