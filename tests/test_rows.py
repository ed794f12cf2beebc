"""``functional.rows``: per-channel ufunc calls on long rows give the plain broadcast's bits."""
import numpy as np
import pytest

from jimunet.functional.rows import LONG_ROW, long_vector, per_channel, relu_into


@pytest.mark.parametrize("rows, c", [(1, 1), (5, 3), (64, 16), (67, 16), (1000, 33), (3, 1024), (9, 1500),
                                     (LONG_ROW + 1, 1)])
@pytest.mark.parametrize("ufunc", [np.add, np.subtract, np.multiply, np.maximum])
@pytest.mark.parametrize("dtypes", [(np.float32, np.float32), (np.float64, np.float64), (np.float32, np.float64)])
def test_per_channel_gives_the_broadcasts_bits(rows, c, ufunc, dtypes):
    rng = np.random.default_rng(rows * c)
    a = rng.normal(0, 3, (rows, c)).astype(dtypes[0])
    v = rng.normal(0, 3, c).astype(dtypes[1])
    a.flat[::7] = -0.0  # signed zeros and NaN take the same path as any value
    a.flat[3::11] = np.nan
    ref = ufunc(a, v)
    out = np.empty_like(ref)
    per_channel(ufunc, a, v, out)
    assert out.dtype == ref.dtype and np.array_equal(out.view(np.uint8), ref.view(np.uint8))
    again = np.empty_like(ref)  # with the caller's tiled vector, as BatchNorm passes it per block
    per_channel(ufunc, a, v, again, long_vector(v))
    assert np.array_equal(again.view(np.uint8), ref.view(np.uint8))


def test_per_channel_in_place_and_on_a_block_of_rows():
    rng = np.random.default_rng(1)
    a = rng.normal(0, 1, (300, 16)).astype(np.float32)
    v = rng.normal(0, 1, 16).astype(np.float32)
    ref = a.copy()
    ref[100:250] *= v
    per_channel(np.multiply, a[100:250], v, a[100:250])
    assert np.array_equal(a, ref)


def test_per_channel_with_an_output_that_is_not_contiguous_takes_the_plain_call():
    rng = np.random.default_rng(2)
    a = rng.normal(0, 1, (64, 16)).astype(np.float32)
    v = rng.normal(0, 1, 8).astype(np.float32)
    out = np.zeros((64, 16), np.float32)
    per_channel(np.add, a[:, ::2], v, out[:, ::2])
    assert np.array_equal(out[:, ::2], a[:, ::2] + v) and not out[:, 1::2].any()


@pytest.mark.parametrize("shape", [(1,), (7, 5), (128, 14, 14, 32), (3, 1025)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_relu_into_is_maximum_with_zero_bit_for_bit(shape, dtype):
    rng = np.random.default_rng(3)
    x = rng.normal(0, 1, shape).astype(dtype)
    flat = x.reshape(-1)
    specials = np.array([-0.0, 0.0, np.nan, -np.nan, np.inf, -np.inf, 1e-45, -1e-45], dtype)
    flat[:min(flat.size, specials.size)] = specials[:flat.size]
    out = np.empty_like(x)
    relu_into(x, out)
    ref = np.maximum(x, 0)
    assert np.array_equal(out.view(np.uint8), ref.view(np.uint8))
    every_other = x[..., ::2]  # a strided view: the plain call
    out = np.empty(every_other.shape, dtype)
    relu_into(every_other, out)
    assert np.array_equal(out.view(np.uint8), np.maximum(every_other, 0).view(np.uint8))
