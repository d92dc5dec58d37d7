import numpy as np
import pytest

from interlock.errors import InvalidRequest
from interlock.tensors import from_numpy, to_numpy
from interlock.v1 import interlock_pb2 as pb


@pytest.mark.parametrize("dtype", ["float32", "float64", "int32", "int64", "bool", "uint8"])
@pytest.mark.parametrize("shape", [(), (3,), (2, 3), (0,)])
def test_roundtrip_every_dtype_and_shape(dtype, shape):
    arr = (np.arange(int(np.prod(shape))) % 2).reshape(shape).astype(dtype)
    back = to_numpy(from_numpy(arr))
    assert back.dtype == arr.dtype and back.shape == arr.shape
    np.testing.assert_array_equal(back, arr)


def test_scalar_has_empty_shape_and_little_endian_bytes():
    t = from_numpy(np.int64(258))
    assert list(t.shape) == [] and t.data == (258).to_bytes(8, "little")
    big = np.array([1.5], dtype=">f8")  # big-endian input is converted
    assert to_numpy(from_numpy(big))[0] == 1.5


def test_byte_length_mismatch_says_what_is_wrong():
    t = pb.Tensor(dtype=pb.DATA_TYPE_FLOAT32, shape=[4], data=b"\0" * 12)
    with pytest.raises(InvalidRequest, match=r"obs.data has 12 bytes, but shape \[4\] of float32 needs 16"):
        to_numpy(t, "obs")


def test_unspecified_and_unknown_dtype():
    with pytest.raises(InvalidRequest, match="DATA_TYPE_UNSPECIFIED"):
        to_numpy(pb.Tensor(shape=[1], data=b"\0" * 4), "action")
    with pytest.raises(InvalidRequest, match="not a known DataType"):
        to_numpy(pb.Tensor(dtype=99, shape=[1], data=b"\0"), "action")


def test_negative_dimension():
    with pytest.raises(InvalidRequest, match="negative"):
        to_numpy(pb.Tensor(dtype=pb.DATA_TYPE_UINT8, shape=[-1], data=b""), "x")
