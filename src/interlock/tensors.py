"""Conversion between ``interlock.v1.Tensor`` messages and numpy arrays.

A Tensor is raw little-endian bytes in C order with an explicit shape; a scalar
has an empty shape. Every check here raises :class:`InvalidRequest` with a
message that names the field and says exactly what is wrong.
"""

from __future__ import annotations

from typing import cast

import numpy as np

from interlock.errors import InvalidRequest, shorten
from interlock.v1 import interlock_pb2 as pb

#: DataType enum value -> little-endian numpy dtype.
DTYPE_OF: dict[int, np.dtype] = {
    pb.DATA_TYPE_FLOAT32: np.dtype("<f4"),
    pb.DATA_TYPE_FLOAT64: np.dtype("<f8"),
    pb.DATA_TYPE_INT32: np.dtype("<i4"),
    pb.DATA_TYPE_INT64: np.dtype("<i8"),
    pb.DATA_TYPE_BOOL: np.dtype("?"),
    pb.DATA_TYPE_UINT8: np.dtype("u1"),
}
#: numpy dtype name -> DataType enum value.
DATA_TYPE_OF: dict[str, pb.DataType] = {dt.name: cast("pb.DataType", code) for code, dt in DTYPE_OF.items()}
#: Config spelling ("float32") -> DataType enum value.
DTYPE_NAMES = tuple(DATA_TYPE_OF)

MAX_DIMS = 8
#: At most this many elements in a tensor, counting only its non-zero dimensions (2**31: more than
#: a gRPC message can carry, and far below what makes numpy's size arithmetic overflow).
MAX_ELEMENTS = 2**31


def dtype_name(code: int) -> str:
    """``DATA_TYPE_FLOAT32`` -> ``"float32"``; unknown codes are shown as numbers."""
    dt = DTYPE_OF.get(code)
    return dt.name if dt is not None else f"<unknown DataType {code}>"


#: (DataType, shape, byte length) of tensors that passed every check of :func:`to_numpy` -> (dtype,
#: shape). An agent sends the same few layouts on every call; those skip the checks (bounded size).
_VALID_LAYOUTS: dict[tuple[int, tuple[int, ...], int], tuple[np.dtype, tuple[int, ...]]] = {}
_MAX_LAYOUTS = 1024


def to_numpy(tensor: pb.Tensor, field: str = "tensor") -> np.ndarray:
    """Decode a Tensor message into a read-only numpy array (zero copy).

    Raises:
        InvalidRequest: unspecified or unknown dtype, negative or too many dims,
            or a byte length that does not match shape and dtype.
    """
    data = tensor.data
    key = (tensor.dtype, tuple(tensor.shape), len(data))
    layout = _VALID_LAYOUTS.get(key)
    if layout is not None:
        return np.frombuffer(data, dtype=layout[0]).reshape(layout[1])
    array = _checked_to_numpy(tensor, field)
    if len(_VALID_LAYOUTS) < _MAX_LAYOUTS:
        _VALID_LAYOUTS[key] = (array.dtype, array.shape)
    return array


def _checked_to_numpy(tensor: pb.Tensor, field: str) -> np.ndarray:
    """:func:`to_numpy` with every check made (a layout not seen before)."""
    dtype = DTYPE_OF.get(tensor.dtype)
    if dtype is None:
        if tensor.dtype == pb.DATA_TYPE_UNSPECIFIED:
            raise InvalidRequest(f"{field}.dtype is DATA_TYPE_UNSPECIFIED; set it, e.g. DATA_TYPE_FLOAT32")
        raise InvalidRequest(f"{field}.dtype {tensor.dtype} is not a known DataType")
    shape = tuple(tensor.shape)
    if len(shape) > MAX_DIMS:
        raise InvalidRequest(f"{field}.shape has {len(shape)} dimensions; at most {MAX_DIMS} are supported")
    if any(d < 0 for d in shape):
        raise InvalidRequest(f"{field}.shape {shorten(list(shape))} has a negative dimension")
    # Python ints (no overflow), and checked before numpy sees the shape: numpy refuses
    # [0, 2**62, 2**62] even without data, because the product of the non-zero dimensions overflows.
    span = 1
    for d in shape:
        span *= max(d, 1)
    if span > MAX_ELEMENTS:
        raise InvalidRequest(
            f"{field}.shape {shorten(list(shape))} is too large: its non-zero dimensions multiply to "
            f"more than {MAX_ELEMENTS} elements",
            reason="shape_too_large",
        )
    count = 0 if 0 in shape else span
    expected = count * dtype.itemsize
    if len(tensor.data) != expected:
        raise InvalidRequest(
            f"{field}.data has {len(tensor.data)} bytes, but shape {list(shape)} of {dtype.name} "
            f"needs {expected} ({count} elements x {dtype.itemsize} bytes)",
            reason="byte_length",
        )
    return np.frombuffer(tensor.data, dtype=dtype).reshape(shape)


def from_numpy(array: np.ndarray) -> pb.Tensor:
    """Encode a numpy array (or scalar) as a Tensor message, little-endian C order."""
    arr = np.asarray(array)
    name = arr.dtype.name
    code = DATA_TYPE_OF.get(name)
    if code is None:
        raise TypeError(f"dtype {name} has no interlock.v1.DataType; use one of {', '.join(DTYPE_NAMES)}")
    little = arr.astype(DTYPE_OF[code], copy=False)
    return pb.Tensor(dtype=code, shape=list(arr.shape), data=np.ascontiguousarray(little).tobytes())
